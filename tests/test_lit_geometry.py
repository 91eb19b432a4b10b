"""One reading of LitGPT's head geometry: detection, merge, migrate and the hub agree on every config.

Before ``Geometry`` was the one reader, ``config.qkv_sizes`` took an unusable ``n_query_groups`` for
``n_head`` (silently sizing q/k/v wrong), migrate's ``_attn_params`` refused it, and merge's qkv change
crashed on ``int("abc")``.
"""

from __future__ import annotations

from typing import Any

import pytest
from ckpt_tool_lit.config import qkv_sizes
from ckpt_tool_lit.geometry import Geometry
from ckpt_tool_lit.hub.model_config import LitModel
from ckpt_tool_lit.migrate import _attn_params, upgrade_attn_plan

from ckpt_tool.errors import CkptError, InvalidFile

GOOD = {"n_head": 4, "n_embd": 32, "n_query_groups": 2}
BAD: list[dict[str, Any]] = [
    {**GOOD, "n_query_groups": "2"},
    {**GOOD, "n_query_groups": 3},  # does not divide the heads
    {**GOOD, "n_query_groups": 8},
    {**GOOD, "n_query_groups": 0},
    {**GOOD, "n_head": True},
    {**GOOD, "head_size": 2.5},
    {**GOOD, "n_embd": 2, "n_head": 4},  # head size 0
]


def test_every_reader_agrees_on_a_usable_config():
    geo = Geometry.from_config(GOOD)
    assert qkv_sizes(GOOD) == geo.qkv_sizes == (32, 16, 16)
    assert _attn_params(GOOD) == {"n_head": 4, "n_query_groups": 2, "head_size": 8}
    cfg = {**GOOD, "name": "x", "intermediate_size": 8, "vocab_size": 8, "padded_vocab_size": 8}
    assert LitModel(cfg).geometry == geo


@pytest.mark.parametrize("cfg", BAD, ids=[str(c) for c in BAD])
def test_every_reader_refuses_an_unusable_config(cfg):
    assert qkv_sizes(cfg) is None
    assert _attn_params(cfg) is None
    with pytest.raises(InvalidFile):
        Geometry.from_config(cfg)
    with pytest.raises(InvalidFile):
        LitModel({**cfg, "name": "x", "intermediate_size": 8, "vocab_size": 8, "padded_vocab_size": 8})


def test_upgrade_checks_the_recorded_geometry(tmp_path):
    """The geometry of a migrate plan comes back from the journal (untrusted): checked like a config,
    before the file is read, and every fused tensor's rows against it before anything is written."""
    import torch

    with pytest.raises(CkptError, match="n_query_groups 3 does not divide n_head 4"):
        upgrade_attn_plan(tmp_path / "never-read.pth", tmp_path / "out.pth", {"n_head": 4, "n_query_groups": 3, "head_size": 4})
    src = tmp_path / "lit_model.pth"
    torch.save({"transformer.h.0.attn.attn.weight": torch.zeros(48, 4)}, src)
    with pytest.raises(CkptError, match=r"shape \(48, 4\), the config implies 16 rows"):
        upgrade_attn_plan(src, tmp_path / "out.pth", {"n_head": 4, "n_query_groups": 2, "head_size": 2})
    assert not (tmp_path / "out.pth").exists()


@pytest.mark.interop
def test_merge_refuses_query_groups_it_cannot_read(tmp_path, cli):
    import yaml
    from lit_merge_helpers import make_run

    # multi-head attention: the old qkv_sizes took the unreadable group count for n_head and sized q/k/v
    # right, then merge's own int("four") crashed (an internal error)
    base, final = make_run(tmp_path, ("query", "key", "value"), n_query_groups=4)
    for d in (base, final):
        p = d / "model_config.yaml"
        cfg = yaml.safe_load(p.read_text())
        p.write_text(yaml.safe_dump({**cfg, "n_query_groups": "four"}))
    res = cli("merge", final, "--out", tmp_path / "m")
    assert res.code in (4, 6), res.stderr
    assert res.stderr.startswith("error:") and "internal error" not in res.stderr
    assert not (tmp_path / "m").exists()
