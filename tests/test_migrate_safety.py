"""``migrate`` against an attacker and a careless user: crafted or damaged journals, symlinks swapped into the
tree, a full or read-only disk, an undo on a copied tree, hostile temp files, and machine-readable output.

Each test names the class of bug it covers; all of them failed on the code before the fix
(see /work/notes/h1-migrate.md for the list).
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import migrate_helpers as h
import pytest
from cli_helpers import run_subprocess

from ckpt_tool.ops import migrate as ops
from ckpt_tool.ops.journal import ENV_CRASH, JOURNAL_NAME, Journal

JOURNAL_HINT = "journal"


def _killed_after_plan(root: Path, *extra: str) -> None:
    """An ``--apply`` killed right after it journaled its plan (mutation 1): a pending journal, tree unchanged."""
    res = run_subprocess("migrate", root, "--apply", *extra, env={ENV_CRASH: "1"})
    assert res.code == -signal.SIGKILL, res.stderr
    assert (root / JOURNAL_NAME).is_file()


def _state(root: Path) -> tuple[dict[str, str], bytes]:
    return h.snapshot(root), (root / JOURNAL_NAME).read_bytes()


def _one_error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, stderr
    assert "internal error" not in stderr and "Traceback" not in stderr, stderr
    return errors[0]


# --------------------------------------------------------------------------- 1. the journal is untrusted input


@pytest.mark.parametrize(
    "evil",
    ["ABSOLUTE", "../outside/.bashrc", "2023-06/../../outside/.bashrc", "2023-06//final/x.yaml",
     "2023-06/./final/x.yaml", "2023-06/final/x\u0000.yaml", ""],
)
def test_crafted_journal_path_is_refused_on_apply(tmp_path: Path, evil: str) -> None:
    """Class: journal trusted as written. An edited destination must not create files anywhere (a shell rc file)."""
    root = h.small_tree(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    _killed_after_plan(root)
    target = str(outside / ".bashrc") if evil == "ABSOLUTE" else evil

    def edit(step: dict) -> None:
        step["dst"] = target

    line = h.edit_journal_steps(root, edit, lambda s: s.get("dst") == "2023-06/final/model_config.yaml")
    before = _state(root)
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 4, (res.code, res.stderr)
    err = _one_error_line(res.stderr)
    assert f"line {line}" in err and JOURNAL_HINT in err, err
    assert list(outside.iterdir()) == []
    assert _state(root) == before  # nothing changed, the journal not even truncated
    # the plan (no --apply) refuses the same way, and so does --undo
    assert run_subprocess("migrate", root).code == 4
    assert run_subprocess("migrate", root, "--undo").code == 4
    assert _state(root) == before and list(outside.iterdir()) == []


def test_crafted_journal_cannot_make_undo_delete_outside_root(tmp_path: Path) -> None:
    """Class: journal trusted as written. ``--undo`` of a copy whose destination was edited to point outside."""
    root = h.small_tree(tmp_path / "root")
    assert run_subprocess("migrate", root, "--apply").code == 0
    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "tokenizer.json"
    victim.write_bytes((root / "2023-06/final/tokenizer.json").read_bytes())  # same bytes: the undo check passes

    def edit(step: dict) -> None:
        step["dst"] = "../outside/tokenizer.json"

    h.edit_journal_steps(root, edit, lambda s: s.get("dst") == "2023-06/final/tokenizer.json")
    before = _state(root)
    res = run_subprocess("migrate", root, "--undo")
    assert res.code == 4, res.stderr
    _one_error_line(res.stderr)
    assert victim.is_file()
    assert _state(root) == before


DAMAGE = {
    "unknown op": (lambda s: s.__setitem__("op", "chmod"), lambda s: True),
    "group is text": (lambda s: s.__setitem__("group", "zero"), lambda s: True),
    "index is a float": (lambda s: s.__setitem__("i", 1.5), lambda s: True),
    "index is a bool": (lambda s: s.__setitem__("i", True), lambda s: s.get("i") == 1),
    "missing destination": (lambda s: s.pop("dst"), lambda s: s.get("op") == "write"),
    "missing data": (lambda s: s.pop("data"), lambda s: s.get("op") == "write"),
    "data does not match sha256": (lambda s: s.__setitem__("data", "x: 1\n"), lambda s: s.get("op") == "write"),
    "sha256 not hex": (lambda s: s.__setitem__("sha256", "zz" * 32), lambda s: s.get("op") == "write"),
    "fingerprint is text": (lambda s: s.__setitem__("fp", "12"), lambda s: s.get("op") == "move"),
    "fingerprint too short": (lambda s: s.__setitem__("fp", [1]), lambda s: s.get("op") == "move"),
    "source on a mkdir": (lambda s: s.__setitem__("src", "2023-06"), lambda s: s.get("op") == "mkdir"),
    "path is a number": (lambda s: s.__setitem__("src", 7), lambda s: s.get("op") == "move"),
    "reason is a list": (lambda s: s.__setitem__("reason", ["x"]), lambda s: True),
    "unknown field": (lambda s: s.__setitem__("mode", 0o777), lambda s: True),
    "step writes the journal": (
        lambda s: s.__setitem__("dst", JOURNAL_NAME), lambda s: s.get("op") == "write"
    ),
}


@pytest.mark.parametrize("name", sorted(DAMAGE))
def test_damaged_journal_step_is_one_clear_error(tmp_path: Path, name: str) -> None:
    """Class: journal trusted as written. Wrong types, missing fields, unknown ops: exit 4, nothing changed."""
    root = h.small_tree(tmp_path / "root")
    _killed_after_plan(root)
    edit, match = DAMAGE[name]
    line = h.edit_journal_steps(root, edit, match)
    before = _state(root)
    for args in (("--apply",), ("--undo",), ()):
        res = run_subprocess("migrate", root, *args)
        assert res.code == 4, (name, args, res.code, res.stderr)
        err = _one_error_line(res.stderr)
        assert f"line {line}" in err, err
        assert _state(root) == before, (name, args)


RECORD_DAMAGE = {
    "session is text": (lambda r: r.__setitem__("session", "one"), lambda r: r.get("type") == "plan"),
    "unknown record type": (lambda r: r.__setitem__("type", "exec"), lambda r: r.get("type") == "plan"),
}


@pytest.mark.parametrize("name", sorted(RECORD_DAMAGE))
def test_damaged_journal_record_is_one_clear_error(tmp_path: Path, name: str) -> None:
    root = h.small_tree(tmp_path / "root")
    _killed_after_plan(root)
    edit, match = RECORD_DAMAGE[name]
    line = h.edit_journal_records(root, edit, match)
    before = _state(root)
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 4, res.stderr
    assert f"line {line}" in _one_error_line(res.stderr)
    assert _state(root) == before


def test_garbage_line_in_the_middle_is_refused_not_truncated(tmp_path: Path) -> None:
    root = h.small_tree(tmp_path / "root")
    assert run_subprocess("migrate", root, "--apply").code == 0
    path = root / JOURNAL_NAME
    lines = path.read_bytes().split(b"\n")
    lines.insert(1, b"[1, 2, 3]")
    path.write_bytes(b"\n".join(lines))
    before = _state(root)
    res = run_subprocess("migrate", root, "--undo")
    assert res.code == 4 and "line 2" in _one_error_line(res.stderr)
    assert _state(root) == before


@pytest.mark.parametrize(
    "converter", ["ckpt_tool_lit.config:read_json_mapping", "os:system", "builtins:eval", "ckpt_tool_lit.migrate:save"]
)
def test_journal_converter_outside_the_allowlist_is_refused(tmp_path: Path, converter: str) -> None:
    """Class: journal trusted as written. A ``converter`` naming some function is never imported or called."""
    root = tmp_path / "root"
    h.save(root / "2023-09" / "lit_model_finetuned.pth", {"model": h.full_sd(seed=9)})
    h.lit_config(root / "2023-09")
    _killed_after_plan(root, "--upgrade-attn")

    def edit(step: dict) -> None:
        step["converter"] = converter

    line = h.edit_journal_steps(root, edit, lambda s: s.get("op") == "derive")
    before = _state(root)
    res = run_subprocess("migrate", root, "--apply", "--upgrade-attn")
    assert res.code == 4, res.stderr
    err = _one_error_line(res.stderr)
    assert f"line {line}" in err and "converter" in err
    assert _state(root) == before


def test_oversized_journal_is_refused_unread_and_kept(tmp_path: Path) -> None:
    """Class: unbounded input. A journal past MAX_JOURNAL_BYTES (sparse: no disk used) is refused, not truncated."""
    from ckpt_tool.limits import MAX_JOURNAL_BYTES

    root = h.small_tree(tmp_path / "root")
    with open(root / JOURNAL_NAME, "wb") as fh:
        fh.truncate(MAX_JOURNAL_BYTES + 1)
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 4, res.stderr
    assert "MiB" in _one_error_line(res.stderr)
    assert os.path.getsize(root / JOURNAL_NAME) == MAX_JOURNAL_BYTES + 1


def test_absurd_step_count_is_refused(tmp_path: Path) -> None:
    root = h.small_tree(tmp_path / "root")
    _killed_after_plan(root)
    h.edit_journal_records(root, lambda r: r.__setitem__("steps", 10**12), lambda r: r.get("type") == "plan")
    before = _state(root)
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 4 and "steps" in _one_error_line(res.stderr)
    assert _state(root) == before


def test_journal_and_lock_symlinks_are_never_followed(tmp_path: Path) -> None:
    root = h.small_tree(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    os.symlink(outside / "created-by-lock", root / ".ckpt-tool-migrate.lock")
    res = run_subprocess("migrate", root, "--apply")
    assert res.code != 0 and not (outside / "created-by-lock").exists()
    _one_error_line(res.stderr)
    os.unlink(root / ".ckpt-tool-migrate.lock")
    os.symlink(outside / "journal", root / JOURNAL_NAME)
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 4 and not (outside / "journal").exists()


def test_journal_written_by_us_re_reads_as_the_same_typed_steps(tmp_path: Path) -> None:
    """Writing side: the plan's typed steps serialise and parse back equal (every era, --upgrade-attn too)."""
    tree = h.build_tree(tmp_path / "runs", tmp_path / "outside")
    plan = ops.plan(tree, options=ops.MigrateOptions(upgrade_attn=True))
    assert plan.steps and not plan.conflicts
    Journal(tree).start(plan.steps)
    again = Journal(tree)
    assert again.pending is not None and again.pending.steps == plan.steps


# --------------------------------------------------------------------------- 2. symlinked directories


def _run_with_linked_folder(root: Path, outside: Path, name: str) -> Path:
    run = root / "run"
    h.save(run / "lit_model_lora_finetuned.pth", {"model": h.lora_sd(seed=1)})
    h.save(run / "iter-000100-ckpt.pth", {"model": h.lora_sd(seed=2)})
    h.lit_config(run)
    (outside / name).mkdir(parents=True)
    (outside / name / "keep.txt").write_text("outside ROOT\n")
    os.symlink(outside / name, run / name)
    return run


@pytest.mark.parametrize("name", ["final", "step-000100"])
def test_symlinked_checkpoint_folder_is_reported_not_followed(tmp_path: Path, cli, name: str) -> None:
    """Class: symlinked directory followed. ``final/`` or ``step-N/`` linking out of ROOT gets nothing."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    run = _run_with_linked_folder(root, outside, name)
    outside_before = h.snapshot(outside)
    res = cli("migrate", root, "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert not [a for a in data["actions"] if (a["to"] or "").startswith(f"run/{name}/")]
    assert any(item["path"] == f"run/{name}" and "symlink" in item["reason"] for item in data["left"])
    res = cli("migrate", root, "--apply", "--json")
    assert res.code == 0, res.stderr
    assert h.snapshot(outside) == outside_before
    assert os.path.islink(run / name)
    moved = "iter-000100-ckpt.pth" if name == "final" else "lit_model_lora_finetuned.pth"
    kept = "lit_model_lora_finetuned.pth" if name == "final" else "iter-000100-ckpt.pth"
    assert (run / kept).is_file() and not (run / moved).exists()


def _swap_for_symlink(path: Path, outside: Path) -> None:
    """Move the directory ``path`` out of ROOT and leave a symlink to it in its place."""
    dest = outside / path.name
    shutil.move(str(path), dest)
    os.symlink(dest, path)


@pytest.mark.parametrize("swap", ["final", "parent"])
def test_symlink_swapped_in_after_planning_is_not_followed(tmp_path: Path, cli, monkeypatch, swap: str) -> None:
    """Class: symlinked directory followed. The apply re-checks every component right before each step."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    h.run_2024_03_04_lora(root / "team" / "run")  # final/lit_model.pth (LoRA) is renamed in place
    h.run_2023_07_adapter(root / "other")
    real_plan = ops._fresh_plan

    def plan_then_swap(root_: Path, jobs: int, options: ops.MigrateOptions) -> ops.Plan:
        result = real_plan(root_, jobs, options)
        _swap_for_symlink(root / "team" / "run" / "final" if swap == "final" else root / "team", outside)
        return result

    monkeypatch.setattr(ops, "_fresh_plan", plan_then_swap)
    res = cli("migrate", root, "--apply", "--json")
    monkeypatch.undo()
    outside_after_swap = {
        "final": {"final/lit_model.pth", "final/lit_config.json", "final/tokenizer.json", "final/tokenizer_config.json"},
    }
    assert res.code == 7, res.stderr
    doc = json.loads(res.stdout)
    assert doc["error"]["exit_code"] == 7
    names = {str(p.relative_to(outside)) for p in outside.rglob("*") if p.is_file()}
    if swap == "final":
        assert names == outside_after_swap["final"]
    else:
        assert not any(n.endswith((".lora", "model_config.yaml", "migration.json")) for n in names), names
    assert (root / "other/final/lit_model.pth.adapter").is_file()  # the untouched part of the plan went ahead


def test_symlink_swapped_in_before_a_resume_is_not_followed(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    h.run_2024_03_04_lora(root / "run")
    _killed_after_plan(root)
    _swap_for_symlink(root / "run" / "final", outside)
    before = h.snapshot(outside)
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 7, res.stderr
    assert h.snapshot(outside) == before


def test_undo_does_not_follow_a_symlink_swapped_in_after_apply(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    h.run_2023_06_lora(root / "run")
    assert run_subprocess("migrate", root, "--apply").code == 0
    _swap_for_symlink(root / "run" / "final", outside)
    before = h.snapshot(outside)
    res = run_subprocess("migrate", root, "--undo")
    assert res.code == 7, res.stderr
    assert "run/final" in res.stderr
    assert h.snapshot(outside) == before
    assert not (root / "run" / "lit_model_lora_finetuned.pth").exists()  # not pulled back in from outside


def test_plugin_proposing_through_a_symlink_is_a_conflict(tmp_path: Path) -> None:
    """The core re-checks every proposed path (a third-party plugin could propose anything)."""
    root = tmp_path / "root"
    (root / "run").mkdir(parents=True)
    (root / "real").mkdir()
    (root / "run" / "w.pth").write_bytes(b"x")
    os.symlink(root / "real", root / "run" / "linked")
    result = ops.Plan(root)
    ops._build_steps(root, [(root / "run", ops.Action(ops.MOVE, src=root / "run/w.pth", dst=root / "run/linked/w.pth"))], result)
    assert any("symlink" in c and "run/linked" in c for c in result.conflicts), result.conflicts


# --------------------------------------------------------------------------- 3. the machine refuses mid-apply


def _expected(tmp_path: Path, builder=h.small_tree) -> dict[str, str]:
    ref = builder(tmp_path / "reference")
    ops.apply(ref)
    return h.snapshot(ref)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EIO])
@pytest.mark.parametrize("primitive,nth", [("link", 2), ("mkdir", 2)])
def test_environment_failure_stops_pending_and_resumes(
    tmp_path: Path, cli, monkeypatch, code: int, primitive: str, nth: int
) -> None:
    """Class: environment failure journaled as a skip. Exit 9, session pending, a rerun finishes every step."""
    expected = _expected(tmp_path)
    root = h.small_tree(tmp_path / "root")
    real = getattr(os, primitive)
    calls = [0]

    def failing(*args, **kwargs):
        calls[0] += 1
        if calls[0] == nth:
            raise OSError(code, os.strerror(code), "injected")
        return real(*args, **kwargs)

    monkeypatch.setattr(os, primitive, failing)
    res = cli("migrate", root, "--apply", "--json")
    monkeypatch.undo()
    assert res.code == 9, (res.code, res.stderr)
    doc = json.loads(res.stdout)  # exactly one JSON document
    assert doc["error"]["exit_code"] == 9
    err = _one_error_line(res.stderr)
    assert "--apply" in err and "resume" in err, err
    assert Journal(root).pending is not None
    assert not [p for p in root.rglob(".ckpt-tool-tmp-*")]  # nothing partial left behind
    plan = cli("migrate", root, "--json")
    assert plan.code == 0 and json.loads(plan.stdout)["resuming"] is True
    res = cli("migrate", root, "--apply")
    assert res.code == 0, res.stderr
    assert h.snapshot(root) == expected
    assert Journal(root).pending is None
    assert "nothing to do" in cli("migrate", root, "--apply").stderr


def test_destination_that_appears_leaves_the_group_pending(tmp_path: Path, cli, monkeypatch) -> None:
    """Class: a step that could not run was journaled as skipped and the session called complete."""
    expected = _expected(tmp_path, lambda r: (h.run_2024_03_04_lora(r / "run"), r)[1])
    root = tmp_path / "root"
    h.run_2024_03_04_lora(root / "run")
    intruder = root / "run" / "final" / "model_config.yaml"
    real_plan = ops._fresh_plan

    def plan_then_write(root_: Path, jobs: int, options: ops.MigrateOptions) -> ops.Plan:
        result = real_plan(root_, jobs, options)
        intruder.write_text("name: someone-else\n")
        return result

    monkeypatch.setattr(ops, "_fresh_plan", plan_then_write)
    res = cli("migrate", root, "--apply", "--json")
    monkeypatch.undo()
    assert res.code == 7, res.stderr
    doc = json.loads(res.stdout)
    assert any(m["dst"] == "run/final/model_config.yaml" for m in doc["missing"]), doc["missing"]
    assert "run/final/model_config.yaml" in res.stderr
    # the whole final/ group was left untouched (decided before its first step)
    assert (root / "run/final/lit_model.pth").is_file() and not (root / "run/final/lit_model.pth.lora").exists()
    intruder.unlink()
    res = cli("migrate", root, "--apply")
    assert res.code == 0, res.stderr
    assert h.snapshot(root) == expected


@pytest.fixture
def small_fs(tmp_path: Path):
    """A real 2 MiB tmpfs (needs root; skipped where mounting is not allowed)."""
    mnt = tmp_path / "fs"
    mnt.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _fill(fs: Path, leave: int) -> Path:
    filler = fs / "filler"
    with open(filler, "wb", buffering=0) as fh:
        try:
            while True:
                fh.write(b"\0" * 4096)
        except OSError as exc:
            assert exc.errno == errno.ENOSPC
    size = os.path.getsize(filler)
    os.truncate(filler, max(0, size - leave))
    return filler


def test_real_full_disk_stops_and_resumes_after_space_is_freed(tmp_path: Path, cli, small_fs: Path) -> None:
    """Class: ENOSPC journaled as a skip. On a real full tmpfs, at many fill levels."""
    expected = _expected(tmp_path)
    stopped = 0
    for pages in range(0, 24, 2):
        root = h.small_tree(small_fs / f"root-{pages}")
        filler = _fill(small_fs, pages * 4096)
        res = cli("migrate", root, "--apply", "--json")
        doc = json.loads(res.stdout)  # one document, success or not
        if res.code == 0:
            filler.unlink()
            assert h.snapshot(root) == expected, pages
            shutil.rmtree(root)
            continue
        assert res.code == 9, (pages, res.code, res.stderr)
        assert doc["error"]["exit_code"] == 9 and "No space left" in doc["error"]["message"]
        stopped += 1
        filler.unlink()
        res = cli("migrate", root, "--apply")
        assert res.code == 0, (pages, res.stderr)
        assert h.snapshot(root) == expected, pages
        assert "nothing to do" in cli("migrate", root, "--apply").stderr
        shutil.rmtree(root)
    assert stopped >= 2


def test_real_read_only_directory_stops_and_resumes(tmp_path: Path, cli) -> None:
    """Class: EROFS journaled as a skip. One run directory bind-mounted read-only (needs root)."""
    expected = _expected(tmp_path)
    root = h.small_tree(tmp_path / "root")
    ro = root / "2024-03"
    proc = subprocess.run(["mount", "--bind", "-o", "ro", str(ro), str(ro)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.decode().strip()}")
    try:
        res = cli("migrate", root, "--apply", "--json")
    finally:
        subprocess.run(["umount", str(ro)], check=True)
    assert res.code == 9, res.stderr
    assert "Read-only file system" in json.loads(res.stdout)["error"]["message"]
    assert (root / "2023-06/final/lit_model.pth.lora").is_file()  # the writable run was done
    assert Journal(root).pending is not None
    res = cli("migrate", root, "--apply")
    assert res.code == 0, res.stderr
    assert h.snapshot(root) == expected


# --------------------------------------------------------------------------- 4. undo: content, all or nothing


def test_undo_on_a_copied_tree_restores_it(tmp_path: Path, cli) -> None:
    """Class: undo trusted inodes. ``cp -r`` of a migrated tree (new inodes, new mtimes) undoes completely."""
    tree = h.build_tree(tmp_path / "runs", tmp_path / "outside")
    before = h.snapshot(tree)
    assert cli("migrate", tree, "--apply").code == 0
    copy = tmp_path / "copy"
    subprocess.run(["cp", "-r", str(tree), str(copy)], check=True)
    res = cli("migrate", copy, "--undo")
    assert res.code == 0, res.stderr
    assert h.snapshot(copy) == before
    assert not (copy / JOURNAL_NAME).exists()


def test_undo_is_all_or_nothing_per_checkpoint_folder(tmp_path: Path, cli) -> None:
    """Class: half-undone folders that strand the tree. A changed weights file keeps its whole folder migrated."""
    tree = h.build_tree(tmp_path / "runs", tmp_path / "outside")
    before = h.snapshot(tree)
    assert cli("migrate", tree, "--apply").code == 0
    migrated = h.snapshot(tree)
    weights = tree / "2023-06-dolly-lora/final/lit_model.pth.lora"
    with open(weights, "ab") as fh:
        fh.write(b"!")  # someone kept training into it
    res = cli("migrate", tree, "--undo", "--json")
    assert res.code == 7, res.stderr
    doc = json.loads(res.stdout)
    assert doc["error"]["exit_code"] == 7
    assert "2023-06-dolly-lora/final/lit_model.pth.lora" in res.stderr
    after = h.snapshot(tree)
    folder = "2023-06-dolly-lora/final/"
    for rel, digest in migrated.items():
        if rel.startswith(folder) and not rel.endswith(".lora"):
            assert after[rel] == digest, rel  # nothing of the folder was undone
    assert "2023-06-dolly-lora/lit_model_lora_finetuned.pth" not in after
    # every other folder was restored
    for rel in ("2023-07-adapter/lit_model_adapter_finetuned.pth", "2023-06-dolly-lora/iter-000100-ckpt.pth"):
        assert after[rel] == before[rel]
    # not stranded: --undo can be rerun (still refuses this folder), --apply works again
    assert cli("migrate", tree, "--undo").code == 7
    res = cli("migrate", tree, "--apply")
    assert res.code == 0, res.stderr
    assert (tree / "2023-07-adapter/final/lit_model.pth.adapter").is_file()
    # once the weights are as they were, undo restores everything
    with open(weights, "r+b") as fh:
        fh.truncate(os.path.getsize(weights) - 1)
    res = cli("migrate", tree, "--undo")
    assert res.code == 0, res.stderr
    assert h.snapshot(tree) == before


# --------------------------------------------------------------------------- 5. temp files found on disk


def test_temp_cleanup_removes_only_regular_files(tmp_path: Path) -> None:
    """Already correct before the fix: a temp-named symlink or directory is never removed or followed."""
    root = h.small_tree(tmp_path / "root")
    outside = tmp_path / "outside"
    outside.mkdir()
    precious = outside / "precious"
    precious.write_text("keep")
    _killed_after_plan(root)
    (root / "2023-06/final").mkdir()
    os.symlink(precious, root / "2023-06/final/.ckpt-tool-tmp-link")
    (root / "2023-06/final/.ckpt-tool-tmp-dir").mkdir()
    (root / "2023-06/final/.ckpt-tool-tmp-dir/inner").write_text("x")
    (root / "2023-06/final/.ckpt-tool-tmp-stale").write_text("torn")
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 0, res.stderr
    assert precious.read_text() == "keep"
    assert os.path.islink(root / "2023-06/final/.ckpt-tool-tmp-link")
    assert (root / "2023-06/final/.ckpt-tool-tmp-dir/inner").is_file()
    assert not (root / "2023-06/final/.ckpt-tool-tmp-stale").exists()


def test_temp_cleanup_never_enters_a_symlinked_directory(tmp_path: Path) -> None:
    """Class: temp cleanup trusted the tree. An owned folder swapped for a symlink: files behind it are kept."""
    root = h.small_tree(tmp_path / "root")
    outside = tmp_path / "outside"
    (outside / "final").mkdir(parents=True)
    victim = outside / "final" / ".ckpt-tool-tmp-victim"
    victim.write_text("not yours")
    _killed_after_plan(root)
    os.symlink(outside / "final", root / "2023-06/final")
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 7, res.stderr
    assert victim.read_text() == "not yours"
    assert sorted(p.name for p in (outside / "final").iterdir()) == [victim.name]


# --------------------------------------------------------------------------- 6. output


def test_json_plan_with_conflicts_is_one_document(tmp_path: Path, cli) -> None:
    """Class: two JSON documents on stdout."""
    root = tmp_path / "root"
    h.run_2023_06_lora(root / "run")
    h.save(root / "run" / "final" / "lit_model.pth.lora", {"model": h.lora_sd(seed=99)})
    for args in ((), ("--apply",)):
        res = cli("migrate", root, "--json", *args)
        assert res.code == 7
        doc = json.loads(res.stdout)
        assert doc["conflicts"] and doc["error"]["exit_code"] == 7
        assert "{" not in res.stderr


@pytest.mark.parametrize("case", ["no journal", "damaged journal", "missing root", "apply and undo"])
def test_json_failure_paths_print_one_document(tmp_path: Path, cli, case: str) -> None:
    root = h.small_tree(tmp_path / "root")
    args: tuple[str, ...] = ("--undo",)
    if case == "damaged journal":
        (root / JOURNAL_NAME).write_text('{"type": "plan"}\n{"type": "done"}\n')
    elif case == "missing root":
        root, args = tmp_path / "nope", ()
    elif case == "apply and undo":
        args = ("--apply", "--undo")
    res = cli("migrate", root, "--json", *args)
    assert res.code in (2, 3, 4), (res.code, res.stderr)
    doc = json.loads(res.stdout)
    assert doc["error"]["exit_code"] == res.code and doc["error"]["message"]
    assert "{" not in res.stderr


def test_human_plan_fits_80_columns(tmp_path: Path, cli, monkeypatch) -> None:
    """Class: the reason column wrapped every row. The demo's plan at COLUMNS=80; --verbose keeps full reasons."""
    from ckpt_tool.demo import build_workspace

    runs = build_workspace(tmp_path / "demo")["runs"]
    monkeypatch.setenv("COLUMNS", "80")
    full = json.loads(cli("migrate", runs, "--json").stdout)
    reasons = [a["reason"] for a in full["actions"] if a["reason"] and a["action"] != "mkdir"]
    assert max(len(r) for r in reasons) > 120  # the demo has long reasons
    for extra in ((), ("--verbose",)):
        res = cli("migrate", runs, *extra)
        assert res.code == 0, res.stderr
        lines = res.stdout.splitlines()
        assert lines and max(len(line) for line in lines) <= 80, max(lines, key=len)
    # --verbose: every reason is printed in full, folded into its column
    header, *body = res.stdout.splitlines()
    column = "".join("".join(line[header.index("reason") :].split()) for line in body[1:])
    for reason in reasons:
        assert "".join(reason.split()) in column, reason
    res = cli("migrate", runs, "--apply")
    assert res.code == 0
    assert max(len(line) for line in res.stdout.splitlines()) <= 80


def test_read_only_root_is_an_environment_failure(tmp_path: Path, cli) -> None:
    """Class: the machine refused → exit 9 (was: exit 7 "cannot create the lock file"). Needs root for the mount."""
    root = h.small_tree(tmp_path / "root")
    before = h.snapshot(root)
    proc = subprocess.run(["mount", "--bind", "-o", "ro", str(root), str(root)], capture_output=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.decode().strip()}")
    try:
        res = cli("migrate", root, "--apply", "--json")
    finally:
        subprocess.run(["umount", str(root)], check=True)
    assert res.code == 9, res.stderr
    assert "Read-only file system" in json.loads(res.stdout)["error"]["message"]
    assert h.snapshot(root) == before and not (root / JOURNAL_NAME).exists()


def _upgrade_tree(root: Path) -> Path:
    h.save(root / "2023-09" / "lit_model_finetuned.pth", {"model": h.full_sd(seed=9)})
    h.lit_config(root / "2023-09")
    return root


@pytest.mark.parametrize("disk_full", [True, False])
def test_converter_failure_on_a_full_disk_is_an_environment_failure(
    tmp_path: Path, cli, monkeypatch, disk_full: bool
) -> None:
    """torch's zip writer reports a full disk as RuntimeError: exit 9 and resumable, not an internal error."""
    import ckpt_tool_lit.migrate as lit_migrate

    expected = _expected(tmp_path, lambda r: (_upgrade_tree(r), ops.apply(r, options=ops.MigrateOptions(upgrade_attn=True)), r)[2])
    root = _upgrade_tree(tmp_path / "root")

    def failing(src, out, params):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . PytorchStreamWriter failed writing file")

    class Full:
        f_bavail, f_frsize = 0, 4096

    monkeypatch.setattr(lit_migrate, "upgrade_attn_file", failing)
    if disk_full:
        monkeypatch.setattr(os, "fstatvfs", lambda fd: Full())
    res = cli("migrate", root, "--apply", "--upgrade-attn", "--json")
    monkeypatch.undo()
    assert res.code == (9 if disk_full else 6), res.stderr
    assert json.loads(res.stdout)["error"]["exit_code"] == res.code
    assert "internal error" not in res.stderr
    assert Journal(root).pending is not None
    assert not list(root.rglob(".ckpt-tool-tmp-*"))
    if disk_full:
        assert cli("migrate", root, "--apply", "--upgrade-attn").code == 0
        assert h.snapshot(root) == expected
    else:  # a file its converter refuses: --undo restores the tree
        assert cli("migrate", root, "--undo").code == 0
        assert not (root / "2023-09/final").exists()


def test_real_full_disk_during_a_conversion(tmp_path: Path, cli, small_fs: Path) -> None:
    """--upgrade-attn on a real full tmpfs: torch's writer fails, the run stops resumable (exit 9)."""
    upgrade = ops.MigrateOptions(upgrade_attn=True)
    expected = _expected(tmp_path, lambda r: (_upgrade_tree(r), ops.apply(r, options=upgrade), r)[2])
    for pages in (1, 3):
        root = _upgrade_tree(small_fs / f"root-{pages}")
        filler = _fill(small_fs, pages * 4096)
        res = cli("migrate", root, "--apply", "--upgrade-attn", "--json")
        assert res.code == 9, (pages, res.code, res.stderr)
        assert "internal error" not in res.stderr
        filler.unlink()
        assert cli("migrate", root, "--apply", "--upgrade-attn").code == 0
        assert h.snapshot(root) == expected, pages
        shutil.rmtree(root)
