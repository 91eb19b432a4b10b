"""README's ```console examples, run in order on a fresh demo workspace, must print what README shows.

The quickstart (``ckpt-tool demo``) leaves the reader in the directory holding ``ckpt-tool-demo/``; every
``$ ckpt-tool ...`` line of every console block runs from there, in README order, in-process (one torch
import for all of them), stdout and stderr interleaved as a terminal shows them, 100 columns wide. A line
ending in ``# exit N`` must exit with N, every other one with 0. Lines that are not ``$ ckpt-tool`` commands
are not allowed in console blocks: everything shown there is checked.

What may differ between README and a run, and nothing else (``normalise``):
  - timings (``0.02 s``, ``(0.29s)``): digits only, the unit and its spacing must match;
  - the absolute path of the reader's directory, shown as ``$PWD`` in README;
  - trailing spaces.

Refresh README after a change of output (the lead, after merging branches)::

    python tests/test_readme.py --update        # or: CKPT_TOOL_UPDATE_README=1 python -m pytest tests/test_readme.py

rewrites each block's output from a real run (commands and their ``# exit N`` stay as written; a wrong exit
code still fails). Review the diff before committing it.
"""

from __future__ import annotations

import io
import os
import re
import shlex
import sys
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from dataclasses import dataclass
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
UPDATE_ENV = "CKPT_TOOL_UPDATE_README"
COLUMNS = "100"
PWD = "$PWD"

_BLOCK = re.compile(r"^```console\n(.*?)^```[ \t]*$", re.S | re.M)
_EXIT = re.compile(r"#\s*exit (\d+)\s*$")
#: A timing as the commands print it: "0.36 s" (merge, convert, split) or "0.29s" (rename).
_TIMING = re.compile(r"\b\d+\.\d{2}(?= ?s\b)")


@dataclass
class Example:
    line: str  # the command line as README writes it, without "$ "
    expected: str  # the output README shows
    block: int  # index of its console block
    exit_code: int = 0

    @property
    def argv(self) -> list[str]:
        words = shlex.split(self.line, comments=True)
        if not words or words[0] != "ckpt-tool":
            raise ValueError(f"README console blocks hold only '$ ckpt-tool ...' commands, not: $ {self.line}")
        return words[1:]


def parse(text: str) -> list[Example]:
    """Every ``$ ckpt-tool`` command of every console block with the output README shows under it."""
    examples: list[Example] = []
    for b, block in enumerate(_BLOCK.finditer(text)):
        current: Example | None = None
        for raw in block.group(1).splitlines():
            if raw.startswith("$ "):
                code = _EXIT.search(raw)
                current = Example(raw[2:], "", b, int(code.group(1)) if code else 0)
                current.argv  # noqa: B018  (refuses a non-ckpt-tool line now)
                examples.append(current)
            elif current is None:
                raise ValueError(f"console block {b} starts with output, not a '$ ckpt-tool' line: {raw!r}")
            else:
                current.expected += raw + "\n"
    return examples


def _lines(text: str) -> str:
    """Trailing spaces and blank lines at the end dropped (Markdown editors drop them too)."""
    return "\n".join(line.rstrip() for line in text.rstrip("\n").split("\n")) + "\n" if text.strip() else ""


def normalise(text: str) -> str:
    """Timings and trailing spaces: the differences allowed between README and a run (besides the directory)."""
    return _lines(_TIMING.sub("#", text))


def normalise_paths(text: str, cwd: str) -> str:
    """The reader's directory, as README writes it."""
    for form in {cwd, os.path.realpath(cwd)}:
        text = text.replace(form, PWD)
    return text


def mismatch(example: Example, actual: str, code: int) -> str | None:
    """None when ``actual`` (already path-normalised) is what README shows; else a readable report."""
    if code != example.exit_code:
        return f"$ {example.line}\n  exit code {code}, README says {example.exit_code}\n{actual}"
    want, got = normalise(example.expected), normalise(actual)
    if want == got:
        return None
    import difflib

    diff = difflib.unified_diff(want.splitlines(), got.splitlines(), "README", "actual", lineterm="", n=1)
    return f"$ {example.line}\n" + "\n".join(diff)


def _run(argv: list[str]) -> tuple[str, int]:
    """One command through the console-script entry point, stdout and stderr in one stream."""
    from ckpt_tool.cli import main

    buf = io.StringIO()
    code = 0
    with redirect_stdout(buf), redirect_stderr(buf):
        try:
            main(argv)
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return buf.getvalue(), code


def run_all(examples: list[Example], where: Path) -> list[tuple[str, int]]:
    """Run the quickstart's ``ckpt-tool demo`` in ``where``, then every example from there."""
    from ckpt_tool.plugins import reset_plugin_manager

    results = []
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(where)
        mp.setenv("COLUMNS", COLUMNS)
        mp.setenv("HF_HUB_OFFLINE", "1")
        for var in ("CKPT_TOOL_PLUGINS", "CKPT_TOOL_DEBUG", "CKPT_TOOL_TRACE", "HF_HUB_CACHE", "HF_HOME"):
            mp.delenv(var, raising=False)
        reset_plugin_manager()
        out, code = _run(["demo"])
        assert code == 0, out
        for ex in examples:
            out, code = _run(ex.argv)
            results.append((normalise_paths(out, str(where)), code))
    reset_plugin_manager()
    return results


def update(text: str, examples: list[Example], results: list[tuple[str, int]]) -> str:
    """README with each console block's output replaced by the real one (commands kept as written)."""
    by_block: dict[int, list[str]] = {}
    for ex, (out, code) in zip(examples, results):
        if code != ex.exit_code:
            raise SystemExit(f"$ {ex.line}: exit code {code}, README says {ex.exit_code}; fix README by hand\n{out}")
        by_block.setdefault(ex.block, []).append(f"$ {ex.line}\n{_lines(out)}")
    seen = [-1]

    def repl(m: re.Match[str]) -> str:
        seen[0] += 1
        return "```console\n" + "".join(by_block.get(seen[0], [])) + "```"

    return _BLOCK.sub(repl, text)


# --- tests -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def readme_run(tmp_path_factory):
    text = README.read_text(encoding="utf-8")
    examples = parse(text)
    results = run_all(examples, tmp_path_factory.mktemp("reader"))
    return text, examples, results


def test_readme_console_blocks_print_what_they_show(readme_run):
    text, examples, results = readme_run
    assert len(examples) >= 10, "README lost its console examples"
    if os.environ.get(UPDATE_ENV):
        README.write_text(update(text, examples, results), encoding="utf-8")
        return
    problems = [p for ex, (out, code) in zip(examples, results) if (p := mismatch(ex, out, code))]
    assert not problems, (
        "README's console examples differ from what the commands print (refresh: python tests/test_readme.py "
        "--update, then review the diff):\n\n" + "\n\n".join(problems)
    )


def test_the_comparison_can_fail(readme_run):
    """The normalisation forgives timings and the directory only: one altered word, number or exit code fails."""
    _, examples, results = readme_run
    ex, (out, code) = next((e, r) for e, r in zip(examples, results) if "tensors written" in r[0])
    real = Example(ex.line, out, ex.block, ex.exit_code)
    assert mismatch(real, out, code) is None
    assert mismatch(Example(ex.line, re.sub(r"\b\d+\.\d\d s\b", "9.99 s", out), ex.block, ex.exit_code), out, code) is None
    for altered in (out.replace("tensors written", "tensors writen", 1),
                    re.sub(r"\b(\d+) tensors written", lambda m: f"{int(m.group(1)) + 1} tensors written", out, count=1),
                    out.replace(" s\n", "s\n", 1),  # a timing's spacing is part of the text
                    out + "one more line\n",
                    "\n".join(out.splitlines()[:-1]) + "\n"):
        assert altered != out
        assert mismatch(Example(ex.line, altered, ex.block, ex.exit_code), out, code), altered
    assert mismatch(Example(ex.line, out, ex.block, ex.exit_code + 1), out, code)


def test_parse_refuses_what_it_would_not_check():
    with pytest.raises(ValueError, match="only"):
        parse("```console\n$ ls ckpt-tool-demo\n```\n")
    with pytest.raises(ValueError, match="starts with output"):
        parse("```console\nstray\n$ ckpt-tool plugins\n```\n")
    (ex,) = parse("```console\n$ ckpt-tool diff a b  # exit 8\nx\n```\n")
    assert ex.argv == ["diff", "a", "b"] and ex.exit_code == 8 and ex.expected == "x\n"


if __name__ == "__main__":
    if sys.argv[1:] != ["--update"]:
        raise SystemExit(f"usage: python {sys.argv[0]} --update   (the check itself: python -m pytest {sys.argv[0]})")
    source = README.read_text(encoding="utf-8")
    found = parse(source)
    with tempfile.TemporaryDirectory() as tmp:
        ran = run_all(found, Path(tmp))
    README.write_text(update(source, found, ran), encoding="utf-8")
    print(f"README.md: {len(found)} console examples refreshed from a real run")
