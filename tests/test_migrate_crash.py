"""``kill -9`` at every mutating step of ``migrate --apply`` / ``--undo``, then rerun: same tree, nothing lost.

``CKPT_TOOL_MIGRATE_CRASH_AFTER=N`` makes the CLI SIGKILL itself right after
its Nth mutation (a journal record, a rename, a mkdir, a published file, and
the moment between writing a temp file and publishing it). An uninterrupted
run in this process counts the crash points (the journal's internal counter,
not part of any output); every one of them is tried, and a kill one past the
last must never fire: that run finishes and leaves the expected tree.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import migrate_helpers as h
import pytest
from cli_helpers import run_subprocess

from ckpt_tool.ops import journal
from ckpt_tool.ops import migrate as ops
from ckpt_tool.ops.journal import ENV_CRASH, JOURNAL_NAME, Journal

pytestmark = pytest.mark.slow


small_tree = h.small_tree  # two runs covering every kind of step: rename, mkdir, copy, write, rmdir


def _apply(root: Path, crash: int | None = None) -> tuple[int, str, str]:
    env = {ENV_CRASH: str(crash)} if crash else {ENV_CRASH: ""}
    res = run_subprocess("migrate", root, "--apply", "--json", env=env)
    return res.code, res.stdout, res.stderr


def _undo(root: Path, crash: int | None = None) -> tuple[int, str, str]:
    env = {ENV_CRASH: str(crash)} if crash else {ENV_CRASH: ""}
    res = run_subprocess("migrate", root, "--undo", "--json", env=env)
    return res.code, res.stdout, res.stderr


def _crash_points(run: Callable[[], object]) -> int:
    """How many mutations ``run`` makes (each one a point where the crash hook can kill the CLI)."""
    before = journal.mutation_count()
    try:
        run()
    except ops.MigrateIncomplete:
        pass  # an undo that keeps a folder still mutates up to its end
    return journal.mutation_count() - before


def test_kill_at_every_step_of_apply_converges(tmp_path: Path) -> None:
    clean = small_tree(tmp_path / "clean")
    original = h.snapshot(clean)
    total = _crash_points(lambda: ops.apply(clean))
    expected = h.snapshot(clean)
    assert total >= 15 and expected != original
    past = small_tree(tmp_path / "past-the-last")
    code, _, err = _apply(past, crash=total + 1)  # no crash point is left out: this one is never reached
    assert code == 0 and h.snapshot(past) == expected, err

    def one(n: int) -> None:
        root = small_tree(tmp_path / f"crash-{n}")
        code, _, err = _apply(root, crash=n)
        assert code == -signal.SIGKILL, (n, code, err)
        if n % 3 == 0:
            # an interrupted run can also be undone straight away
            code, _, err = _undo(root)
            assert code == 0, (n, err)
            assert h.snapshot(root) == original, n
            assert not (root / JOURNAL_NAME).exists()
            return
        code, _, err = _apply(root)
        assert code == 0, (n, err)
        assert h.snapshot(root) == expected, n
        assert Journal(root).pending is None
        code, _, _ = _apply(root)  # and a further --apply is a no-op
        assert code == 0 and h.snapshot(root) == expected

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(1, total + 1)))


def test_kill_at_every_step_of_undo_converges(tmp_path: Path) -> None:
    clean = small_tree(tmp_path / "clean")
    original = h.snapshot(clean)
    ops.apply(clean)
    total = _crash_points(lambda: ops.undo(clean))
    assert h.snapshot(clean) == original and total >= 10
    past = small_tree(tmp_path / "past-the-last")
    ops.apply(past)
    code, _, err = _undo(past, crash=total + 1)
    assert code == 0 and h.snapshot(past) == original, err

    def one(n: int) -> None:
        root = small_tree(tmp_path / f"undo-{n}")
        ops.apply(root)
        code, _, err = _undo(root, crash=n)
        assert code == -signal.SIGKILL, (n, code, err)
        code, _, err = _apply(root)
        assert code != 0 and "undo" in err  # an interrupted undo must be finished, not re-applied over
        code, _, err = _undo(root)
        assert code == 0, (n, err)
        assert h.snapshot(root) == original, n
        assert not (root / JOURNAL_NAME).exists()

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(1, total)))  # the last mutation removes the journal: nothing left to resume


def test_torn_journal_record_is_ignored(tmp_path: Path) -> None:
    root = small_tree(tmp_path / "root")
    plan = ops.plan(root)
    Journal(root).start(plan.steps)
    with open(root / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"type": "done", "sess')  # the crash hit mid-append
    outcome = ops.apply(root)
    assert not outcome.skipped
    expected = small_tree(tmp_path / "ref")
    ops.apply(expected)
    assert h.snapshot(root) == h.snapshot(expected)


def test_kill_at_every_step_of_an_upgrade_attn_apply(tmp_path: Path) -> None:
    """The opt-in conversion writes a new file: a kill before, during or after publishing it converges too."""

    def tree(root: Path) -> Path:
        run = root / "2023-09"
        h.save(run / "lit_model_finetuned.pth", {"model": h.full_sd(seed=9)})
        h.lit_config(run)
        return root

    clean = tree(tmp_path / "clean")
    original = h.snapshot(clean)
    total = _crash_points(lambda: ops.apply(clean, options=ops.MigrateOptions(upgrade_attn=True)))
    expected = h.snapshot(clean)
    res = run_subprocess("migrate", tree(tmp_path / "past"), "--apply", "--upgrade-attn", env={ENV_CRASH: str(total + 1)})
    assert res.code == 0 and h.snapshot(tmp_path / "past") == expected, res.stderr
    assert expected["2023-09/lit_model_finetuned.pth"] == original["2023-09/lit_model_finetuned.pth"]

    def one(n: int) -> None:
        root = tree(tmp_path / f"crash-{n}")
        res = run_subprocess("migrate", root, "--apply", "--upgrade-attn", env={ENV_CRASH: str(n)})
        assert res.code == -signal.SIGKILL, (n, res.code, res.stderr)
        res = run_subprocess("migrate", root, "--apply", "--upgrade-attn", env={ENV_CRASH: ""})
        assert res.code == 0, (n, res.stderr)
        assert h.snapshot(root) == expected, n

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(1, total + 1)))


def test_kill_at_every_step_of_an_undo_that_keeps_a_folder(tmp_path: Path) -> None:
    """An undo that must keep one checkpoint folder (its weights changed) converges too, and stays rerunnable."""

    def migrated(root: Path) -> Path:
        small_tree(root)
        ops.apply(root)
        with open(root / "2023-06/final/lit_model.pth.lora", "ab") as fh:
            fh.write(b"!")  # training went on into the migrated file
        return root

    clean = migrated(tmp_path / "clean")
    total = _crash_points(lambda: ops.undo(clean))
    expected = h.snapshot(clean)
    past = migrated(tmp_path / "past")
    code, _, err = _undo(past, crash=total + 1)
    assert code == 7 and h.snapshot(past) == expected, err
    assert "2023-06/final/lit_model.pth.lora" in expected and "2024-03/iter-000100/lit_model.pth" in expected

    def one(n: int) -> None:
        root = migrated(tmp_path / f"keep-{n}")
        code, _, err = _undo(root, crash=n)
        assert code == -signal.SIGKILL, (n, code, err)
        code, _, err = _undo(root)
        assert code == 7, (n, err)
        assert h.snapshot(root) == expected, n
        code, _, err = _undo(root)  # rerunnable: same answer, nothing changes
        assert code == 7 and h.snapshot(root) == expected, (n, err)
        code, _, err = _apply(root)  # and --apply works again after it
        assert code == 0, (n, err)

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(one, range(1, total + 1)))
