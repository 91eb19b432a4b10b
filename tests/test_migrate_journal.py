"""The migrate journal's grammar and the typed steps it holds: what is accepted, what is refused, and how a torn
tail from a crash is told apart from a damaged file."""

from __future__ import annotations

import errno
import json
import os
import signal
from pathlib import Path

import migrate_helpers as h
import pytest
from cli_helpers import run_subprocess
from hypothesis import given, settings
from hypothesis import strategies as st

from ckpt_tool.errors import InvalidFile
from ckpt_tool.ops import migrate as ops
from ckpt_tool.ops.journal import ENV_CRASH, JOURNAL_NAME, Journal
from ckpt_tool.ops.migrate_steps import FileId, Step, StepError, check_rel, sha256_text

NAME = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="/\x00"), min_size=1, max_size=20
).filter(lambda n: n not in (".", "..") and not n.startswith(".ckpt-tool-"))


@given(st.lists(NAME, min_size=1, max_size=6))
def test_relative_paths_inside_root_are_accepted(parts: list[str]) -> None:
    path = "/".join(parts)
    assert check_rel(path, "p") == path


@given(
    st.lists(NAME, min_size=0, max_size=4),
    st.sampled_from(["..", ".", "", "a\x00b", "/abs"]),
    st.lists(NAME, min_size=0, max_size=4),
)
def test_paths_that_could_leave_root_are_refused(before: list[str], bad: str, after: list[str]) -> None:
    path = "/".join([*before, bad, *after])
    if bad == "/abs" and before:
        path = "/" + path  # an absolute path anywhere is refused; a mid-path "/abs" is just a name
    with pytest.raises(StepError):
        check_rel(path, "p")


HEX = st.text("0123456789abcdef", min_size=64, max_size=64)
REL = st.lists(NAME, min_size=1, max_size=4).map("/".join)


@st.composite
def steps(draw) -> Step:
    op = draw(st.sampled_from(["mkdir", "rmdir", "move", "copy", "write"]))
    i = draw(st.integers(0, 10**6))
    kw: dict = {"i": i, "op": op, "group": draw(st.integers(0, i)), "run": draw(st.one_of(st.just("."), REL))}
    kw["reason"] = draw(st.text(max_size=50))
    fp = FileId(draw(st.integers(0, 2**40)), draw(st.integers(-(2**62), 2**62)), draw(st.integers(0, 2**62)), draw(HEX))
    if op == "mkdir":
        kw["dst"] = draw(REL)
    elif op == "rmdir":
        kw["src"] = draw(REL)
    elif op == "move":
        kw.update(src=draw(REL), dst=draw(REL), fp=fp)
    elif op == "copy":
        kw.update(src=draw(REL), dst=draw(REL), fp=FileId(fp.size % 1000, fp.mtime_ns, fp.ino, fp.sample), sha256=draw(HEX))
    else:
        data = draw(st.text(max_size=200))
        kw.update(dst=draw(REL), data=data, sha256=sha256_text(data))
    return Step(**kw)


@settings(max_examples=200)
@given(steps())
def test_every_valid_step_survives_the_journal_round_trip(step: Step) -> None:
    step.validate()
    line = json.dumps({"type": "step", "session": 1, "step": step.to_json()}, separators=(",", ":"), sort_keys=True)
    assert Step.from_json(json.loads(line)["step"]) == step


def _pending(tmp_path: Path) -> Path:
    root = h.small_tree(tmp_path / "root")
    res = run_subprocess("migrate", root, "--apply", env={ENV_CRASH: "1"})
    assert res.code == -signal.SIGKILL
    return root


def test_torn_last_line_is_only_cut_by_an_apply_holding_the_lock(tmp_path: Path) -> None:
    """A crash mid-append leaves a line without its newline: a plan (read-only) leaves it, --apply cuts it."""
    root = _pending(tmp_path)
    with open(root / JOURNAL_NAME, "ab") as fh:
        fh.write(b'{"type":"done","session":1,"torn-by-a-crash')
    torn = (root / JOURNAL_NAME).read_bytes()
    assert run_subprocess("migrate", root).code == 0
    assert (root / JOURNAL_NAME).read_bytes() == torn  # the plan never writes
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 0, res.stderr
    assert b"torn-by-a-crash" not in (root / JOURNAL_NAME).read_bytes()
    assert Journal(root).pending is None


def test_torn_plan_block_authorised_nothing(tmp_path: Path) -> None:
    """A plan block cut before its 'planned' line is a crash's torn tail: dropped, and the tree was not touched."""
    root = h.small_tree(tmp_path / "root")
    before = h.snapshot(root)
    plan = ops.plan(root)
    lines = [
        json.dumps({"type": "plan", "session": 1, "steps": len(plan.steps)}),
        *[json.dumps({"type": "step", "session": 1, "step": s.to_json()}) for s in plan.steps[:3]],
    ]
    (root / JOURNAL_NAME).write_text("\n".join(lines) + "\n")
    assert Journal(root).sessions == []
    assert ops.plan(root).resuming is False
    assert h.snapshot(root) == before
    assert run_subprocess("migrate", root, "--apply").code == 0


def test_a_record_past_the_line_limit_is_refused(tmp_path: Path, monkeypatch) -> None:
    import ckpt_tool.ops.journal as journal

    root = _pending(tmp_path)
    monkeypatch.setattr(journal, "MAX_JOURNAL_LINE", 100)
    with pytest.raises(InvalidFile, match="line 2: longer than 100 bytes"):
        Journal(root)


def test_inline_plan_of_an_older_version_is_refused_clearly(tmp_path: Path) -> None:
    root = h.small_tree(tmp_path / "root")
    (root / JOURNAL_NAME).write_text(json.dumps({"type": "plan", "session": 1, "steps": [], "time": 1.0}) + "\n")
    res = run_subprocess("migrate", root, "--apply")
    assert res.code == 4 and "older ckpt-tool" in res.stderr


@pytest.mark.parametrize(
    "records,why",
    [
        ([{"type": "undo"}], "before any plan"),
        ([{"type": "done", "session": 1, "groups": [0]}], "not the last one"),
        ([{"type": "plan", "session": 2, "steps": 1}], "session 1 was expected"),
        ([{"type": "undo-end"}], "without an undo"),
        ([{"type": "step", "session": 1, "step": {}}], "outside a plan"),
    ],
)
def test_records_out_of_order_are_refused(tmp_path: Path, records: list, why: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / JOURNAL_NAME).write_text("".join(json.dumps(r) + "\n" for r in records))
    with pytest.raises(InvalidFile, match=why):
        Journal(root)


def test_a_failed_journal_append_leaves_no_half_record(tmp_path: Path, cli, monkeypatch) -> None:
    """ENOSPC in the middle of a journal record: the record is cut back, so the journal still reads."""
    import ckpt_tool.ops.journal as journal

    expected = h.small_tree(tmp_path / "reference")
    ops.apply(expected)
    root = h.small_tree(tmp_path / "root")
    real_write = os.write
    calls = [0]

    def half_write(fd: int, data) -> int:
        calls[0] += 1
        if calls[0] == 3:  # the third journal record: half of it reaches the file, then the disk is full
            real_write(fd, bytes(data[: len(data) // 2]))
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_write(fd, data)

    monkeypatch.setattr(journal.os, "write", half_write)
    res = cli("migrate", root, "--apply")
    monkeypatch.undo()
    assert res.code == 9, res.stderr
    Journal(root)  # still well-formed
    assert (root / JOURNAL_NAME).read_bytes().endswith(b"\n")
    res = cli("migrate", root, "--apply")
    assert res.code == 0, res.stderr
    assert h.snapshot(root) == h.snapshot(expected)
