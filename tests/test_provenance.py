"""Provenance in every written checkpoint, read back as hostile input.

Fast lane (torch only): the demo workspace (``ckpt_tool.demo``: a LitGPT base + LoRA ``final/``, an HF model
+ PEFT adapter, written with torch alone) and the real CLI.

* every output of the transform engine carries a record (tool, version, operation, inputs with sizes and
  fingerprints, the merge's scale and where r/alpha came from): in each safetensors header and, for
  directory layouts, in ``ckpt-tool-provenance.json`` (LitGPT's ``final/lit_model.pth`` too);
* ``inspect`` says "merged from A into B by ckpt-tool X" and a conversion of a merge shows the chain;
* ``merge`` refuses a base that is this adapter's merge by its provenance, torch-zip outputs and
  conversions included (not only by file name / header mark);
* records on disk are hostile: malformed, oversized, deeply nested, stale or terminal-escaping ones are
  warnings, never crashes, and are never believed.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

import ckpt_tool
from ckpt_tool.demo import build_workspace
from ckpt_tool.io import provenance
from ckpt_tool.io.fingerprint import file_fingerprint

PROV = provenance.FILE


@pytest.fixture
def ws(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    return build_workspace(tmp_path / "ws")


def _inspect(cli, path) -> dict:
    res = cli("inspect", path, "--json")
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def _header(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return f.metadata()


def _roles(rec: dict) -> dict:
    return {i["role"]: i for i in rec["inputs"]}


# --------------------------------------------------------------------------------------------- writing


def test_lit_default_merge_writes_the_record_beside_lit_model_pth(ws, cli):
    final, base = ws["lit_final"], ws["lit_base"]
    res = cli("merge", final, "--json")
    assert res.code == 0, res.stderr
    assert str(final / PROV) in json.loads(res.stdout)["outputs"]
    info = _inspect(cli, final)
    rec = info["provenance"]
    assert rec["operation"] == "merge" and rec["tool"] == {"name": "ckpt-tool", "version": ckpt_tool.__version__}
    roles = _roles(rec)
    assert roles["base"]["path"] == str(base) and roles["adapter"]["kind"] == "adapter"
    (f,) = roles["base"]["files"]
    assert f == {"name": "lit_model.pth", "size": os.path.getsize(base / "lit_model.pth"),
                 "fingerprint": file_fingerprint(base / "lit_model.pth")}
    merge = rec["merge"]
    assert merge["lora"]["alpha"] == 16 and merge["lora"]["r"] == 8 and merge["lora"]["scales"] == [2.0]
    assert merge["hyperparameters"] == {"source": "hyperparameters.yaml"}
    assert merge["adapter_fingerprint"] and merge["convention"] == "lit"
    assert rec["outputs"][0]["file"] == "lit_model.pth"
    human = cli("inspect", final).stdout
    assert f"merged from {final.resolve()} into {base} by ckpt-tool {ckpt_tool.__version__}" in human
    assert info["companions"][0]["provenance"] is None  # the adapter beside it was not written by us


def test_peft_merge_records_in_the_header_and_the_directory(ws, cli, tmp_path):
    out = tmp_path / "merged"
    res = cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", out)
    assert res.code == 0, res.stderr
    head = _header(out / "model.safetensors")
    rec = json.loads(head[provenance.KEY])
    assert rec["operation"] == "merge" and "outputs" not in rec
    assert rec["merge"]["hyperparameters"] == {"source": "adapter_config.json"}
    assert rec["merge"]["lora"]["scales"] == [2.0] and rec["merge"]["lora"]["alpha"] == 16
    assert head["ckpt_tool.merged_adapter"] == rec["merge"]["adapter_fingerprint"]  # H3's mark is kept
    (entry,) = json.loads((out / PROV).read_text())["entries"]
    assert {k: v for k, v in entry.items() if k != "outputs"} == rec
    info = _inspect(cli, out)
    assert info["provenance"] == rec  # the header wins; the raw JSON string is not shown as metadata
    assert provenance.KEY not in info["metadata"]


def test_convert_of_a_merge_carries_the_chain(ws, cli, tmp_path):
    merged, hf, lit, one = (tmp_path / n for n in ("merged", "hf", "lit", "one.safetensors"))
    assert cli("merge", ws["lit_final"], "--out", merged).code == 0
    assert cli("convert", merged, "--to", "hf", "--out", hf).code == 0
    rec = _inspect(cli, hf)["provenance"]
    assert rec["operation"] == "convert" and rec["convert"] == {"to": "hf"}
    (inp,) = rec["inputs"]
    assert inp["path"] == str(merged) and inp["provenance"]["operation"] == "merge"
    assert "files" not in inp["provenance"]["inputs"][0]  # nested records stay small
    assert cli("convert", hf, "--to", "safetensors", "--out", one, "--dtype", "fp32").code == 0
    lines = cli("inspect", one).stdout
    assert "converted from" in lines and "to safetensors" in lines and "merged from" in lines
    assert [d for d, _, _ in provenance.chain(_inspect(cli, one)["provenance"])] == [0, 1, 2]
    assert cli("convert", hf, "--to", "lit", "--out", lit).code == 0
    assert not (lit / "hyperparameters.yaml").exists()  # nothing of the adapter travelled: only the record tells
    res = cli("merge", ws["lit_final"], "--base", lit, "--out", tmp_path / "twice")
    assert res.code == 6 and "provenance" in res.stderr and "twice" in res.stderr, res.stderr
    assert not (tmp_path / "twice").exists()


def test_second_merge_into_a_torch_zip_output_is_refused_by_its_provenance(ws, cli, tmp_path):
    """H3 recognised ckpt-tool's lit outputs only by the copied hyperparameters.yaml; with that file gone
    (a cleaned-up release folder) the merge went ahead and added the delta twice."""
    merged = tmp_path / "merged"
    assert cli("merge", ws["lit_final"], "--out", merged).code == 0
    (merged / "hyperparameters.yaml").unlink()
    res = cli("merge", ws["lit_final"], "--base", merged, "--out", tmp_path / "twice")
    assert res.code == 6 and f"its provenance ({PROV}) records a merge of this adapter" in res.stderr
    assert not (tmp_path / "twice").exists()
    (merged / PROV).unlink()  # without the record nothing tells any more: documented limit
    assert cli("merge", ws["lit_final"], "--base", merged, "--out", tmp_path / "twice").code == 0


def test_container_convert_records_its_source(ws, cli, tmp_path):
    out = tmp_path / "model.safetensors"
    src = ws["lit_base"] / "lit_model.pth"
    assert cli("convert", src, "--to", "safetensors", "--out", out).code == 0
    rec = json.loads(_header(out)[provenance.KEY])
    (inp,) = rec["inputs"]
    assert rec["operation"] == "convert" and inp["role"] == "in" and inp["format"] == "lit"
    assert inp["files"] == [{"name": "lit_model.pth", "size": src.stat().st_size, "fingerprint": file_fingerprint(src)}]
    assert not (tmp_path / PROV).exists()  # a one-file layout: the header only


def test_every_engine_plan_gets_a_record(tmp_path):
    """A plan that sets no provenance (a future split/rename) still gets one, named after its label."""
    from safetensors.torch import save_file

    from ckpt_tool.ops import engine
    from ckpt_tool.ops.inspect import detect
    from ckpt_tool.ops.transform import Sink, TransformPlan, copy_step

    src = tmp_path / "in.safetensors"
    save_file({"a": torch.ones(3), "b": torch.zeros(2, 2)}, str(src))
    info = detect(src)
    steps = [copy_step("in", t.name, "out", t.name, t.dtype, t.shape) for t in info.tensors]
    plan = TransformPlan({"in": info}, steps, {"out": Sink("hf", tmp_path / "out")})
    dry = engine.execute(plan, dry_run=True, label="splitting")
    assert str(tmp_path / "out" / PROV) in dry.files and not (tmp_path / "out").exists()
    engine.execute(plan, label="splitting")
    rec = detect(tmp_path / "out").provenance
    assert rec["operation"] == "splitting" and rec["inputs"][0]["path"] == str(src)


def test_other_checkpoints_entries_are_kept_in_a_shared_directory(ws, cli, tmp_path):
    merged = tmp_path / "merged"
    assert cli("merge", ws["lit_final"], "--out", merged).code == 0
    assert cli("convert", merged, "--to", "hf", "--out", merged).code == 0  # model.safetensors beside lit_model.pth
    entries = json.loads((merged / PROV).read_text())["entries"]
    assert [e["operation"] for e in entries] == ["convert", "merge"]
    assert _inspect(cli, merged)["provenance"]["operation"] == "merge"  # the lit model: its own entry
    assert _inspect(cli, merged / "model.safetensors")["provenance"]["operation"] == "convert"


def test_an_unreadable_record_file_at_the_output_needs_force(ws, cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / PROV).write_text("not json")
    res = cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", out)
    assert res.code == 6 and PROV in res.stderr and "--force" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == [PROV]
    assert cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", out, "--force").code == 0
    assert _inspect(cli, out)["provenance"]["operation"] == "merge"


def test_records_make_outputs_reproducible(ws, cli, tmp_path):
    """No timestamp: the same merge twice gives byte-identical files."""
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        assert cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", d).code == 0
    assert (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    assert (a / PROV).read_bytes() == (b / PROV).read_bytes()


# --------------------------------------------------------------------------------------------- hostile


def _valid_entry(**over) -> dict:
    rec = {
        "schema": provenance.SCHEMA, "version": 1, "tool": {"name": "ckpt-tool", "version": "0.1.0"},
        "operation": "merge", "inputs": [{"role": "adapter", "path": "/a"}, {"role": "base", "path": "/b"}],
        "outputs": [{"file": "model.safetensors", "tensors": 1, "bytes": 4, "digest": "x"}],
    }
    rec.update(over)
    return rec


def _nest(depth: int) -> dict:
    rec = _valid_entry()
    for _ in range(depth):
        rec = _valid_entry(inputs=[{"role": "in", "path": "/x", "provenance": {k: v for k, v in rec.items() if k != "outputs"}}])
    return rec


HOSTILE_FILES = {
    "not json": "{{{",
    "a list": "[]",
    "wrong schema": json.dumps({"schema": "something-else", "version": 1, "entries": []}),
    "entries not a list": json.dumps({"schema": provenance.FILE_SCHEMA, "version": 1, "entries": {}}),
    "entry without tool": json.dumps({"schema": provenance.FILE_SCHEMA, "version": 1, "entries": [_valid_entry(tool=None)]}),
    "NaN": json.dumps({"schema": provenance.FILE_SCHEMA, "version": 1, "entries": [_valid_entry(merge={"scale": float("nan")})]}),
    "huge string": json.dumps({"schema": provenance.FILE_SCHEMA, "version": 1, "entries": [_valid_entry(operation="m" * 100_000)]}),
    "huge int": '{"schema": "%s", "version": 1, "entries": [%s]}' % (provenance.FILE_SCHEMA, json.dumps(_valid_entry())[:-1] + ', "n": 1' + "0" * 4000 + "}"),
    "deep json": '{"schema": "%s", "version": 1, "entries": [%s]}' % (provenance.FILE_SCHEMA, json.dumps(_valid_entry())[:-1] + ', "n": ' + "[" * 5000 + "]" * 5000 + "}"),
    "output outside the folder": json.dumps({"schema": provenance.FILE_SCHEMA, "version": 1, "entries": [_valid_entry(outputs=[{"file": "../model.safetensors", "tensors": 1, "bytes": 4, "digest": "x"}])]}),
    "too many entries": json.dumps({"schema": provenance.FILE_SCHEMA, "version": 1, "entries": [_valid_entry()] * 300}),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_provenance_file_is_a_warning(ws, cli, tmp_path, case):
    base = tmp_path / "base"
    shutil.copytree(ws["hf_base"], base)
    (base / PROV).write_text(HOSTILE_FILES[case])
    info = _inspect(cli, base)
    assert info["provenance"] is None
    assert any(w.startswith(f"ignored {base / PROV}") for w in info["warnings"]), info["warnings"]
    res = cli("merge", ws["peft_adapter"], "--base", base, "--out", tmp_path / "m")  # still merges
    assert res.code == 0, res.stderr


def test_oversized_and_special_files_are_not_read(ws, cli, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(ws["hf_base"], base)
    with open(base / PROV, "wb") as fh:
        fh.truncate(provenance.MAX_FILE_BYTES + 1)  # sparse: costs nothing, must not be read
    assert any("implausibly large" in w for w in _inspect(cli, base)["warnings"])
    (base / PROV).unlink()
    (base / PROV).mkdir()
    assert any("not a regular file" in w for w in _inspect(cli, base)["warnings"])
    (base / PROV).rmdir()
    os.symlink("/dev/zero", base / PROV)
    assert any("not a regular file" in w for w in _inspect(cli, base)["warnings"])


def test_deep_chains_are_cut_not_followed(tmp_path):
    rec = provenance.parse_record(_nest(40))
    depths = [d for d, _, _ in provenance.chain(rec)]
    assert max(depths) == provenance.MAX_DEPTH - 1
    assert "truncated" in json.dumps(rec)


def test_hostile_header_record_is_a_warning(tmp_path, cli):
    from safetensors.torch import save_file

    for i, text in enumerate(["{", json.dumps({"schema": provenance.SCHEMA}), "x" * (provenance.MAX_HEADER_CHARS + 1)]):
        f = tmp_path / f"m{i}.safetensors"
        save_file({"a": torch.ones(1)}, str(f), metadata={provenance.KEY: text})
        info = _inspect(cli, f)
        assert info["provenance"] is None and provenance.KEY not in info["metadata"]
        assert any(w.startswith("ignored the provenance record in the header") for w in info["warnings"])


def test_terminal_escapes_in_a_record_are_not_printed(tmp_path, cli):
    from safetensors.torch import save_file

    rec = _valid_entry(inputs=[{"role": "adapter", "path": "\x1b[2J\x1b[31mevil\r"}, {"role": "base", "path": "/b\n"}])
    rec.pop("outputs")
    f = tmp_path / "m.safetensors"
    save_file({"a": torch.ones(1)}, str(f), metadata={provenance.KEY: json.dumps(rec)})
    out = cli("inspect", f).stdout
    assert "\x1b" not in out and "\r" not in out and "\\x1b[2J" in out
    assert _inspect(cli, f)["provenance"]["inputs"][0]["path"] == "\x1b[2J\x1b[31mevil\r"  # JSON keeps the data


def test_stale_record_is_ignored_with_a_warning(ws, cli, tmp_path):
    merged = tmp_path / "merged"
    assert cli("merge", ws["lit_final"], "--out", merged).code == 0
    sd = torch.load(merged / "lit_model.pth", weights_only=True)
    sd.pop("lm_head.weight")
    torch.save(sd, merged / "lit_model.pth")  # replaced by another tool after the merge
    info = _inspect(cli, merged)
    assert info["provenance"] is None
    assert any("stale" in w and "lit_model.pth" in w for w in info["warnings"]), info["warnings"]


def test_shards_of_different_runs_are_reported(ws, cli, tmp_path):
    from safetensors.torch import load_file, save_file

    a = tmp_path / "a"
    res = cli("merge", ws["peft_adapter"], "--base", ws["hf_base"], "--out", a, "--max-shard-size", "100KB")
    assert res.code == 0, res.stderr
    shards = sorted(a.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert _inspect(cli, a)["provenance"]["operation"] == "merge"
    head = _header(shards[0])
    other = {**json.loads(head[provenance.KEY]), "operation": "convert"}
    save_file(load_file(shards[0]), str(shards[0]), metadata={**head, provenance.KEY: json.dumps(other)})
    info = _inspect(cli, a)
    assert any("provenance records of different runs" in w for w in info["warnings"]), info["warnings"]


def test_reading_provenance_imports_neither_torch_nor_huggingface_hub(ws, cli, tmp_path):
    import subprocess
    import sys

    merged = tmp_path / "merged"
    assert cli("merge", ws["lit_final"], "--out", merged).code == 0
    code = (
        "import sys; from ckpt_tool.cli import main\n"
        "try:\n    main(['inspect', sys.argv[1], '--json'])\nexcept SystemExit:\n    pass\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
        "assert 'huggingface_hub' not in sys.modules, 'huggingface_hub imported'\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(merged)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["provenance"]["operation"] == "merge"
