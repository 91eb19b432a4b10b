"""``ckpt-tool demo``: build a small realistic workspace and run the main jobs on it."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.errors import CkptError, Refused


def _steps(ws: dict[str, Path], root: Path) -> list[list[str]]:
    merged_hf = root / "hf" / "tiny-llama-merged"
    return [
        ["inspect", str(ws["lit_final"])],
        ["merge", str(ws["lit_final"])],
        ["inspect", str(ws["lit_final"])],
        ["inspect", str(ws["peft_adapter"])],
        ["merge", str(ws["peft_adapter"]), "--base", str(ws["hf_base"]), "--out", str(merged_hf)],
        ["diff", str(ws["hf_base"]), str(merged_hf)],
        ["inspect", str(ws["runs"] / "2024-03-dolly-lora" / "final" / "lit_model.pth")],
        ["migrate", str(ws["runs"])],
        ["migrate", str(ws["runs"]), "--apply"],
        ["inspect", str(ws["runs"] / "2023-06-alpaca-lora" / "final")],
    ]


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        directory: Annotated[
            Path, typer.Argument(help="Where to create the workspace.")
        ] = Path("ckpt-tool-demo"),
        force: Annotated[bool, typer.Option("--force", help="Replace an existing demo workspace.")] = False,
    ) -> None:
        """Create a small realistic workspace (LitGPT, PEFT, legacy runs) and inspect, merge, diff and migrate it."""
        from ckpt_tool.cli import create_app
        from ckpt_tool.demo import build_workspace

        if directory.exists():
            if not force:
                raise Refused(f"{directory} already exists", "pass --force to rebuild it, or give another directory")
            if not (directory / ".ckpt-tool-demo").exists():
                raise Refused(f"{directory} exists and is not a ckpt-tool demo workspace", "choose another directory")
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        (directory / ".ckpt-tool-demo").write_text("created by ckpt-tool demo\n")
        render.message(f"building a demo workspace in {directory}/ ...")
        ws = build_workspace(directory)
        failures = 0
        for args in _steps(ws, directory):
            typer.echo(f"\n$ ckpt-tool {shlex.join(args)}")
            try:
                code = create_app()(args=args, prog_name="ckpt-tool", standalone_mode=False)
            except CkptError as exc:
                render.message(exc.render())
                code = exc.exit_code
            if code not in (0, None) and args[0] != "diff":  # diff exits non-zero when checkpoints differ
                failures += 1
        typer.echo(f"\nworkspace: {directory}/  (try: ckpt-tool inspect {directory}/runs/2024-09-current/final --tensors)")
        if failures:
            raise typer.Exit(1)
