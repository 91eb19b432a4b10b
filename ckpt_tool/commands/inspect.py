"""``ckpt-tool inspect``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.ops.inspect import detect, filter_tensors


def register(app: typer.Typer) -> None:
    @app.command("inspect", no_args_is_help=True)
    def inspect_cmd(
        path: Annotated[Path, typer.Argument(metavar="PATH", help="A checkpoint file or directory.")],
        json_out: Annotated[bool, typer.Option("--json", help="Print one JSON object (schema in README).")] = False,
        tensors: Annotated[bool, typer.Option("--tensors", help="Also list every tensor.")] = False,
        filter_: Annotated[
            str | None, typer.Option("--filter", metavar="GLOB", help="Only tensors whose names match GLOB.")
        ] = None,
    ) -> None:
        """Say what a checkpoint is: format, kind, adapter, rank/alpha/targets, parameters, problems.

        Reads headers only: instant on any size, never imports torch.
        """
        info = filter_tensors(detect(path), filter_)
        if json_out:
            render.emit_json(info.to_json(with_tensors=tensors))
        else:
            render.out(render.render_inspect(info, with_tensors=tensors))
