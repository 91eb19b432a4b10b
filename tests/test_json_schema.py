"""Every command's ``--json`` output against the published schema (``ckpt_tool/schemas/output.schema.json``).

Success and failure paths alike: exactly one JSON document on stdout, valid against the command's
``$defs`` entry (or ``$defs/error_document`` when the command failed before printing its own), and no
data on stderr (messages only). ``additionalProperties: false`` makes a renamed or an extra key fail here.
"""

from __future__ import annotations

import json
import shutil
from importlib import resources
from pathlib import Path
from typing import Any

import migrate_helpers as h
import pytest
from jsonschema import Draft202012Validator, ValidationError

from ckpt_tool.errors import EXIT_DIFFER


def _schema() -> dict[str, Any]:
    """Read through importlib.resources, as an installed package ships it (package data)."""
    return json.loads((resources.files("ckpt_tool.schemas") / "output.schema.json").read_text())


def _validator(name: str) -> Draft202012Validator:
    schema = _schema()
    return Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": f"#/$defs/{name}"})


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = _schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    commands = {"inspect", "plugins", "merge", "convert", "split", "rename", "diff", "migrate", "error_document"}
    assert commands <= set(schema["$defs"])
    assert {d["$ref"].rsplit("/", 1)[-1] for d in schema["anyOf"]} == commands


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo workspace (LitGPT base + LoRA run, HF base + PEFT adapter, legacy runs), plus a LitGPT LoRA
    model saved whole (base and LoRA tensors in one lit_model.pth) for ``split``."""
    import torch

    from ckpt_tool.demo import build_workspace

    root = tmp_path_factory.mktemp("ws")
    paths = build_workspace(root)
    whole = root / "whole"
    whole.mkdir()
    state = torch.load(paths["lit_base"] / "lit_model.pth", weights_only=True)
    state.update(torch.load(paths["lit_final"] / "lit_model.pth.lora", weights_only=True)["model"])
    torch.save(state, whole / "lit_model.pth")
    for name in ("model_config.yaml", "hyperparameters.yaml"):
        shutil.copy(paths["lit_final"] / name, whole / name)
    (root / "garbage.safetensors").write_bytes(b"\xff" * 64)
    paths.update(root=root, whole=whole, garbage=root / "garbage.safetensors")
    return paths


def _one_document(res: Any) -> Any:
    """Exactly one JSON document on stdout, nothing but messages on stderr."""
    doc, end = json.JSONDecoder().raw_decode(res.stdout)
    assert res.stdout[end:].strip() == "", "more than one JSON document on stdout"
    assert not any(line.lstrip().startswith(("{", "[", '"')) for line in res.stderr.splitlines()), res.stderr
    return doc


def _check(res: Any, code: int, name: str) -> dict[str, Any]:
    assert res.code == code, (res.code, res.stdout, res.stderr)
    doc = _one_document(res)
    _validator(name).validate(doc)
    return doc


SUCCESS = [
    ("inspect-lit", lambda w, t: ("inspect", w["lit_final"]), "inspect"),
    ("inspect-peft-tensors", lambda w, t: ("inspect", w["peft_adapter"], "--tensors"), "inspect"),
    ("inspect-hf", lambda w, t: ("inspect", w["hf_base"]), "inspect"),
    ("inspect-legacy", lambda w, t: ("inspect", w["runs"] / "2024-03-dolly-lora" / "final" / "lit_model.pth"), "inspect"),
    ("plugins", lambda w, t: ("plugins",), "plugins"),
    ("merge-peft", lambda w, t: ("merge", w["peft_adapter"], "--base", w["hf_base"], "--out", t / "m"), "merge"),
    ("merge-peft-to-lit", lambda w, t: ("merge", w["peft_adapter"], "--base", w["hf_base"], "--out", t / "m", "--to", "lit"), "merge"),
    ("merge-lit", lambda w, t: ("merge", w["lit_final"], "--out", t / "m"), "merge"),
    ("merge-lit-to-hf", lambda w, t: ("merge", w["lit_final"], "--out", t / "m", "--to", "hf"), "merge"),
    ("merge-lit-dry", lambda w, t: ("merge", w["lit_final"], "--out", t / "m", "--dry-run"), "merge"),
    ("convert-hf-to-lit", lambda w, t: ("convert", w["hf_base"], "--to", "lit", "--out", t / "c"), "convert"),
    ("convert-lora-to-peft", lambda w, t: ("convert", w["lit_final"], "--to", "peft", "--out", t / "c"), "convert"),
    ("convert-peft-to-lit", lambda w, t: ("convert", w["peft_adapter"], "--to", "lit", "--out", t / "c", "--base", w["hf_base"]), "convert"),
    ("convert-container", lambda w, t: ("convert", w["hf_base"] / "model.safetensors", "--to", "torch", "--out", t / "c.pth"), "convert"),
    ("split-lora", lambda w, t: ("split", w["whole"], "--base-out", t / "b", "--adapter-out", t / "a"), "split"),
    ("split-shards", lambda w, t: ("split", w["hf_base"], "--max-shard-size", "100KB", "--out", t / "s"), "split"),
    ("rename-keys", lambda w, t: ("rename", w["hf_base"] / "model.safetensors", "--strip-prefix", "model.", "--out", t / "r.safetensors"), "rename"),
    ("rename-dry", lambda w, t: ("rename", w["hf_base"] / "model.safetensors", "--strip-prefix", "model.", "--dry-run"), "rename"),
    ("diff-identical", lambda w, t: ("diff", w["hf_base"], w["hf_base"]), "diff"),
]


@pytest.mark.parametrize(("case", "args", "name"), SUCCESS, ids=[c[0] for c in SUCCESS])
def test_success_documents(ws, tmp_path, cli, case, args, name) -> None:
    _check(cli(*args(ws, tmp_path), "--json"), 0, name)


def test_rename_adapter_and_diff_differing(ws, tmp_path, cli) -> None:
    adapter = tmp_path / "adapter"
    shutil.copytree(ws["peft_adapter"], adapter)
    doc = _check(cli("rename", adapter, "--adapter", "default", "--to", "chat", "--json"), 0, "rename")
    assert doc["operation"] == "adapter" and (adapter / "chat" / "adapter_model.safetensors").is_file()
    assert cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", tmp_path / "m", "-q").code == 0
    doc = _check(cli("diff", ws["hf_base"], tmp_path / "m", "--json"), EXIT_DIFFER, "diff")
    assert doc["identical"] is False and doc["counts"]["differ"] > 0
    assert {t["status"] for t in doc["tensors"]} == {"bit_equal", "differ"}


def test_lit_file_repair_and_its_undo(ws, tmp_path, cli) -> None:
    """rename --repair of a LoRA-only lit_model.pth and --undo print migrate's action records."""
    final = tmp_path / "final"
    shutil.copytree(ws["runs"] / "2024-03-dolly-lora" / "final", final)
    dry = _check(cli("rename", final, "--repair", "--dry-run", "--json"), 0, "rename")
    assert {s["status"] for s in dry["steps"]} == {"pending"}
    doc = _check(cli("rename", final, "--repair", "--json"), 0, "rename")
    assert doc["operation"] == "repair-files" and ("move", "lit_model.pth", "lit_model.pth.lora") in {
        (s["action"], s["from"], s["to"]) for s in doc["steps"]
    }
    undo = _check(cli("rename", final, "--undo", "--json"), 0, "rename")
    assert undo["operation"] == "undo" and {s["status"] for s in undo["steps"]} == {"undone"}
    _check(cli("rename", final, "--undo", "--json"), 3, "error_document")


def test_migrate_plan_apply_undo_have_one_shape(ws, tmp_path, cli) -> None:
    runs = tmp_path / "runs"
    shutil.copytree(ws["runs"], runs)
    before = h.snapshot(runs)
    docs = {mode: _check(cli("migrate", runs, *flags, "--json"), 0, "migrate")
            for mode, flags in (("plan", ()), ("apply", ("--apply",)), ("undo", ("--undo",)))}
    assert len({tuple(d) for d in docs.values()}) == 1  # the same keys, in the same order, in every mode
    assert [d["mode"] for d in docs.values()] == ["plan", "apply", "undo"]
    assert {a["status"] for a in docs["plan"]["actions"]} == {"pending"}
    assert {a["status"] for a in docs["apply"]["actions"]} == {"done"} and docs["apply"]["applied"] is True
    assert docs["undo"]["restored"] == len(docs["apply"]["actions"]) and h.snapshot(runs) == before


FAILURES = [
    ("inspect-missing", lambda w, t: ("inspect", t / "nowhere"), 3, "error_document"),
    ("inspect-bad-file", lambda w, t: ("inspect", w["garbage"]), 4, "error_document"),
    ("merge-missing", lambda w, t: ("merge", t / "nowhere"), 3, "error_document"),
    ("merge-usage", lambda w, t: ("merge", w["peft_adapter"], "--no-such-option"), 2, "error_document"),
    ("convert-bad-file", lambda w, t: ("convert", w["garbage"], "--to", "torch", "--out", t / "x.pth"), 4, "error_document"),
    ("split-no-output", lambda w, t: ("split", w["hf_base"]), 2, "error_document"),
    ("rename-nothing-matches", lambda w, t: ("rename", w["hf_base"] / "model.safetensors", "--map", "nope=x", "--dry-run"), 6, "error_document"),
    ("diff-missing", lambda w, t: ("diff", w["hf_base"], t / "nowhere"), 3, "error_document"),
    ("migrate-missing", lambda w, t: ("migrate", t / "nowhere"), 3, "migrate"),
]


@pytest.mark.parametrize(("case", "args", "code", "name"), FAILURES, ids=[c[0] for c in FAILURES])
def test_failure_documents(ws, tmp_path, cli, case, args, code, name) -> None:
    res = cli(*args(ws, tmp_path), "--json")
    doc = _check(res, code, name)
    assert doc["error"]["exit_code"] == code and doc["error"]["message"]
    assert any(line.lower().startswith("error: ") for line in res.stderr.splitlines())  # the message stays on stderr


def test_refused_merge_writes_an_error_document(ws, tmp_path, cli) -> None:
    out = tmp_path / "m"
    assert cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", out, "-q").code == 0
    doc = _check(cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", out, "--json"), 6, "error_document")
    assert "--force" in (doc["error"]["hint"] or "") + doc["error"]["message"]


def test_migrate_conflicts_keep_the_migrate_shape(tmp_path, cli) -> None:
    root = tmp_path / "root"
    h.run_2023_06_lora(root / "run")
    h.save(root / "run" / "final" / "lit_model.pth.lora", {"model": h.lora_sd(seed=99)})
    before = h.snapshot(root)
    for flags in ((), ("--apply",)):
        doc = _check(cli("migrate", root, *flags, "--json"), 7, "migrate")
        assert doc["conflicts"] and doc["error"]["exit_code"] == 7 and doc["applied"] is False
    assert h.snapshot(root) == before


def test_a_renamed_or_extra_key_fails_the_schema(ws, cli, tmp_path) -> None:
    """The schema is strict where the shape is ours: the old spellings are rejected."""
    doc = _check(cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", tmp_path / "m", "--json"), 0, "merge")
    for bad in ({**doc, "lora_alpha": 16}, {**doc, "lora": {**doc["lora"], "scaling": 2.0}},
                {**doc, "tensors": {**doc["tensors"], "converted": 0}}, {**doc, "mutations": 3}):
        with pytest.raises(ValidationError):
            _validator("merge").validate(bad)
