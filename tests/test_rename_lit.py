"""``rename DIR --repair`` on a March 2024 LitGPT folder whose ``lit_model.pth`` holds only LoRA tensors.

The repair is migrate's (same plugin actions, same journal, same undo), run on one folder: it renames the
file to ``lit_model.pth.lora`` (bytes, inode untouched), writes what migrate writes for that era, and
``rename DIR --undo`` restores the folder exactly. Checkpoints are built with the real ``litgpt`` model
classes (``lit_merge_helpers``) or, for the 2024-03-04 era without ``hyperparameters.yaml``, with
``migrate_helpers``' legacy trees.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import migrate_helpers as h
import pytest
import torch
from cli_helpers import run_subprocess
from lit_merge_helpers import assert_bit_equal, litgpt_merge, make_run

from ckpt_tool.ops import migrate as ops
from ckpt_tool.ops.journal import ENV_CRASH, JOURNAL_NAME, Journal

# the checkpoints are built with the real litgpt (lit_merge_helpers.make_run): the interop lane
pytestmark = pytest.mark.interop

LORA, FULL = "lit_model.pth.lora", "lit_model.pth"


def _march(tmp_path: Path, name: str = "run") -> tuple[Path, Path]:
    """(base, final) of a tiny LoRA run whose adapter is saved as March 2024 did: final/lit_model.pth."""
    base, final = make_run(tmp_path / name, ("query", "value"), seed=3)
    os.rename(final / LORA, final / FULL)
    return base, final


def _doc(res) -> dict:
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


# --------------------------------------------------------------------------- success, inspect, merge


def test_repair_renames_the_file_and_inspect_stops_warning(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    data = (final / FULL).read_bytes()
    ino = (final / FULL).stat().st_ino
    warned = _doc(cli("inspect", final, "--json"))
    fix = f"ckpt-tool rename {final} --repair"
    assert any(fix in w for w in warned["warnings"]), warned["warnings"]
    assert warned["metadata"]["repair_command"] == fix

    doc = _doc(cli("rename", final, "--repair", "--json"))
    assert doc["operation"] == "repair-files" and doc["root"] == str(final) and not doc["dry_run"]
    assert [(s["action"], s["from"], s["to"], s["status"]) for s in doc["steps"]] == [
        ("move", FULL, LORA, "done"),
        ("write", None, "migration.json", "done"),
    ]
    assert not (final / FULL).exists()
    assert (final / LORA).read_bytes() == data and (final / LORA).stat().st_ino == ino
    record = json.loads((final / "migration.json").read_text())
    assert record == {"migrated_by": "ckpt-tool rename --repair", "files": {LORA: {"from": FULL, "kind": "lora"}}}
    after = _doc(cli("inspect", final, "--json"))
    assert not [w for w in after["warnings"] if "rename" in w or "adapter, not a model" in w], after["warnings"]
    assert after["kind"] == "adapter"


def test_repair_accepts_the_file_itself_and_dry_run_changes_nothing(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    before = h.snapshot(final)
    doc = _doc(cli("rename", final / FULL, "--repair", "--dry-run", "--json"))
    assert doc["dry_run"] and [s["status"] for s in doc["steps"]] == ["pending", "pending"]
    assert h.snapshot(final) == before and not (final / JOURNAL_NAME).exists()
    res = cli("rename", final / FULL, "--repair", "--dry-run")
    assert res.code == 0 and "dry run: nothing changed" in res.stdout and f"{FULL} -> {LORA}" in res.stdout
    assert _doc(cli("rename", final / FULL, "--repair", "--json"))["root"] == str(final)
    assert (final / LORA).is_file()


def test_merge_accepts_the_repaired_folder(tmp_path: Path, cli) -> None:
    """The repaired folder merges exactly like the folder LitGPT would have written today.

    (ckpt-tool's merge already decides by content; ``litgpt merge_lora`` does not: it takes a ``lit_model.pth``
    for an already merged model. The interop test below runs it on the repaired folder.)"""
    base, final = _march(tmp_path)
    today = tmp_path / "today"
    shutil.copytree(final, today)
    os.rename(today / FULL, today / LORA)
    _doc(cli("rename", final, "--repair", "--json"))
    res = cli("merge", final, "--base", base, "--out", tmp_path / "m1", "--json")
    assert res.code == 0, res.stderr
    _doc(cli("merge", today, "--base", base, "--out", tmp_path / "m2", "--json"))
    got = torch.load(tmp_path / "m1" / FULL, weights_only=True)
    assert_bit_equal(got, torch.load(tmp_path / "m2" / FULL, weights_only=True))


@pytest.mark.interop
def test_repaired_folder_merges_bit_identical_to_litgpt(tmp_path: Path, cli) -> None:
    base, final = _march(tmp_path)
    _doc(cli("rename", final, "--repair", "--json"))
    _doc(cli("merge", final, "--base", base, "--out", tmp_path / "ours", "--json"))
    want = litgpt_merge(final, base, tmp_path / "work")
    assert_bit_equal(torch.load(tmp_path / "ours" / FULL, weights_only=True), want)


# --------------------------------------------------------------------------- migrate's policy for the era


def test_same_files_as_migrate_for_a_folder_without_hyperparameters(tmp_path: Path, cli) -> None:
    """2024-03-04: lit_config.json, no hyperparameters.yaml. The repair writes what migrate writes."""
    h.run_2024_03_04_lora(tmp_path / "a")
    h.run_2024_03_04_lora(tmp_path / "b")
    ops.apply(tmp_path / "a")
    doc = _doc(cli("rename", tmp_path / "b" / "final", "--repair", "--json"))
    assert {s["from"] or s["to"] for s in doc["steps"]} == {FULL, "model_config.yaml", "hyperparameters.yaml", "migration.json"}
    migrated, repaired = tmp_path / "a" / "final", tmp_path / "b" / "final"
    assert (migrated / LORA).read_bytes() == (repaired / LORA).read_bytes()
    for name in ("model_config.yaml", "hyperparameters.yaml"):
        want = (migrated / name).read_text().replace("ckpt-tool migrate", "ckpt-tool rename --repair")
        assert (repaired / name).read_text() == want, name
    assert "ASSUMED: lora_alpha=16" in (repaired / "hyperparameters.yaml").read_text()
    assert (repaired / "lit_config.json").is_file()  # the old config stays, as migrate leaves it


def test_existing_hyperparameters_without_lora_keys_are_left_alone(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    text = "checkpoint_dir: checkpoints/tiny\nprecision: 32-true\n"
    (final / "hyperparameters.yaml").write_text(text)
    doc = _doc(cli("rename", final, "--repair", "--json"))
    assert "hyperparameters.yaml" not in {s["from"] or s["to"] for s in doc["steps"]}
    assert (final / "hyperparameters.yaml").read_text() == text


def test_adapter_only_lit_model_gets_its_adapter_name(tmp_path: Path, cli) -> None:
    """migrate's rule for the same era covers adapter weights too: the keys decide the name."""
    final = tmp_path / "final"
    h.save(final / FULL, {"model": h.adapter_v2_sd(seed=5)})
    h.lit_config(final)
    doc = _doc(cli("rename", final, "--repair", "--json"))
    assert doc["steps"][0]["to"] == "lit_model.pth.adapter_v2" and (final / "lit_model.pth.adapter_v2").is_file()


# --------------------------------------------------------------------------- undo, rerun


def test_undo_restores_the_folder_and_rerun_is_a_no_op(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    before = h.snapshot(final)
    _doc(cli("rename", final, "--repair", "--json"))
    repaired = h.snapshot(final)
    again = _doc(cli("rename", final, "--repair", "--json"))
    assert again["steps"] == [] and h.snapshot(final) == repaired
    assert any("nothing to repair" in n for n in again["notes"])
    assert Journal(final).pending is None

    res = cli("rename", final, "--undo")
    assert res.code == 0, res.stderr
    assert f"{LORA} -> {FULL}" in res.stdout
    assert h.snapshot(final) == before and not (final / JOURNAL_NAME).exists()
    res = cli("rename", final, "--undo")
    assert res.code == 3 and "no repair journal" in res.stderr
    assert cli("rename", final, "--undo", "--dry-run").code == 2


def test_undo_keeps_a_folder_whose_file_was_edited(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    _doc(cli("rename", final, "--repair", "--json"))
    with open(final / LORA, "ab") as fh:
        fh.write(b"x")
    snap = h.snapshot(final)
    res = cli("rename", final, "--undo")
    assert res.code == 7 and "changed since" in res.stderr, res.stderr
    assert f"ckpt-tool rename {final} --undo" in res.stderr
    assert h.snapshot(final) == snap  # all or nothing: migration.json is still there too


# --------------------------------------------------------------------------- refusals


def test_refuses_a_full_model(tmp_path: Path, cli) -> None:
    base, _ = _march(tmp_path)
    before = h.snapshot(base)
    res = cli("rename", base, "--repair")
    assert res.code == 6 and "full model" in res.stderr, res.stderr
    assert h.snapshot(base) == before and not (base / JOURNAL_NAME).exists()


def test_refuses_to_overwrite_an_existing_lora_file(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    h.save(final / LORA, {"model": {}})
    before = h.snapshot(final)
    res = cli("rename", final, "--repair", "--json")
    assert res.code == 6 and f"{LORA} already exists" in res.stderr and "never overwritten" in res.stderr
    assert json.loads(res.stdout)["error"]["exit_code"] == 6  # --json: the error document, the message on stderr
    assert h.snapshot(final) == before and not (final / JOURNAL_NAME).exists()


@pytest.mark.parametrize("given", ["dir", "file"])
def test_refuses_a_symlink_out_of_the_folder(tmp_path: Path, cli, given: str) -> None:
    _, real = _march(tmp_path)
    final = tmp_path / "linked"
    final.mkdir()
    os.symlink(real / FULL, final / FULL)
    for name in ("model_config.yaml", "hyperparameters.yaml"):
        shutil.copy(real / name, final / name)
    before, outside = h.snapshot(final), h.snapshot(real)
    res = cli("rename", final if given == "dir" else final / FULL, "--repair")
    assert res.code == 6 and "symlink" in res.stderr, res.stderr
    assert h.snapshot(final) == before and h.snapshot(real) == outside
    assert not (final / JOURNAL_NAME).exists()


def test_refuses_a_march_iter_folder_and_inspect_points_to_migrate(tmp_path: Path, cli) -> None:
    """iter-N/lit_model.pth: migrate renames the folder to step-N/ too; a file rename alone would strand it."""
    h.run_2024_03_04_lora(tmp_path / "run")
    folder = tmp_path / "run" / "iter-000100"
    before = h.snapshot(folder)
    res = cli("rename", folder, "--repair")
    assert res.code == 6 and f"ckpt-tool migrate {tmp_path / 'run'}" in res.stderr, res.stderr
    assert h.snapshot(folder) == before and not (folder / JOURNAL_NAME).exists()
    warnings = _doc(cli("inspect", folder / FULL, "--json"))["warnings"]
    assert any("adapter, not a model" in w and "ckpt-tool migrate" in w for w in warnings), warnings
    assert not any("--repair" in w for w in warnings)


def test_a_damaged_lit_model_is_invalid_input(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    data = (final / FULL).read_bytes()
    (final / FULL).write_bytes(data[: len(data) // 2])
    res = cli("rename", final, "--repair")
    assert res.code == 4 and "Traceback" not in res.stderr, res.stderr
    assert not (final / JOURNAL_NAME).exists() and not (final / LORA).exists()


def test_option_combinations(tmp_path: Path, cli) -> None:
    _, final = _march(tmp_path)
    for extra in (["--out", tmp_path / "x"], ["--force"], ["--adapter", "a"]):
        res = cli("rename", final, "--repair", *extra)
        assert res.code == 2, (extra, res.stderr)
    assert cli("rename", final, "--repair", "--undo").code == 2
    assert (final / FULL).is_file()


def test_read_only_folder_is_an_environment_failure(tmp_path: Path, cli) -> None:
    """The machine refused → exit 9, nothing changed. Needs root for the read-only bind mount."""
    _, final = _march(tmp_path)
    before = h.snapshot(final)
    proc = subprocess.run(["mount", "--bind", "-o", "ro", str(final), str(final)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.decode().strip()}")
    try:
        res = cli("rename", final, "--repair")
        dry = cli("rename", final, "--repair", "--dry-run")
    finally:
        subprocess.run(["umount", str(final)], check=True)
    assert res.code == 9 and "Read-only file system" in res.stderr, res.stderr
    assert dry.code == 0, dry.stderr  # a dry run writes nothing, so it works on a read-only folder
    assert h.snapshot(final) == before and not (final / JOURNAL_NAME).exists()
    assert cli("rename", final, "--repair").code == 0  # writable again: it goes through


# --------------------------------------------------------------------------- hostile journal


@pytest.mark.parametrize(
    "edit",
    [
        lambda s: s.__setitem__("dst", "../escaped.pth"),
        lambda s: s.__setitem__("dst", "/tmp/abs.pth"),
        lambda s: s.__setitem__("op", "unlink"),
        lambda s: s.__setitem__("src", ".ckpt-tool-migrate.lock"),
    ],
    ids=["dotdot", "absolute", "unknown-op", "own-file"],
)
def test_hostile_journal_is_refused_and_nothing_changes(tmp_path: Path, cli, edit) -> None:
    _, final = _march(tmp_path)
    _doc(cli("rename", final, "--repair", "--json"))
    h.edit_journal_steps(final, edit, match=lambda s: s["op"] == "move")
    snap = h.snapshot(final)
    journal = (final / JOURNAL_NAME).read_bytes()
    for args in (["--repair"], ["--undo"], ["--repair", "--dry-run"]):
        res = cli("rename", final, *args)
        assert res.code == 4 and "journal" in res.stderr and "Traceback" not in res.stderr, (args, res.stderr)
    assert h.snapshot(final) == snap and (final / JOURNAL_NAME).read_bytes() == journal


# --------------------------------------------------------------------------- crash and resume


def _run(final: Path, *args: str, crash: int | None = None):
    return run_subprocess("rename", final, *args, "--json", env={ENV_CRASH: str(crash or "")})


def _copy(template: Path, dest: Path) -> Path:
    shutil.copytree(template, dest, symlinks=True)
    return dest


def _mutations(template: Path, work: Path, *before: str, mode: str) -> int:
    """How many mutations an uninterrupted run makes: the crash hook fires at each one until it no longer can."""
    n = 1
    while True:
        final = _copy(template, work / f"count{mode}-{n}")
        for args in before:
            assert _run(final, args).code == 0
        if _run(final, mode, crash=n).code != -signal.SIGKILL:
            return n - 1
        n += 1


@pytest.mark.slow
def test_kill_at_every_step_converges(tmp_path: Path) -> None:
    """SIGKILL after each mutation of --repair (then rerun, or --undo) and of --undo (then --undo again)."""
    _, template = _march(tmp_path, "template")
    original = h.snapshot(template)
    clean = _copy(template, tmp_path / "clean")
    assert _run(clean, "--repair").code == 0
    expected = h.snapshot(clean)
    total = _mutations(template, tmp_path, mode="--repair")
    assert total >= 4  # the plan, the rename, migration.json (temp, then published), complete
    for n in range(1, total + 1):
        final = _copy(template, tmp_path / f"crash-{n}")
        res = _run(final, "--repair", crash=n)
        assert res.code == -signal.SIGKILL, (n, res.code, res.stderr)
        if n % 2:
            res = _run(final, "--undo")
            assert res.code == 0, (n, res.stderr)
            assert h.snapshot(final) == original and not (final / JOURNAL_NAME).exists(), n
            continue
        res = _run(final, "--repair")
        assert res.code == 0, (n, res.stderr)
        assert h.snapshot(final) == expected, n
        assert Journal(final).pending is None
    undo_total = _mutations(template, tmp_path, "--repair", mode="--undo")
    assert undo_total >= 3
    for n in range(1, undo_total):  # the last mutation removes the journal: nothing left to resume
        final = _copy(template, tmp_path / f"undo-{n}")
        assert _run(final, "--repair").code == 0
        res = _run(final, "--undo", crash=n)
        assert res.code == -signal.SIGKILL, (n, res.code, res.stderr)
        res = _run(final, "--repair")
        assert res.code == 7 and f"ckpt-tool rename {final} --undo" in res.stderr, (n, res.stderr)
        res = _run(final, "--undo")
        assert res.code == 0, (n, res.stderr)
        assert h.snapshot(final) == original and not (final / JOURNAL_NAME).exists(), n


def test_an_interrupted_repair_is_shown_and_finished(tmp_path: Path) -> None:
    """Killed right after the rename: a dry run shows the pending plan, the rerun finishes it and says so."""
    _, final = _march(tmp_path)
    assert _run(final, "--repair", crash=2).code == -signal.SIGKILL  # 1: the plan record, 2: the rename
    assert (final / LORA).is_file() and not (final / "migration.json").exists()
    dry = json.loads(_run(final, "--repair", "--dry-run").stdout)
    assert dry["resumed"] and [s["status"] for s in dry["steps"]] == ["done", "pending"]
    doc = json.loads(_run(final, "--repair").stdout)
    assert doc["resumed"] and doc["notes"] == [] and "resumed an interrupted repair" in doc["message"]
    assert (final / "migration.json").is_file() and Journal(final).pending is None
