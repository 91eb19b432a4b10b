"""``ckpt-tool demo``: build a small realistic workspace, then tour the commands on a scratch copy of it.

The tour runs on a copy so that the workspace is left exactly as built: README's examples start from it
(a legacy tree still to migrate, adapters still to merge), in the order README shows them.
"""

from __future__ import annotations

import os
import shlex
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render
from ckpt_tool.errors import EXIT_DIFFER, EXIT_OK, CkptError, Refused


def _steps(ws: str) -> list[tuple[list[str], int]]:
    """The tour: (arguments, expected exit code), paths relative to the workspace's parent."""
    lit_final, lit_base = f"{ws}/out/finetune/lora/final", f"{ws}/checkpoints/demo-org/tiny-llama"
    hf, peft, runs = f"{ws}/hf/tiny-llama", f"{ws}/hf/tiny-llama-lora", f"{ws}/runs"
    return [
        (["inspect", lit_final], EXIT_OK),
        (["merge", lit_final], EXIT_OK),
        (["inspect", peft], EXIT_OK),
        (["merge", peft, "--base", hf, "--out", f"{hf}-merged"], EXIT_OK),
        (["diff", hf, f"{hf}-merged"], EXIT_DIFFER),
        (["convert", lit_base, "--to", "hf", "--out", f"{ws}/converted/tiny-llama-hf"], EXIT_OK),
        (["convert", lit_final, "--to", "peft", "--out", f"{ws}/converted/tiny-llama-lora-peft"], EXIT_OK),
        (["split", f"{ws}/combined/tiny-llama-lora", "--base-out", f"{ws}/split/tiny-llama",
          "--adapter-out", f"{ws}/split/tiny-llama-lora"], EXIT_OK),
        (["diff", f"{ws}/split/tiny-llama", lit_base], EXIT_OK),
        (["split", hf, "--max-shard-size", "100KB", "--out", f"{hf}-sharded"], EXIT_OK),
        (["rename", f"{hf}-sharded", "--strip-prefix", "model.", "--in-place"], EXIT_OK),
        (["inspect", f"{runs}/2024-03-dolly-lora/final/lit_model.pth"], EXIT_OK),
        (["migrate", runs, "--apply"], EXIT_OK),
        (["inspect", f"{runs}/2023-06-alpaca-lora/final"], EXIT_OK),
    ]


def _tour(directory: Path) -> int:
    """Run the tour in a scratch copy of ``directory`` (deleted afterwards); return the number of surprises."""
    from ckpt_tool.cli import create_app

    failures = 0
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="ckpt-tool-demo-tour-") as scratch:
        shutil.copytree(directory, Path(scratch) / directory.name, symlinks=True)
        os.chdir(scratch)  # the tour's paths read like README's: relative to the workspace's parent
        try:
            for args, expected in _steps(directory.name):
                typer.echo(f"\n$ ckpt-tool {shlex.join(args)}")
                try:
                    code = create_app()(args=args, prog_name="ckpt-tool", standalone_mode=False)
                except CkptError as exc:
                    render.message(exc.render())
                    code = exc.exit_code
                failures += (code or EXIT_OK) != expected
        finally:
            os.chdir(here)
    return failures


def register(app: typer.Typer) -> None:
    @app.command("demo")
    def demo_cmd(
        directory: Annotated[
            Path, typer.Argument(metavar="DIR", help="Where to create the workspace.")
        ] = Path("ckpt-tool-demo"),
        force: Annotated[bool, typer.Option("--force", help="Replace an existing demo workspace.")] = False,
    ) -> None:
        """Create a small realistic workspace (LitGPT, PEFT, legacy runs) and tour inspect, merge, diff, convert,
        split, rename and migrate on a scratch copy of it (the workspace is left as built, for README's examples)."""
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
        build_workspace(directory)
        failures = _tour(directory)
        typer.echo(
            f"\nThe tour ran on a scratch copy, now deleted: {directory}/ is as built. Try README's examples from here,"
            f"\ne.g. ckpt-tool inspect {directory}/runs/2024-03-dolly-lora/final/lit_model.pth"
        )
        if failures:
            raise typer.Exit(1)
