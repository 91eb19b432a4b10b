"""Small shared helpers for the inspect benchmark: timing whole processes."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time


def time_process(cmd: list[str], repeat: int = 5, env: dict[str, str] | None = None) -> tuple[float, float]:
    """Run ``cmd`` ``repeat`` times; return (median, min) wall seconds. Fails loudly on non-zero exit."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        times.append(time.perf_counter() - t0)
        if proc.returncode != 0:
            sys.exit(f"command failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return statistics.median(times), min(times)
