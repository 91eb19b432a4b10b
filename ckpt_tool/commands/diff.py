"""``ckpt-tool diff``: are two checkpoints the same, tensor by tensor?"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render


def _fmt_diff(x: float | None) -> str:
    return "" if x is None else f"{x:.3g}"


def register(app: typer.Typer) -> None:
    @app.command("diff", no_args_is_help=True)
    def diff_cmd(
        a: Annotated[Path, typer.Argument(metavar="A", help="First checkpoint (file or directory, any supported format).")],
        b: Annotated[Path, typer.Argument(metavar="B", help="Second checkpoint.")],
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
        atol: Annotated[
            float | None, typer.Option("--atol", help="Treat tensors whose max |Δ| is at most X as equal.", metavar="X")
        ] = None,
        all_rows: Annotated[bool, typer.Option("--all", help="List bit-equal tensors too.")] = False,
    ) -> None:
        """Compare two checkpoints: keys only in one, shape/dtype mismatches, max |Δ| and bit-equality per tensor.

        Exit status: 0 when identical (or every difference is within --atol), 8 when they differ.
        """
        from ckpt_tool.ops.diff import compare

        result = compare(a, b, atol, progress=not render.is_quiet() and not json_out)
        if json_out:
            render.emit_json(result.to_json())
        else:
            rows = []
            for e in result.entries:
                if e.status == "bit-equal" and not all_rows:
                    continue
                dtype = render.DTYPE_NAMES.get(e.dtype_a or "", e.dtype_a or "-")
                dtype_b = render.DTYPE_NAMES.get(e.dtype_b or "", e.dtype_b or "-")
                shape_a = "×".join(map(str, e.shape_a)) if e.shape_a is not None else "-"
                shape_b = "×".join(map(str, e.shape_b)) if e.shape_b is not None else "-"
                rows.append([
                    e.name,
                    e.status,
                    dtype if dtype == dtype_b else f"{dtype} / {dtype_b}",
                    shape_a if shape_a == shape_b else f"{shape_a} / {shape_b}",
                    _fmt_diff(e.max_abs_diff),
                ])
            if rows:
                render.out(render.table(rows, ["tensor", "status", "dtype", "shape", "max |Δ|"]))
            render.out(result.summary_line())
        if result.exit_code:
            raise typer.Exit(result.exit_code)
