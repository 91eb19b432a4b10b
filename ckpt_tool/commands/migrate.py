"""``ckpt-tool migrate``: plan (default), ``--apply``, ``--undo``.

Output contract: with ``--json`` every run prints exactly one JSON document on
stdout — failures included (``"error": {"message", "hint", "exit_code"}``,
``null`` on success) — and stderr carries only messages. Without ``--json``
the table fits the terminal (``shutil.get_terminal_size``): paths wrap, long
reasons are shortened with "…" (``--verbose`` wraps them in full; ``--json``
always has the full text).
"""

from __future__ import annotations

import os
import re
import shutil
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ckpt_tool import render
from ckpt_tool.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, CkptError, UsageError, error_doc, from_os_error

if TYPE_CHECKING:  # the migrate machinery loads when the command runs, not for --help or inspect
    from ckpt_tool.ops import migrate as ops

_ARROW = " \u2192 "
_SEP = 2  # tabulate "simple": two spaces between columns
_MIN_WIDTH = {"run dir": 12, "from \u2192 to": 24, "reason": 20}


def _short(path: str | None, run: str) -> str:
    if not path:
        return ""
    if run not in (".", "") and path.startswith(run + os.sep):
        return path[len(run) + 1 :]
    return path


def _rows(steps: list[Any], left: list[dict[str, str]], status: dict[int, str] | None = None) -> list[list[str]]:
    from ckpt_tool.ops import migrate as ops

    rows = []
    for s in steps:
        if s.op == ops.MKDIR:
            continue  # implied by the moves into the folder
        run = s.run or "."
        src, dst = _short(s.src, run), _short(s.dst, run)
        what = f"{src}{_ARROW}{dst}" if src and dst else (dst or src)
        row = [run, s.op, what, s.reason]
        if status is not None:
            row.insert(2, status.get(s.i, ""))
        rows.append(row)
    for item in left:
        row = [item["run"], "leave", _short(item["path"], item["run"]) or item["path"], item["reason"]]
        if status is not None:
            row.insert(2, "")
        rows.append(row)
    return rows


def _wrap_path(text: str, width: int) -> list[str]:
    """Fold a path (or "a → b") at "/" and spaces; a name longer than the column is cut where it must be."""
    lines: list[str] = []
    line = ""
    for piece in re.split(r"(?<=[/ ])", text):
        while len(piece) > width:
            if line:
                lines.append(line.rstrip())
                line = ""
            lines.append(piece[:width])
            piece = piece[width:]
        if len(line) + len(piece.rstrip()) > width:
            lines.append(line.rstrip())
            line = piece.lstrip()
        else:
            line += piece
    if line.strip():
        lines.append(line.rstrip())
    return lines or [""]


def _fit(rows: list[list[str]], headers: list[str], width: int, verbose: bool) -> str:
    """The table, at most ``width`` columns wide: paths fold, reasons are shortened (or wrapped, ``verbose``).

    tabulate pads every column to at least its header plus two; the widths
    here include that, so the sum is what is printed.
    """
    natural = [
        max([len(h) + 2] + [len(line) for r in rows for line in str(r[c]).split("\n")]) for c, h in enumerate(headers)
    ]
    widths = list(natural)
    flexible = [c for c, h in enumerate(headers) if h in _MIN_WIDTH]
    reason = headers.index("reason") if "reason" in headers else -1
    budget = width - _SEP * (len(headers) - 1)
    while sum(widths) > budget:
        shrinkable = [c for c in flexible if widths[c] > _MIN_WIDTH[headers[c]]]
        if not shrinkable:
            break  # a very narrow terminal: overflow rather than lose text
        # a shortened reason loses nothing (--json and --verbose have it): it gives way first
        c = reason if reason in shrinkable and not verbose else max(shrinkable, key=lambda k: widths[k])
        widths[c] -= 1
    out = []
    for r in rows:
        cells = []
        for c, cell in enumerate(r):
            text, w = str(cell), widths[c]
            if len(text) > w:
                if c != reason:
                    text = "\n".join(_wrap_path(text, w))
                elif verbose:
                    text = "\n".join(textwrap.wrap(text, w, break_on_hyphens=False))
                else:
                    text = text[: w - 1].rstrip() + "\u2026"
            cells.append(text)
        out.append(cells)
    return render.table(out, headers)


def _width() -> int:
    return shutil.get_terminal_size((80, 24)).columns


def _counts(steps: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in steps:
        counts[s.op] = counts.get(s.op, 0) + 1
    return counts


def _json_steps(steps: list[Any], status: dict[int, str] | None = None) -> list[dict[str, Any]]:
    """The ``actions`` of the JSON document: every step with its state ("pending" until it is done)."""
    status = status or {}
    return [
        {"run": s.run, "action": s.op, "from": s.src, "to": s.dst, "reason": s.reason, "status": status.get(s.i) or "pending"}
        for s in steps
    ]


def _blank_doc(root: Path, mode: str) -> dict[str, Any]:
    """The one shape of migrate's JSON document, for plan, --apply and --undo alike (filled in as the run goes)."""
    return {
        "root": str(root),
        "mode": mode,
        "applied": False,
        "resuming": False,
        "actions": [],
        "left": [],
        "conflicts": [],
        "skipped": [],
        "missing": [],
        "kept": [],
        "restored": 0,
        "counts": {},
        "message": "",
        "error": None,
    }


def register(app: typer.Typer) -> None:
    @app.command("migrate", no_args_is_help=True)
    def migrate_cmd(
        root: Annotated[
            Path, typer.Argument(metavar="ROOT", help="Directory holding the runs to migrate (searched recursively).")
        ],
        apply_: Annotated[
            bool, typer.Option("--apply", help="Execute the plan (default: only print it).")
        ] = False,
        undo: Annotated[
            bool,
            typer.Option("--undo", help="Restore the tree as it was before migrating (uses the journal)."),
        ] = False,
        jobs: Annotated[
            int, typer.Option("--jobs", "-j", min=0, help="Processes for planning (0 = one per CPU).")
        ] = 0,
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")] = False,
        verbose: Annotated[
            bool, typer.Option("--verbose", "-v", help="Print every reason in full (wrapped to the terminal).")
        ] = False,
        upgrade_attn: Annotated[
            bool,
            typer.Option(
                "--upgrade-attn",
                help="Also rewrite the legacy fused attention (attn.attn -> attn.qkv, before LitGPT 0.5.5) of full and "
                "adapter-v2 weights into new files; the originals are kept unchanged.",
            ),
        ] = False,
    ) -> None:
        """Move legacy LitGPT run directories (2023 – March 2024 names, lit_config.json) into today's layout.

        Without --apply nothing changes. With --apply every step is journaled in ROOT first, so an
        interrupted run resumes when started again, and --undo restores the original tree.
        """
        mode = "undo" if undo else "apply" if apply_ else "plan"
        doc = _blank_doc(root, mode)
        error: BaseException | None = None
        try:
            _run(root, mode, apply_ and undo, jobs, upgrade_attn, json_out, verbose, doc)
        except CkptError as exc:
            error = exc
            doc["error"] = error_doc(exc)
        except OSError as exc:  # the machine refused outside a step: same words as everywhere
            error = from_os_error(exc)
            doc["error"] = error_doc(error)
        except KeyboardInterrupt as exc:
            error = exc
            doc["error"] = {"message": "interrupted", "hint": "run the command again", "exit_code": EXIT_INTERRUPTED}
        except Exception as exc:  # a bug: cli.main reports it; the JSON reader still gets one document
            error = exc
            doc["error"] = {"message": f"internal error ({type(exc).__name__}: {exc})", "hint": None, "exit_code": EXIT_INTERNAL}
        if json_out:
            render.emit_json(doc)
        if error is not None:
            raise error


def _run(
    root: Path, mode: str, both: bool, jobs: int, upgrade_attn: bool, json_out: bool, verbose: bool, doc: dict[str, Any]
) -> None:
    """Do the work and fill ``doc`` (the JSON document), printing the human output unless ``json_out``."""
    from ckpt_tool.ops import migrate as ops

    if both:
        raise UsageError("--apply and --undo cannot be combined", "choose one")
    n_jobs = jobs or (os.cpu_count() or 1)
    options = ops.MigrateOptions(upgrade_attn=upgrade_attn)
    try:
        if mode == "undo":
            outcome = ops.undo(root)
            _render_outcome(outcome, json_out, verbose, mode, doc)
        elif mode == "apply":
            outcome = ops.apply(root, jobs=n_jobs, options=options)
            _render_outcome(outcome, json_out, verbose, mode, doc)
        else:
            plan = ops.plan(root, jobs=n_jobs, options=options)
            _render_plan(plan, json_out, verbose, doc)
            if plan.conflicts:
                raise ops.MigrateConflict(plan.conflicts, plan)
    except ops.MigrateConflict as exc:
        if mode != "plan":  # the plan printer already showed them
            doc.update(_plan_doc(exc.plan, None))
            if not json_out:
                render.message("conflicts (nothing was changed):")
                for c in exc.conflicts:
                    render.message(f"  - {c}")
        raise
    except ops.MigrateIncomplete as exc:
        _render_outcome(exc.outcome, json_out, verbose, mode, doc, failed=True)
        raise


def _plan_doc(plan: ops.Plan, status: dict[int, str] | None) -> dict[str, Any]:
    return {
        "resuming": plan.resuming,
        "actions": _json_steps(plan.steps, status),
        "left": plan.left,
        "conflicts": plan.conflicts,
        "counts": _counts(plan.steps),
    }


def _render_plan(plan: ops.Plan, json_out: bool, verbose: bool, doc: dict[str, Any]) -> None:
    from ckpt_tool.ops import migrate as ops

    status = ops.step_states(plan) if plan.resuming else None
    doc.update(_plan_doc(plan, status))
    headers = ["run dir", "action", "from \u2192 to", "reason"]
    if status is not None:
        headers.insert(2, "state")
    rows = _rows(plan.steps, plan.left, status)
    if rows and not json_out:
        typer.echo(_fit(rows, headers, _width(), verbose))
    if plan.resuming:
        done = sum(1 for v in (status or {}).values() if v == "done")
        render.message(
            f"an earlier --apply was interrupted ({done} of {len(plan.steps)} steps done); --apply finishes it"
        )
    if plan.conflicts:
        render.message(f"{len(plan.conflicts)} conflict(s); --apply would refuse to start:")
        for c in plan.conflicts:
            render.message(f"  - {c}")
    elif not plan.steps:
        render.message("nothing to do: the tree is already in today's layout")
    elif not plan.resuming:
        moves = sum(1 for s in plan.steps if s.op == ops.MOVE)
        render.message(
            f"plan: {len(plan.steps)} steps ({moves} renames); nothing changed — run with --apply to execute"
        )


def _render_outcome(
    outcome: ops.Outcome, json_out: bool, verbose: bool, mode: str, doc: dict[str, Any], failed: bool = False
) -> None:
    done = set(outcome.done)
    status = {s.i: ("done" if s.i in done else "") for s in outcome.plan.steps}
    for sk in outcome.skipped:
        status[sk["i"]] = "skipped"
    if mode == "apply":
        for m in outcome.missing:
            status[m["i"]] = "pending"
    doc.update(
        {
            "applied": mode == "apply" and not outcome.missing,
            "resuming": outcome.plan.resuming,
            "actions": _json_steps(outcome.plan.steps, status) if mode == "apply" else [],
            "left": outcome.plan.left,
            "skipped": outcome.skipped,
            "missing": outcome.missing,
            "kept": outcome.kept,
            "restored": len(outcome.done) if mode == "undo" else 0,
            "counts": _counts(outcome.plan.steps),
            "message": outcome.message,
        }
    )
    if mode == "apply" and not json_out:
        rows = _rows(outcome.plan.steps, outcome.plan.left, status)
        headers = ["run dir", "action", "status", "from \u2192 to", "reason"]
        if not verbose:  # the plan showed the reasons; after applying, the status is the news
            rows, headers = [r[:-1] for r in rows], headers[:-1]
        if rows:
            typer.echo(_fit(rows, headers, _width(), verbose))
    for sk in outcome.skipped:
        render.message(f"skipped: {sk.get('src') or sk.get('dst')}: {sk['why']}")
    if failed:
        return  # the error line says what is missing and what to do
    if outcome.message:
        render.message(outcome.message)
    elif mode == "apply":
        render.message(f"applied {len(done)} steps; --undo restores the previous tree")
