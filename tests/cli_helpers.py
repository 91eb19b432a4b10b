"""Run the CLI in a fresh interpreter (for tests that need a clean process: imports, env, plugins)."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass


@dataclass
class Result:
    code: int
    stdout: str
    stderr: str


def run_subprocess(*args: object, env: dict[str, str] | None = None, timeout: float = 120) -> Result:
    """Run ``python -m ckpt_tool ARGS`` in a fresh interpreter."""
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", *map(str, args)],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=timeout,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)
