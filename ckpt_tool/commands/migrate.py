"""``ckpt-tool migrate``: plan (default), ``--apply``, ``--undo``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ckpt_tool import render

if TYPE_CHECKING:  # the migrate machinery loads when the command runs, not for --help or inspect
    from ckpt_tool.ops import migrate as ops

_ARROW = " \u2192 "


def _short(path: str | None, run: str) -> str:
    if not path:
        return ""
    if run not in (".", "") and path.startswith(run + os.sep):
        return path[len(run) + 1 :]
    return path


def _rows(
    steps: list[dict[str, Any]], left: list[dict[str, str]], status: dict[int, str] | None = None
) -> list[list[str]]:
    from ckpt_tool.ops import migrate as ops
    rows = []
    for s in steps:
        if s["op"] == ops.MKDIR:
            continue  # implied by the moves into the folder
        run = s.get("run") or "."
        src, dst = _short(s.get("src"), run), _short(s.get("dst"), run)
        what = f"{src}{_ARROW}{dst}" if src and dst else (dst or src)
        row = [run, s["op"], what, s.get("reason", "")]
        if status is not None:
            row.insert(2, status.get(s["i"], ""))
        rows.append(row)
    for item in left:
        row = [item["run"], "leave", _short(item["path"], item["run"]) or item["path"], item["reason"]]
        if status is not None:
            row.insert(2, "")
        rows.append(row)
    return rows


def _counts(steps: list[dict[str, Any]]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for s in steps:
        counts[s["op"]] = counts.get(s["op"], 0) + 1
    return counts


def _json_steps(steps: list[dict[str, Any]], status: dict[int, str] | None = None) -> list[dict[str, Any]]:
    out = []
    for s in steps:
        item = {
            "run": s.get("run"),
            "action": s["op"],
            "from": s.get("src"),
            "to": s.get("dst"),
            "reason": s.get("reason", ""),
        }
        if status is not None:
            item["status"] = status.get(s["i"], "")
        out.append(item)
    return out


def register(app: typer.Typer) -> None:
    @app.command("migrate", no_args_is_help=True)
    def migrate_cmd(
        root: Annotated[
            Path, typer.Argument(help="Directory holding the runs to migrate (searched recursively).")
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
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
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
        from ckpt_tool.ops import migrate as ops
        if apply_ and undo:
            raise typer.BadParameter("--apply and --undo cannot be combined")
        n_jobs = jobs or (os.cpu_count() or 1)
        options = ops.MigrateOptions(upgrade_attn=upgrade_attn)
        try:
            if undo:
                outcome = ops.undo(root)
                _render_outcome(outcome, json_out, mode="undo")
            elif apply_:
                outcome = ops.apply(root, jobs=n_jobs, options=options)
                _render_outcome(outcome, json_out, mode="apply")
            else:
                plan = ops.plan(root, jobs=n_jobs, options=options)
                _render_plan(plan, json_out)
        except ops.MigrateConflict as exc:
            if json_out:
                render.emit_json({"root": str(exc.plan.root), "conflicts": exc.conflicts, "applied": False})
            else:
                render.message("conflicts (nothing was changed):")
                for c in exc.conflicts:
                    render.message(f"  - {c}")
            raise


def _render_plan(plan: ops.Plan, json_out: bool) -> None:
    from ckpt_tool.ops import migrate as ops
    status = None
    if plan.resuming:
        status = {s["i"]: ops.step_state(plan.root, s) for s in plan.steps}
    if json_out:
        render.emit_json(
            {
                "root": str(plan.root),
                "applied": False,
                "resuming": plan.resuming,
                "actions": _json_steps(plan.steps, status),
                "left": plan.left,
                "conflicts": plan.conflicts,
                "counts": _counts(plan.steps),
            }
        )
    else:
        headers = ["run dir", "action", "from \u2192 to", "reason"]
        if status is not None:
            headers.insert(2, "state")
        rows = _rows(plan.steps, plan.left, status)
        if rows:
            typer.echo(render.table(rows, headers))
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
        moves = sum(1 for s in plan.steps if s["op"] == ops.MOVE)
        render.message(
            f"plan: {len(plan.steps)} steps ({moves} renames); nothing changed — run with --apply to execute"
        )
    if plan.conflicts:
        raise ops.MigrateConflict(plan.conflicts, plan)


def _render_outcome(outcome: ops.Outcome, json_out: bool, mode: str) -> None:
    from ckpt_tool.ops.journal import mutation_count
    done = set(outcome.done)
    status = {s["i"]: ("done" if s["i"] in done else "") for s in outcome.plan.steps}
    for sk in outcome.skipped:
        status[sk["i"]] = "skipped"
    if json_out:
        render.emit_json(
            {
                "root": str(outcome.plan.root),
                "mode": mode,
                "applied": mode == "apply",
                "actions": _json_steps(outcome.plan.steps, status) if mode == "apply" else [],
                "left": outcome.plan.left,
                "skipped": outcome.skipped,
                "restored": len(done) if mode == "undo" else None,
                "counts": _counts(outcome.plan.steps),
                "message": outcome.message,
                "mutations": mutation_count(),
            }
        )
    else:
        if mode == "apply":
            rows = _rows(outcome.plan.steps, outcome.plan.left, status)
            if rows:
                typer.echo(render.table(rows, ["run dir", "action", "status", "from \u2192 to", "reason"]))
    for sk in outcome.skipped:
        render.message(f"skipped: {sk.get('src') or sk.get('dst')}: {sk['why']}")
    if outcome.message:
        render.message(outcome.message)
    elif mode == "apply":
        render.message(f"applied {len(done)} steps; --undo restores the previous tree")
