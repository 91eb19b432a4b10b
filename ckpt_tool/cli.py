"""The Typer application: built in a factory, one small module per command.

``main`` is the single place where the tool's exceptions become
``error: <what> — <what to do>`` on stderr with the documented exit code.
``import torch`` never happens at module level on this path, so ``--help``
and ``inspect`` stay fast.
"""

from __future__ import annotations

import importlib
import os
import sys
import traceback
from typing import Annotated

import typer

from ckpt_tool import __version__
from ckpt_tool.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, CkptError

ENV_DEBUG = "CKPT_TOOL_DEBUG"

# Command modules, each exposing ``register(app)``. Order is the order in --help.
COMMANDS = (
    "ckpt_tool.commands.inspect",
    "ckpt_tool.commands.plugins",
    "ckpt_tool.commands.merge",
    "ckpt_tool.commands.diff",
    "ckpt_tool.commands.migrate",
    "ckpt_tool.commands.demo",
)

_state = {"debug": False}


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ckpt-tool {__version__}")
        raise typer.Exit()


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="ckpt-tool",
        help="Inspect, merge, convert and migrate LLM fine-tuning checkpoints (LitGPT, PEFT, safetensors, torch).",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={"help_option_names": ["-h", "--help"]},
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
        ] = False,
        debug: Annotated[bool, typer.Option("--debug", help="Show a traceback on errors.")] = False,
    ) -> None:
        _state["debug"] = debug or bool(os.environ.get(ENV_DEBUG))

    for name in COMMANDS:
        importlib.import_module(name).register(app)
    return app


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    app = create_app()
    _state["debug"] = bool(os.environ.get(ENV_DEBUG))
    try:
        app(args=argv, prog_name="ckpt-tool")
    except CkptError as exc:
        if _state["debug"]:
            traceback.print_exc()
        sys.stderr.write(exc.render() + "\n")
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        sys.stderr.write("error: interrupted — nothing was left half-written; run the command again\n")
        sys.exit(EXIT_INTERRUPTED)
    except BrokenPipeError:
        # stdout closed early (`| head`): not an error worth a message.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
    except MemoryError:
        sys.stderr.write("error: out of memory — the input may be corrupt or hostile (implausible sizes)\n")
        sys.exit(EXIT_INTERNAL)
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if _state["debug"]:
            traceback.print_exc()
        sys.stderr.write(
            f"error: internal error ({type(exc).__name__}: {exc}) — this is a bug in ckpt-tool; "
            f"rerun with --debug and report the traceback\n"
        )
        sys.exit(EXIT_INTERNAL)
