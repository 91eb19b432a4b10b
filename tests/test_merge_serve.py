"""Merge fits the habits of PEFT / LitGPT / Hugging Face users (fast lane, torch only).

The demo workspace (``ckpt_tool.demo``: LitGPT base + LoRA ``final/``, HF model + PEFT adapter, torch-built)
and the real CLI:

* a PEFT merge's ``--out`` gets the tokenizer and chat template (adapter folder first, then the base; a
  complete tokenizer is never mixed with a later source's files; links out of the folder are not followed);
* ``base_model_name_or_path`` that is a Hub id is found offline in the local Hugging Face cache (a fake
  cache tree built here: ``refs/main`` → ``snapshots/<sha>/`` linked to ``blobs/``), exactly where
  huggingface_hub looks; when it is not there the error names the id and ``--base``; a ``--base`` other
  than the recorded one is warned about;
* ``--lora-alpha`` / ``--lora-targets`` for LitGPT adapters whose hyperparameters are lost: they win over
  hyperparameters.yaml, are validated, recorded as given on the command line, and refused for PEFT.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from ckpt_tool.demo import build_workspace


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return build_workspace(tmp_path / "ws")


@pytest.fixture
def no_network(monkeypatch):
    """Any connection attempt fails the test: the cache lookup must never reach the network."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def _edit(adapter: Path, **kw) -> None:
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    cfg.update(kw)
    (adapter / "adapter_config.json").write_text(json.dumps(cfg))


def _tensors(d: Path) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


def _bits_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert a[k].dtype == b[k].dtype and torch.equal(a[k].view(torch.uint8), b[k].view(torch.uint8)), k


# ---------------------------------------------------------------------------------------- 1. tokenizer


def test_peft_out_gets_the_adapters_tokenizer_whole(ws, cli, tmp_path):
    base, adapter = ws["hf_base"], ws["peft_adapter"]
    (base / "tokenizer.json").write_text('{"base": true}')
    (base / "tokenizer_config.json").write_text('{"base": true}')
    (base / "chat_template.jinja").write_text("base template")
    (base / "special_tokens_map.json").write_text("{}")
    (adapter / "tokenizer.json").write_text('{"adapter": true}')
    (adapter / "tokenizer_config.json").write_text('{"adapter": true, "chat_template": "fine-tuned"}')
    out = tmp_path / "m"
    res = cli("merge", adapter, "--base", base, "--out", out, "--json")
    assert res.code == 0, res.stderr
    assert (out / "tokenizer.json").read_text() == '{"adapter": true}'
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == "fine-tuned"
    # the adapter's tokenizer is complete: the base's template would override the fine-tuned one
    assert not (out / "chat_template.jinja").exists() and not (out / "special_tokens_map.json").exists()
    assert (out / "config.json").read_bytes() == (base / "config.json").read_bytes()
    assert str(out / "tokenizer.json") in json.loads(res.stdout)["outputs"]


def test_an_adapters_chat_template_alone_overrides_the_bases(ws, cli, tmp_path):
    base, adapter = ws["hf_base"], ws["peft_adapter"]
    (base / "tokenizer.json").write_text('{"base": true}')
    (base / "tokenizer_config.json").write_text('{"base": true}')
    (base / "chat_template.jinja").write_text("base template")
    (adapter / "chat_template.jinja").write_text("fine-tuned template")
    out = tmp_path / "m"
    assert cli("merge", adapter, "--base", base, "--out", out).code == 0
    assert (out / "chat_template.jinja").read_text() == "fine-tuned template"
    assert (out / "tokenizer.json").read_text() == '{"base": true}'
    assert (out / "tokenizer_config.json").read_text() == '{"base": true}'


def test_tokenizer_links_out_of_the_folder_are_not_followed(ws, cli, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("do not publish")
    os.symlink(secret, ws["peft_adapter"] / "tokenizer_config.json")
    (ws["peft_adapter"] / "tokenizer.json").write_text('{"adapter": true}')
    out = tmp_path / "m"
    assert cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", out).code == 0
    assert (out / "tokenizer.json").read_text() == '{"adapter": true}'
    assert not (out / "tokenizer_config.json").exists()


def test_peft_merge_to_lit_keeps_the_adapters_tokenizer(ws, cli, tmp_path):
    base, adapter = ws["hf_base"], ws["peft_adapter"]
    (base / "tokenizer.json").write_text('{"base": true}')
    (base / "tokenizer_config.json").write_text('{"base": true}')
    (adapter / "tokenizer.json").write_text('{"adapter": true}')
    (adapter / "tokenizer_config.json").write_text('{"adapter": true}')
    out = tmp_path / "lit"
    res = cli("merge", adapter, "--base", base, "--out", out, "--to", "lit")
    assert res.code == 0, res.stderr
    assert (out / "tokenizer.json").read_text() == '{"adapter": true}'
    assert (out / "tokenizer_config.json").read_text() == '{"adapter": true}'


# ---------------------------------------------------------------------------------- 3. Hugging Face cache


def fake_cache(root: Path, repo_id: str, model_dir: Path, revision: str = "main", commit: str | None = None) -> Path:
    """A Hub cache tree as huggingface_hub writes it: blobs/<sha256>, snapshots/<commit>/<file> -> ../../blobs/..,
    refs/<revision> holding the commit."""
    repo = root / ("models--" + repo_id.replace("/", "--"))
    commit = commit or hashlib.sha1(f"{repo_id}@{revision}".encode()).hexdigest()
    snap = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snap.mkdir(parents=True)
    for f in sorted(model_dir.iterdir()):
        if not f.is_file():
            continue
        data = f.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snap), snap / f.name)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / revision).write_text(commit)
    return snap


@pytest.fixture
def hub(ws, tmp_path, monkeypatch):
    """The demo HF base published as ``demo-org/tiny-llama`` in a fake cache; HF_HUB_CACHE points at it."""
    cache = tmp_path / "hf-cache"
    (ws["hf_base"] / "tokenizer.json").write_text('{"cached": true}')
    snap = fake_cache(cache, "demo-org/tiny-llama", ws["hf_base"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    _edit(ws["peft_adapter"], base_model_name_or_path="demo-org/tiny-llama")
    return cache, snap


def test_hub_id_resolves_offline_in_the_local_cache(ws, hub, cli, tmp_path, no_network):
    cache, snap = hub
    out = tmp_path / "m"
    res = cli("merge", ws["peft_adapter"], "--out", out, "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["base"] == str(snap)
    rb = summary["recorded_base"]
    assert rb["how"] == "Hugging Face cache" and rb["id"] == "demo-org/tiny-llama" and rb["commit"] == snap.name
    ref = tmp_path / "ref"
    assert cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", ref).code == 0
    _bits_equal(_tensors(out), _tensors(ref))
    assert (out / "tokenizer.json").read_text() == '{"cached": true}'  # linked into blobs/: allowed there
    assert (out / "config.json").read_bytes() == (ws["hf_base"] / "config.json").read_bytes()
    human = cli("merge", ws["peft_adapter"], "--out", tmp_path / "m2").stdout
    assert f"base demo-org/tiny-llama found in the local Hugging Face cache (main = commit {snap.name[:12]}" in human
    rec = json.loads(cli("inspect", out, "--json").stdout)["provenance"]
    base_in = next(i for i in rec["inputs"] if i["role"] == "base")
    assert base_in["hub"] == {"id": "demo-org/tiny-llama", "commit": snap.name}
    assert [f["name"] for f in base_in["files"]] == ["model.safetensors"]  # not the blob it links to
    assert f"into demo-org/tiny-llama@{snap.name[:12]}" in cli("inspect", out).stdout


def test_recorded_revision_is_followed(ws, hub, cli, tmp_path, no_network):
    cache, main = hub
    other = tmp_path / "other-base"
    assert cli("convert", ws["hf_base"], "--to", "hf", "--out", other, "--dtype", "fp32").code == 0
    v1 = fake_cache(cache, "demo-org/tiny-llama", other, revision="v1", commit="1" * 40)
    _edit(ws["peft_adapter"], revision="v1")
    res = cli("merge", ws["peft_adapter"], "--out", tmp_path / "m", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["base"] == str(v1) != str(main)


def test_hf_home_is_honoured_like_huggingface_hub(ws, hub, cli, tmp_path, monkeypatch):
    cache, snap = hub
    home = tmp_path / "hf-home"
    home.mkdir()
    shutil.move(str(cache), str(home / "hub"))
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(home))
    res = cli("merge", ws["peft_adapter"], "--out", tmp_path / "m", "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["base"].startswith(str(home / "hub" / "models--demo-org--tiny-llama"))


def test_uncached_hub_id_names_the_id_and_base(ws, hub, cli, tmp_path, no_network):
    _edit(ws["peft_adapter"], base_model_name_or_path="other-org/not-downloaded")
    res = cli("merge", ws["peft_adapter"], "--out", tmp_path / "m")
    assert res.code == 3
    err = res.stderr
    assert "'other-org/not-downloaded'" in err and "not in the local Hugging Face cache" in err
    assert str(hub[0]) in err and "never downloads" in err and "--base" in err and "hf download other-org/not-downloaded" in err


@pytest.mark.parametrize(
    "field,value,says",
    [
        ("revision", "../../../../etc", "not a branch, tag or commit name"),
        ("base_model_name_or_path", "../../outside", "does not exist here"),
        ("base_model_name_or_path", "/abs/path/that/is/gone", "does not exist here"),
    ],
)
def test_hostile_recorded_names_never_become_paths(ws, hub, cli, tmp_path, field, value, says):
    _edit(ws["peft_adapter"], **{field: value})
    res = cli("merge", ws["peft_adapter"], "--out", tmp_path / "m")
    assert res.code == 3 and says in res.stderr, res.stderr


def test_cache_dir_matches_huggingface_hub_in_a_fresh_interpreter(tmp_path):
    """``hfcache.cache_dir`` reads the environment at call time with huggingface_hub's precedence; pin it
    against ``huggingface_hub.constants.HF_HUB_CACHE`` of a fresh interpreter for each combination."""
    combos = [
        {},
        {"HF_HOME": str(tmp_path / "home")},
        {"XDG_CACHE_HOME": str(tmp_path / "xdg")},
        {"HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy"), "HF_HOME": str(tmp_path / "home")},
        {"HF_HUB_CACHE": str(tmp_path / "new"), "HUGGINGFACE_HUB_CACHE": str(tmp_path / "legacy")},
        {"HF_HUB_CACHE": "~/x/$CKPT_SUB", "CKPT_SUB": "sub"},
    ]
    code = "import huggingface_hub.constants as c; from ckpt_tool.io.hfcache import cache_dir; print(c.HF_HUB_CACHE); print(cache_dir())"
    names = ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE", "HF_HOME", "XDG_CACHE_HOME", "CKPT_SUB")
    for combo in combos:
        env = {k: v for k, v in os.environ.items() if k not in names}
        env.update(combo)
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
        theirs, ours = out.splitlines()
        assert ours == theirs, combo


def test_a_copy_of_the_recorded_base_is_not_warned_about(ws, hub, cli, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ws["hf_base"], copy)
    res = cli("merge", ws["peft_adapter"], "--base", copy, "--out", tmp_path / "m", "--json")
    assert res.code == 0 and "warning" not in res.stderr, res.stderr
    rb = json.loads(res.stdout)["recorded_base"]
    assert rb["matches"] is True and rb["base_given"] is True


def test_another_base_than_the_recorded_one_is_warned_about(ws, hub, cli, tmp_path):
    other = tmp_path / "other"
    assert cli("convert", ws["hf_base"], "--to", "hf", "--out", other, "--dtype", "fp32").code == 0
    res = cli("merge", ws["peft_adapter"], "--base", other, "--out", tmp_path / "m", "--json")
    assert res.code == 0, res.stderr
    assert "warning: --base" in res.stderr and "'demo-org/tiny-llama'" in res.stderr
    assert "hold different weights" in res.stderr and "agree on the architecture" in res.stderr
    summary = json.loads(res.stdout)
    assert summary["recorded_base"]["matches"] is False and any("--base" in w for w in summary["warnings"])


def test_unresolvable_record_compared_by_name_or_path(ws, cli, tmp_path):
    _edit(ws["peft_adapter"], base_model_name_or_path="demo-org/tiny-llama")  # not cached anywhere here
    other = tmp_path / "other"
    shutil.copytree(ws["hf_base"], other)
    cfg = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "someone/else"}))
    res = cli("merge", ws["peft_adapter"], "--base", other, "--out", tmp_path / "m")
    assert res.code == 0 and "says it was saved from 'someone/else'" in res.stderr, res.stderr
    (other / "config.json").write_text(json.dumps({**cfg, "_name_or_path": "demo-org/tiny-llama"}))
    res = cli("merge", ws["peft_adapter"], "--base", other, "--out", tmp_path / "m2")
    assert res.code == 0 and "warning" not in res.stderr


# ------------------------------------------------------------------------ 4. --lora-alpha / --lora-targets


def _hp(final: Path) -> dict:
    return yaml.safe_load((final / "hyperparameters.yaml").read_text())


def _lost(final: Path) -> None:
    """hyperparameters.yaml without the LoRA settings (checkpoint_dir kept), as after a hand clean-up."""
    hp = {k: v for k, v in _hp(final).items() if not k.startswith("lora_")}
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))


def _lit(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


def test_lost_hyperparameters_given_on_the_command_line(ws, cli, tmp_path):
    final = ws["lit_final"]
    ref = tmp_path / "ref"
    assert cli("merge", final, "--out", ref).code == 0  # with the recorded values (alpha 16, q+v)
    _lost(final)
    res = cli("merge", final, "--out", tmp_path / "no")
    assert res.code == 6 and "--lora-alpha" in res.stderr
    out = tmp_path / "m"
    res = cli("merge", final, "--out", out, "--lora-alpha", "16", "--lora-targets", "query,value", "--json")
    assert res.code == 0, res.stderr
    _bits_equal(_lit(out / "lit_model.pth"), _lit(ref / "lit_model.pth"))
    summary = json.loads(res.stdout)
    given = ["alpha", "query", "key", "value", "projection", "mlp", "head"]
    assert summary["hyperparameters"]["given"] == given and summary["lora"]["alpha"] == 16
    rec = json.loads(cli("inspect", out, "--json").stdout)["provenance"]
    assert rec["merge"]["hyperparameters"]["given"] == given
    assert "(lora_alpha=16 and targets query,value given on the command line)" in cli("inspect", out).stdout
    human = cli("merge", final, "--out", tmp_path / "h", "--lora-alpha", "16", "--lora-targets", "lora_query,value").stdout
    assert "given on the command line: lora_alpha=16; targets query,value" in human


def test_overrides_win_over_hyperparameters_yaml(ws, cli, tmp_path):
    final = ws["lit_final"]
    twin = tmp_path / "twin"
    shutil.copytree(final, twin)
    hp = _hp(twin)
    hp["lora_alpha"] = 40
    (twin / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    ref = tmp_path / "ref"
    assert cli("merge", twin, "--out", ref).code == 0
    out = tmp_path / "m"
    res = cli("merge", final, "--out", out, "--lora-alpha", "40")
    assert res.code == 0, res.stderr
    assert "--lora-alpha 40 replaces lora_alpha=16 recorded in hyperparameters.yaml" in res.stderr
    _bits_equal(_lit(out / "lit_model.pth"), _lit(ref / "lit_model.pth"))
    assert cli("merge", final, "--out", tmp_path / "rec").code == 0
    with pytest.raises(AssertionError):  # and it really is another merge than the recorded one
        _bits_equal(_lit(out / "lit_model.pth"), _lit(tmp_path / "rec" / "lit_model.pth"))


@pytest.mark.parametrize(
    "args,says",
    [
        (("--lora-alpha", "nan"), "finite"),
        (("--lora-alpha", "inf"), "finite"),
        (("--lora-alpha", "1e999"), "finite"),
        (("--lora-alpha", "-16"), "> 0"),
        (("--lora-alpha", "0"), "> 0"),
        (("--lora-alpha", "1e7"), "at most"),
        (("--lora-alpha", "sixteen"), "not a number"),
        (("--lora-targets", "query,bogus"), "'bogus' is not a LitGPT LoRA target"),
        (("--lora-targets", ""), "comma-separated"),
        (("--lora-targets", "query,,value"), "comma-separated"),
    ],
)
def test_bad_override_values_are_usage_errors(ws, cli, tmp_path, args, says):
    res = cli("merge", ws["lit_final"], "--out", tmp_path / "m", *args)
    assert res.code == 2 and says in res.stderr, res.stderr
    assert not (tmp_path / "m").exists()


def test_targets_that_do_not_fit_the_tensors_are_refused(ws, cli, tmp_path):
    res = cli("merge", ws["lit_final"], "--out", tmp_path / "m", "--lora-targets", "query")
    assert res.code == 6 and "rows" in res.stderr, res.stderr


def test_overrides_are_refused_for_peft_adapters(ws, cli, tmp_path):
    for args in (("--lora-alpha", "16"), ("--lora-targets", "q_proj")):
        res = cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", tmp_path / "m", *args)
        assert res.code == 2 and "adapter_config.json records" in res.stderr and args[0] in res.stderr, res.stderr
