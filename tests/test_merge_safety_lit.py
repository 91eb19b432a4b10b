"""LitGPT merges that used to give silent wrong results (exit 0, no warning), against the real litgpt.

* ``.nan`` / ``.inf`` / ``1.0e+999`` / ``1e999`` lora_alpha in hyperparameters.yaml: refused, inspect warns;
* ``--base final/lit_model.pth`` (the merge beside the adapter) or a copy of the adapter's folder: refused;
  ``--out`` into the adapter's own folder is LitGPT's own convention and behaves exactly like the default,
  ``--out`` into *another* adapter's folder (which would then look "merged already" to LitGPT) is refused;
* ``litgpt merge_lora --precision`` does not change LitGPT's merge, so ``--dtype`` stays a cast of it;
* values ``ckpt-tool migrate`` assumed stay visible: inspect shows them as assumed and warns, merge warns and
  records them, and LitGPT itself still accepts the folder (merge_lora bit-identical; finetune --config).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from lit_merge_helpers import assert_bit_equal, litgpt_merge, make_run

pytestmark = pytest.mark.interop


def _hp(final: Path, **changes: object) -> None:
    hp = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    hp.update(changes)
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))


def _raw_alpha(final: Path, text: str) -> None:
    lines = [
        f"lora_alpha: {text}" if line.startswith("lora_alpha:") else line
        for line in (final / "hyperparameters.yaml").read_text().splitlines()
    ]
    (final / "hyperparameters.yaml").write_text("\n".join(lines) + "\n")


# --------------------------------------------------------------------------------- 1. scales


@pytest.mark.parametrize("text", [".nan", ".inf", "-.inf", "1.0e+999", "1e999", "10000000.0"])
def test_non_finite_alpha_refused_and_inspect_warns(tmp_path, cli, text):
    base, final = make_run(tmp_path, ("query", "value"))
    _raw_alpha(final, text)
    res = cli("merge", final, "--out", tmp_path / "m")
    assert res.code == 4, res.stderr
    assert "lora_alpha" in res.stderr and "hyperparameters.yaml" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "m").exists() and not (final / "lit_model.pth").exists()
    res = cli("inspect", final)
    assert res.code == 0, res.stderr
    assert "lora_alpha" in res.stdout and ("not finite" in res.stdout or "not a number" in res.stdout
                                           or "past the limit" in res.stdout)


# ------------------------------------------------------------------------ 2. own output as base


def test_merged_file_beside_the_adapter_as_base_refused(tmp_path, cli):
    base, final = make_run(tmp_path, ("query", "value", "mlp"))
    assert cli("merge", final, "--quiet").code == 0  # final/lit_model.pth, as litgpt merge_lora writes it
    merged = final / "lit_model.pth"
    before = merged.read_bytes()
    res = cli("merge", final, "--base", merged, "--out", tmp_path / "twice")
    assert res.code == 6, res.stderr
    assert "delta twice" in res.stderr
    assert not (tmp_path / "twice").exists() and merged.read_bytes() == before


def test_copy_of_the_adapter_folder_as_base_refused(tmp_path, cli):
    base, final = make_run(tmp_path, ("query", "value"))
    assert cli("merge", final, "--quiet").code == 0
    copy = tmp_path / "published"
    shutil.copytree(final, copy)  # a merged final/ copied elsewhere: still this adapter's merge
    res = cli("merge", final, "--base", copy / "lit_model.pth", "--out", tmp_path / "twice")
    assert res.code == 6 and "delta twice" in res.stderr, res.stderr
    out = tmp_path / "merged"  # ckpt-tool's own --out dir carries the adapter's hyperparameters.yaml
    assert cli("merge", final, "--out", out, "--quiet", "--force").code == 0
    res = cli("merge", final, "--base", out, "--out", tmp_path / "twice2")
    assert res.code == 6 and "delta twice" in res.stderr, res.stderr
    # the original base still merges
    assert cli("merge", final, "--base", base, "--out", tmp_path / "ok", "--quiet").code == 0


def test_out_into_the_adapter_folder_is_the_default(tmp_path, cli):
    """LitGPT's convention is the merge beside the adapter: --out FINAL behaves exactly as no --out
    (same file, same 'merged already' check), and copies nothing into the adapter's folder."""
    base, final = make_run(tmp_path, ("query", "value"))
    want = litgpt_merge(final, base, tmp_path)
    before = sorted(p.name for p in final.iterdir())
    res = cli("merge", final, "--out", final, "--json")
    assert res.code == 0, res.stderr
    # the merged weights and their provenance record (h9): nothing else lands in the adapter's folder
    assert json.loads(res.stdout)["outputs"] == [str(final / "lit_model.pth"), str(final / "ckpt-tool-provenance.json")]
    assert sorted(p.name for p in final.iterdir()) == sorted(before + ["lit_model.pth", "ckpt-tool-provenance.json"])
    assert_bit_equal(torch.load(final / "lit_model.pth", weights_only=True), want)
    res = cli("merge", final, "--out", final)
    assert res.code == 6 and "merged already" in res.stderr


def test_out_into_another_adapters_folder_refused(tmp_path, cli):
    """A lit_model.pth written beside another run's adapter makes LitGPT treat that adapter as merged."""
    _base, final = make_run(tmp_path, ("query", "value"))
    _base2, other = make_run(tmp_path / "two", ("query",))
    res = cli("merge", final, "--out", other)
    assert res.code == 6, res.stderr
    assert "lit_model.pth.lora" in res.stderr
    assert not (other / "lit_model.pth").exists()


# ---------------------------------------------------------------------------------- 4. dtype


def test_litgpt_precision_does_not_change_its_merge(tmp_path, cli):
    """merge_lora(precision=...) only picks the dtype the model is instantiated in (on meta, then replaced
    with assign=True); the math runs in the LoRA dtype. So --dtype is documented as a cast of LitGPT's result."""
    import contextlib
    import io

    from litgpt.scripts.merge_lora import merge_lora

    base, final = make_run(tmp_path, ("query", "value", "head"), base_dtype=torch.float32)
    results = []
    for precision in ("32-true", "bf16-true"):
        ref = tmp_path / f"ref-{precision}"
        shutil.copytree(final, ref)
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            merge_lora(checkpoint_dir=ref, pretrained_checkpoint_dir=base, precision=precision)
        results.append(torch.load(ref / "lit_model.pth", weights_only=True))
    assert_bit_equal(results[1], results[0])
    assert {v.dtype for v in results[0].values()} == {torch.float32}
    res = cli("merge", final, "--out", tmp_path / "bf", "--dtype", "bf16", "--quiet")
    assert res.code == 0, res.stderr
    got = torch.load(tmp_path / "bf" / "lit_model.pth", weights_only=True)
    assert_bit_equal(got, {k: v.to(torch.bfloat16) for k, v in results[0].items()})


# --------------------------------------------------------------------------- 5. assumed values


def _legacy_run(tmp: Path) -> tuple[Path, Path, Path]:
    """A 2023-style run: lit_model_lora_finetuned.pth, no hyperparameters.yaml (trained with alpha 16, q+v)."""
    base, final = make_run(tmp, ("query", "value"), alpha=16)
    run = tmp / "runs" / "2023-lora"
    run.mkdir(parents=True)
    sd = torch.load(final / "lit_model.pth.lora", weights_only=True)
    torch.save(sd, run / "lit_model_lora_finetuned.pth")
    for name in ("model_config.yaml", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(final / name, run / name)
    return base, final, run


def test_assumed_values_stay_visible_after_migrate(tmp_path, cli):
    base, trained, run = _legacy_run(tmp_path)
    res = cli("migrate", tmp_path / "runs", "--apply")
    assert res.code == 0, res.stdout + res.stderr
    final = run / "final"
    text = (final / "hyperparameters.yaml").read_text()
    assert "# ckpt-tool-assumed: lora_alpha lora_query lora_key lora_value" in text
    hp = yaml.safe_load(text)
    assert hp["lora_alpha"] == 16 and set(hp) <= {"lora_r", "lora_alpha", "lora_query", "lora_key", "lora_value",
                                                  "lora_projection", "lora_mlp", "lora_head"}

    res = cli("inspect", final)
    assert res.code == 0, res.stderr
    assert "alpha=16 (assumed)" in res.stdout and "ASSUMED" in res.stdout
    info = json.loads(cli("inspect", final, "--json").stdout)
    assert info["lora"]["assumed"] == ["alpha", "query", "key", "value"]
    assert any("ASSUMED" in w for w in info["warnings"])

    out = tmp_path / "merged"
    res = cli("merge", final, "--base", base, "--out", out, "--json")
    assert res.code == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["assumed"] == ["alpha", "query", "key", "value"] and summary["warnings"]
    assert "warning:" in res.stderr and "ASSUMED" in res.stderr
    ours = torch.load(out / "lit_model.pth", weights_only=True)
    assert_bit_equal(ours, litgpt_merge(trained, base, tmp_path / "a"))  # the assumption was right here
    assert "ckpt-tool-assumed" in (out / "hyperparameters.yaml").read_text()  # travels with the merge

    # LitGPT itself still accepts the file: merge_lora (once checkpoint_dir is added, as the file says) ...
    with open(final / "hyperparameters.yaml", "a") as fh:
        fh.write(f"checkpoint_dir: {base}\n")
    assert_bit_equal(litgpt_merge(final, base, tmp_path / "b"), ours)
    # ... and finetune_lora --config (jsonargparse rejects unknown keys, which is why the mark is a comment)
    proc = subprocess.run(
        [sys.executable, "-m", "litgpt", "finetune_lora", "--config", str(final / "hyperparameters.yaml"),
         "--print_config"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "lora_alpha: 16" in proc.stdout


def test_assumed_key_form_is_honoured(tmp_path, cli):
    """A ``ckpt_tool_assumed`` key (merge_lora ignores keys without the lora_ prefix) marks values too."""
    _base, final = make_run(tmp_path, ("query", "value"))
    _hp(final, ckpt_tool_assumed=["lora_alpha"])
    res = cli("inspect", final)
    assert "alpha=4 (assumed)" in res.stdout
    res = cli("merge", final, "--out", tmp_path / "m", "--json")
    assert res.code == 0 and json.loads(res.stdout)["assumed"] == ["alpha"] and "warning:" in res.stderr


def test_recorded_values_are_not_assumed(tmp_path, cli):
    _base, final = make_run(tmp_path, ("query", "value"))
    res = cli("inspect", final)
    assert "(assumed)" not in res.stdout and "ASSUMED" not in res.stdout
    res = cli("merge", final, "--out", tmp_path / "m", "--json")
    assert res.code == 0 and "assumed" not in json.loads(res.stdout) and "warning:" not in res.stderr
