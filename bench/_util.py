"""Shared benchmark helpers: run a process and sample its peak anonymous memory (children included).

Anonymous RSS (``RssAnon`` in ``/proc/<pid>/status``) is what a merge costs in
RAM: memory-mapped reads of the input and page cache for the output are
file-backed and reclaimable, so they are not counted — the same rule for every
tool measured.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path


def rss_anon(pid: int) -> int:
    """RssAnon of one process in bytes (0 if it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return 0


def descendants(pid: int) -> list[int]:
    """``pid`` and all its live descendants (via /proc/<pid>/task/*/children)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue
    return out


@dataclass
class Measured:
    seconds: float
    peak_anon: int
    returncode: int
    stdout: str
    stderr: str


def run_measured(cmd: list[str], interval: float = 0.02, env: dict[str, str] | None = None,
                 cwd: str | Path | None = None) -> Measured:
    """Run ``cmd``; return wall seconds and the peak of the summed RssAnon of its process tree."""
    peak = [0]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=cwd)
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], sum(rss_anon(p) for p in descendants(proc.pid)))
            done.wait(interval)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    seconds = time.perf_counter() - t0
    done.set()
    th.join()
    return Measured(seconds, peak[0], proc.returncode, out, err)


#: ``python -c COPY SRC DST``: the floor for any tool that writes a model: copy the file, fsync it.
COPY = """
import os, shutil, sys
shutil.copyfile(sys.argv[1], sys.argv[2])
fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
"""


def warm(path: Path) -> None:
    """Read a file once so every contender starts with it in the page cache (no root needed)."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass


def gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def mib(n: int) -> str:
    return f"{n / 2**20:.0f} MiB"


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
