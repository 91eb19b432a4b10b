"""``migrate --upgrade-attn`` streams the legacy file through the engine (issue 9).

The converted copy must hold exactly what the former converter wrote (``torch.load`` of the whole file,
keys renamed, rows regrouped, ``torch.save``): the same keys in the same order, the same wrapper and
top-level entries, every tensor bit for bit. The reference is computed here with torch itself, and the
row permutation independently of the plugin (LitGPT's own ``qkv_reassemble`` in the interop test).
What the streaming writer cannot reproduce is refused, never dropped.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import migrate_helpers as h
import pytest
import torch
from ckpt_tool_lit.migrate import LEGACY_ATTN_RE, upgrade_attn_file, upgrade_attn_plan
from cli_helpers import anon_growth

from ckpt_tool.errors import Refused
from ckpt_tool.ops.engine import write_into

# grouped-query attention, so the permutation is not the identity per group: 4 heads, 2 groups, head 2
GQA = {"n_head": 4, "n_query_groups": 2, "head_size": 2}
ROWS = (4 + 2 * 2) * 2  # (q heads + k + v) * head_size


def _reassemble(t: torch.Tensor, n_head: int, n_query_groups: int, head_size: int) -> torch.Tensor:
    """LitGPT's ``qkv_reassemble``, written out: per group ``[q.., k, v]`` rows → ``[Q | K | V]``."""
    per = n_head // n_query_groups
    parts = [torch.split(c, [per * head_size, head_size, head_size]) for c in torch.chunk(t, n_query_groups)]
    return torch.cat([torch.cat([p[i] for p in parts]) for i in range(3)])


def _old_upgrade(src: Path) -> Any:
    """What the former converter wrote (whole-file torch.load, rename, regroup, torch.save), loaded back."""
    obj = torch.load(src, weights_only=True)
    wrapped = isinstance(obj, dict) and isinstance(obj.get("model"), dict)
    state = obj["model"] if wrapped else obj
    new = {}
    for key, value in state.items():
        m = LEGACY_ATTN_RE.match(key)
        new[f"{m[1]}.qkv.{m[2]}" if m else key] = _reassemble(value, **GQA) if m else value
    buf = io.BytesIO()
    torch.save({**obj, "model": new} if wrapped else new, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def _t(*shape: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


def _state(dtype: torch.dtype) -> dict[str, torch.Tensor]:
    p = "transformer.h.0."
    return {
        "transformer.wte.weight": _t(16, 8, dtype=dtype, seed=1),
        p + "norm_1.weight": _t(8, dtype=dtype, seed=2),
        p + "attn.attn.weight": _t(ROWS, 8, dtype=dtype, seed=3),
        p + "attn.attn.bias": _t(ROWS, dtype=dtype, seed=4),
        p + "attn.proj.weight": _t(8, 8, dtype=dtype, seed=5).t(),  # a strided view: re-laid out, same values
        p + "attn.attn.adapter_bias": _t(ROWS, dtype=dtype, seed=6),  # adapter v2 per-row tensors
        p + "attn.attn.adapter_scale": _t(ROWS, dtype=dtype, seed=7),
        "lm_head.weight": _t(16, 8, dtype=dtype, seed=8)[::2],  # a view into a larger storage
        "transformer.h.0.mlp.counter": torch.arange(5, dtype=torch.int64),
    }


def _assert_same(got: Any, want: Any) -> None:
    """Same structure (types, key order, plain values) and every tensor equal bit for bit."""
    assert type(got) is type(want)
    if isinstance(want, torch.Tensor):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert torch.equal(got.contiguous().view(-1).view(torch.uint8), want.contiguous().view(-1).view(torch.uint8))
    elif isinstance(want, dict):
        assert list(got) == list(want)
        for k in want:
            _assert_same(got[k], want[k])
    else:
        assert got == want


CASES = {
    "bare": lambda dt: _state(dt),
    "model": lambda dt: {"model": _state(dt)},
    # counters before and after the weights, as a plain-value hparams dict: kept in place
    "model+counters": lambda dt: {
        "iter_num": 300,
        "model": _state(dt),
        "step_count": 75,
        "hparams": {"lr": 3e-4, "betas": (0.9, 0.95), "name": "full", "big": 2**70, "none": None, "on": True},
        "history": [1.5, float("inf"), [2, "x"]],
    },
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", list(CASES))
def test_streamed_copy_equals_the_old_load_and_save(tmp_path: Path, case: str, dtype: torch.dtype) -> None:
    src = tmp_path / "lit_model_finetuned.pth"
    torch.save(CASES[case](dtype), src)
    out = tmp_path / "converted.pth"
    upgrade_attn_file(src, out, dict(GQA))
    got = torch.load(out, weights_only=True)
    _assert_same(got, _old_upgrade(src))
    state = got["model"] if case != "bare" else got
    assert not any(".attn.attn." in k for k in state)
    legacy = _state(dtype)["transformer.h.0.attn.attn.weight"]
    assert not torch.equal(state["transformer.h.0.attn.qkv.weight"], legacy)  # rows did move


def test_unchanged_tensors_are_copied_and_only_fused_ones_computed(tmp_path: Path) -> None:
    src = tmp_path / "lit_model.pth"
    sd = {k: v.contiguous() for k, v in _state(torch.float32).items()}
    torch.save({"model": sd}, src)
    plan = upgrade_attn_plan(src, tmp_path / "o.pth", dict(GQA))
    with open(tmp_path / "o.pth", "wb") as fh:
        report = write_into(plan, fh)
    assert report.counts["computed"] == 4
    assert report.counts["copied"] == len(sd) - 4
    # the output is deterministic: the same input gives the same bytes (migrate journals their sha256)
    with open(tmp_path / "again.pth", "wb") as fh:
        write_into(upgrade_attn_plan(src, tmp_path / "again.pth", dict(GQA)), fh)
    assert (tmp_path / "o.pth").read_bytes() == (tmp_path / "again.pth").read_bytes()


def test_write_into_takes_one_torch_file_and_nothing_beside_it(tmp_path: Path) -> None:
    """A directory layout would bring a provenance file; a safetensors sink another container: plugin bugs."""
    from ckpt_tool.errors import Unsupported
    from ckpt_tool.ops.transform import Sink

    src = tmp_path / "lit_model.pth"
    torch.save(_state(torch.float32), src)
    for sink in (Sink("lit", tmp_path / "dir"), Sink("safetensors", tmp_path / "o.safetensors")):
        plan = upgrade_attn_plan(src, tmp_path / "o.pth", dict(GQA))
        plan.sinks["out"] = sink
        with open(tmp_path / "o.pth", "wb") as fh, pytest.raises(Unsupported, match="one torch file"):
            write_into(plan, fh)
        assert os.path.getsize(tmp_path / "o.pth") == 0


def test_reads_and_writes_through_descriptor_links(tmp_path: Path) -> None:
    """As migrate calls it: /proc/self/fd paths of a source it opened and a temp file it owns. The source is
    unlinked meanwhile and a decoy made under the name its link now reads ("... (deleted)"): the file
    converted is still the descriptor's, never a name re-resolved from the link."""
    if not os.path.isdir("/proc/self/fd"):
        pytest.skip("no /proc/self/fd")
    src = tmp_path / "lit_model.pth"
    torch.save({"model": _state(torch.float32)}, src)
    want = _old_upgrade(src)
    sfd = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    tfd = os.open(tmp_path / ".tmp", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.unlink(src)
        assert os.readlink(f"/proc/self/fd/{sfd}") == f"{src} (deleted)"
        torch.save({"model": _state(torch.float16)}, f"{src} (deleted)")  # the decoy
        upgrade_attn_file(Path(f"/proc/self/fd/{sfd}"), Path(f"/proc/self/fd/{tfd}"), dict(GQA))
    finally:
        os.close(sfd)
        os.close(tfd)
    _assert_same(torch.load(tmp_path / ".tmp", weights_only=True), want)


@pytest.mark.interop  # imports litgpt
def test_the_permutation_is_litgpts_legacy_loader() -> None:
    from types import SimpleNamespace

    from ckpt_tool_lit.geometry import Geometry
    from litgpt.scripts.convert_hf_checkpoint import qkv_reassemble

    t = _t(ROWS, 3, seed=11)
    ref = qkv_reassemble(t, SimpleNamespace(**GQA))
    assert torch.equal(ref, _reassemble(t, **GQA))
    assert torch.equal(ref, Geometry(GQA["n_head"], GQA["n_query_groups"], GQA["head_size"]).to_grouped(t))


# --------------------------------------------------------------------------- refusals


REFUSED = ["scheduler tensors", "optimizer", "a dtype entry", "a top-level tensor", "a torch.Size entry", "another wrapper"]


def _refused_files(sd: dict[str, torch.Tensor]) -> dict[str, tuple[Any, str]]:
    return {
        "scheduler tensors": ({"model": sd, "scheduler": {"last": torch.tensor(3)}}, "besides the weights"),
        "optimizer": (h.training_state(sd, 100), "besides the weights"),
        "a dtype entry": ({"model": sd, "dtype": torch.bfloat16}, "'dtype' hold"),
        "a top-level tensor": ({"model": sd, "rope_cache": torch.ones(2)}, "besides the weights"),
        "a torch.Size entry": ({"model": sd, "size": torch.Size([2, 3])}, "'size' hold"),
        "another wrapper": ({"state_dict": sd}, "not a bare state dict or under a 'model' key"),
    }


@pytest.mark.parametrize("name", REFUSED)
def test_what_cannot_be_reproduced_is_refused(tmp_path: Path, name: str) -> None:
    obj, why = _refused_files(h.full_sd(seed=3))[name]
    src = tmp_path / "lit_model.pth"
    torch.save(obj, src)
    out = tmp_path / "out.pth"
    with pytest.raises(Refused, match=why) as exc:
        upgrade_attn_file(src, out, {"n_head": h.N_HEAD, "n_query_groups": h.N_HEAD, "head_size": h.N_EMBD // h.N_HEAD})
    assert "without --upgrade-attn" in (exc.value.hint or "")
    assert not out.exists()  # refused while planning: not a byte written


def test_migrate_reports_a_refused_conversion_and_the_tree_stays_valid(tmp_path: Path, cli) -> None:
    root = tmp_path / "root"
    src = h.save(root / "2023-09" / "lit_model_finetuned.pth", {"model": h.full_sd(seed=9), "scheduler": {"last": torch.tensor(3)}})
    h.lit_config(root / "2023-09")
    before = h.snapshot(root)
    res = cli("migrate", root, "--apply", "--upgrade-attn", "--json")
    assert res.code == 6, res.stderr
    doc = json.loads(res.stdout)
    assert doc["error"]["exit_code"] == 6
    assert "besides the weights" in res.stdout and "refused" in res.stdout
    # the converter saw /proc/self/fd links; the message names the file the user knows
    assert "2023-09/lit_model_finetuned.pth: holds 1 tensor(s) besides the weights" in res.stdout
    assert "/proc/self/fd" not in res.stdout + res.stderr
    assert "internal error" not in res.stderr and "Traceback" not in res.stderr
    assert src.read_bytes() and h.snapshot(root)["2023-09/lit_model_finetuned.pth"] == before["2023-09/lit_model_finetuned.pth"]
    assert not (root / "2023-09/final/lit_model.pth").exists()
    assert not list(root.rglob(".ckpt-tool-tmp-*"))
    assert cli("migrate", root, "--undo").code == 0
    assert h.snapshot(root) == before


# --------------------------------------------------------------------------- no whole-file load, bounded memory


def test_migrate_never_loads_the_whole_file(tmp_path: Path, cli, monkeypatch) -> None:
    root = tmp_path / "root"
    src = h.save(root / "2023-09" / "lit_model_finetuned.pth", {"model": h.full_sd(seed=9), "iter_num": 7})
    h.lit_config(root / "2023-09")

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.load/torch.save called")

    monkeypatch.setattr(torch, "load", refuse)
    monkeypatch.setattr(torch, "save", refuse)
    res = cli("migrate", root, "--apply", "--upgrade-attn", "--json")
    monkeypatch.undo()
    assert res.code == 0, res.stderr
    got = torch.load(root / "2023-09/final/lit_model.pth", weights_only=True)
    legacy = torch.load(src, weights_only=True)
    assert list(got) == ["model", "iter_num"] and got["iter_num"] == 7
    p = "transformer.h.0.attn."
    assert list(got["model"]) == [k.replace(".attn.attn.", ".attn.qkv.") for k in legacy["model"]]
    geo = {"n_head": h.N_HEAD, "n_query_groups": h.N_HEAD, "head_size": h.N_EMBD // h.N_HEAD}
    assert torch.equal(got["model"][p + "qkv.weight"], _reassemble(legacy["model"][p + "attn.weight"], **geo))


_MEM_SETUP = """
import torch
from ckpt_tool_lit.migrate import upgrade_attn_file

def refuse(*a, **k):
    raise AssertionError("torch.load called")

torch.load = refuse
"""
_MEM_CALL = 'upgrade_attn_file(Path(sys.argv[1]), Path(sys.argv[2]), {"n_head": 32, "n_query_groups": 8, "head_size": 64})'


def test_peak_memory_stays_bounded_on_a_large_file(tmp_path: Path) -> None:
    """A 144 MiB legacy model (72 MiB of it regrouped): anonymous memory grows by a few tensors, not the file."""
    sd: dict[str, torch.Tensor] = {}
    for i in range(6):
        p = f"transformer.h.{i}."
        sd[p + "attn.attn.weight"] = torch.randn(3072, 1024)  # 12 MiB: (32 + 2 * 8) heads of 64 rows
        sd[p + "attn.proj.weight"] = torch.randn(1024, 1024)  # 4 MiB
        sd[p + "mlp.fc.weight"] = torch.randn(2048, 1024)  # 8 MiB
    src = tmp_path / "lit_model_finetuned.pth"
    torch.save({"model": sd}, src)
    del sd
    assert src.stat().st_size > 140 * 2**20
    grown = anon_growth(_MEM_SETUP, _MEM_CALL, src, tmp_path / "o.pth")
    print(f"anonymous memory grew by {grown / 2**20:.1f} MiB")
    assert grown < 48 * 2**20, f"anonymous memory grew by {grown / 2**20:.0f} MiB for a 144 MiB file"
    got = torch.load(tmp_path / "o.pth", weights_only=True, mmap=True)
    assert len(got["model"]) == 18 and "transformer.h.5.attn.qkv.weight" in got["model"]
