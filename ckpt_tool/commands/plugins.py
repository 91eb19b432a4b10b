"""``ckpt-tool plugins``."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.plugins import list_plugins


def register(app: typer.Typer) -> None:
    @app.command("plugins")
    def plugins_cmd(
        json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    ) -> None:
        """List the loaded format plugins, where they come from and the hooks each implements."""
        records = list_plugins()
        if json_out:
            render.emit_json({"plugins": [asdict(r) for r in records]})
            return
        headers = ["name", "source", "module", "version", "hooks"]
        rows = [[r.name, r.source, r.module, r.version or "", ", ".join(r.hooks)] for r in records]
        if any(r.status != "loaded" for r in records):
            headers.append("status")
            for row, r in zip(rows, records):
                row.append(r.status)
        render.out(render.table(rows, headers))
