"""The Typer application: built in a factory, one small module per command.

``main`` is the single place where the tool's exceptions become
``error: <what> — <what to do>`` on stderr with the documented exit code.
``import torch`` never happens at module level on this path, so ``--help``
and ``inspect`` stay fast.
"""

from __future__ import annotations

import importlib
import os
import shutil
import sys
import traceback
from typing import Annotated, Any

import typer

from ckpt_tool import __version__, render
from ckpt_tool.errors import (
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    CkptError,
    EnvironmentFailure,
    InvalidFile,
    error_doc,
    from_os_error,
)

ENV_DEBUG = "CKPT_TOOL_DEBUG"

# Command modules, each exposing ``register(app)``. Order is the order in --help.
COMMANDS = (
    "ckpt_tool.commands.inspect",
    "ckpt_tool.commands.plugins",
    "ckpt_tool.commands.merge",
    "ckpt_tool.commands.convert",
    "ckpt_tool.commands.split",
    "ckpt_tool.commands.rename",
    "ckpt_tool.commands.diff",
    "ckpt_tool.commands.migrate",
    "ckpt_tool.commands.demo",
)

_state = {"debug": False}
#: Flags that mean the same on every command and work in any position (``ckpt-tool merge X --debug``).
GLOBAL_FLAGS = {"--debug": "debug", "--quiet": "quiet", "-q": "quiet"}


def _global_flags(argv: list[str]) -> list[str]:
    """Take ``--debug`` / ``--quiet`` out of ``argv`` wherever they are (before a ``--``), and apply them."""
    rest: list[str] = []
    for i, arg in enumerate(argv):
        if arg == "--":
            rest.extend(argv[i:])
            break
        flag = GLOBAL_FLAGS.get(arg)
        if flag == "debug":
            _state["debug"] = True
        elif flag == "quiet":
            render.set_quiet(True)
        else:
            rest.append(arg)
    return rest


def _version(value: bool) -> None:
    if value:
        typer.echo(f"ckpt-tool {__version__}")
        raise typer.Exit()


def create_app() -> typer.Typer:
    app = typer.Typer(
        name="ckpt-tool",
        help="Inspect, merge, convert and migrate LLM fine-tuning checkpoints (LitGPT, PEFT, safetensors, torch).",
        no_args_is_help=True,
        add_completion=True,
        pretty_exceptions_enable=False,
        rich_markup_mode=None,
        context_settings={
            "help_option_names": ["-h", "--help"],
            "max_content_width": max(80, min(shutil.get_terminal_size().columns, 160)),
        },
    )

    @app.callback()
    def _root(
        version: Annotated[
            bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
        ] = False,
        debug: Annotated[
            bool, typer.Option("--debug", help="Show a traceback on errors (any position; or CKPT_TOOL_DEBUG=1).")
        ] = False,
        quiet: Annotated[
            bool,
            typer.Option(
                "--quiet", "-q", help="No summaries, tables or progress bars; errors and --json still print (any position)."
            ),
        ] = False,
    ) -> None:
        _state["debug"] = _state["debug"] or debug or bool(os.environ.get(ENV_DEBUG))
        if quiet:
            render.set_quiet(True)

    for name in COMMANDS:
        importlib.import_module(name).register(app)
    return app


class _StdoutClosed(Exception):
    """stdout went away (``| head``, ``| true``): not an error; raised past Click so it cannot call it one."""


class _GuardedStdout:
    """Wraps ``sys.stdout`` so a closed pipe surfaces as ``_StdoutClosed`` instead of an ``OSError``
    that Click would turn into exit code 1."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner

    def write(self, text: str) -> int:
        try:
            return self._inner.write(text)
        except BrokenPipeError:
            raise _StdoutClosed() from None

    def flush(self) -> None:
        try:
            self._inner.flush()
        except BrokenPipeError:
            raise _StdoutClosed() from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _silence_stdout() -> None:
    """Point fd 1 at /dev/null so the interpreter's final flush cannot complain about the closed pipe."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def _fail(exc: CkptError) -> None:
    if _state["debug"]:
        traceback.print_exc()
    _emit_error(error_doc(exc))
    sys.stderr.write(exc.render() + "\n")
    sys.exit(exc.exit_code)


def _emit_error(error: dict[str, Any]) -> None:
    """The error document of a failed ``--json`` run; stdout may be gone already (``| head``)."""
    try:
        render.emit_error(error)
        sys.stdout.flush()
    except (_StdoutClosed, BrokenPipeError):
        _silence_stdout()


def _wants_json(argv: list[str]) -> bool:
    return "--json" in (argv[: argv.index("--")] if "--" in argv else argv)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point: the one place where exceptions become messages and exit codes."""
    app = create_app()
    _state["debug"] = bool(os.environ.get(ENV_DEBUG))
    render.set_quiet(False)
    argv = _global_flags(list(sys.argv[1:] if argv is None else argv))
    render.expect_json(_wants_json(argv))
    saved = sys.stdout
    if not isinstance(sys.stdout, _GuardedStdout):
        sys.stdout = _GuardedStdout(sys.stdout)
    try:
        app(args=argv, prog_name="ckpt-tool")
    except CkptError as exc:
        _fail(exc)
    except _StdoutClosed:
        _silence_stdout()
        sys.exit(EXIT_OK)
    except BrokenPipeError:
        _silence_stdout()
        sys.exit(EXIT_OK)
    except SystemExit as exc:  # Click's own usage errors (exit 2) print on stderr; --json still gets its document
        if exc.code == EXIT_USAGE:
            _emit_error(
                {"message": "invalid command line (the usage message is on stderr)", "hint": "see ckpt-tool COMMAND --help", "exit_code": EXIT_USAGE}
            )
        raise
    except KeyboardInterrupt:
        _emit_error({"message": "interrupted", "hint": "run the command again", "exit_code": EXIT_INTERRUPTED})
        sys.stderr.write("error: interrupted \u2014 nothing was left half-written; run the command again\n")
        sys.exit(EXIT_INTERRUPTED)
    except OSError as exc:  # the machine refused (full disk, read-only, permissions): not a bug
        _fail(from_os_error(exc))
    except MemoryError:
        _fail(
            EnvironmentFailure(
                "out of memory", "free memory, or check the input: a hostile file can declare implausible sizes"
            )
        )
    except RecursionError:
        _fail(InvalidFile("the input nests too deeply to be read", "the file is malformed or hostile"))
    except Exception as exc:  # a bug: say so plainly, traceback only on request
        if _state["debug"]:
            traceback.print_exc()
        _emit_error({"message": f"internal error ({type(exc).__name__}: {exc})", "hint": None, "exit_code": EXIT_INTERNAL})
        sys.stderr.write(
            f"error: internal error ({type(exc).__name__}: {exc}) \u2014 this is a bug in ckpt-tool; "
            f"rerun with --debug and report the traceback\n"
        )
        sys.exit(EXIT_INTERNAL)
    finally:
        if sys.stdout is not saved and isinstance(sys.stdout, _GuardedStdout):
            try:
                sys.stdout.flush()
            except _StdoutClosed:
                _silence_stdout()
            sys.stdout = saved
