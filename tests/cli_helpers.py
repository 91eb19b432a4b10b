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


_ANON_HARNESS = """
import json, sys, threading, time
from pathlib import Path

def anon():
    for line in open("/proc/self/status"):
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024

{setup}
peak, baseline, done = [0], anon(), [False]

def sample():
    while not done[0]:
        peak[0] = max(peak[0], anon())
        time.sleep(0.002)

th = threading.Thread(target=sample)
th.start()
{call}
done[0] = True
th.join()
print(json.dumps({{"baseline": baseline, "peak": peak[0]}}))
"""


def anon_growth(setup: str, call: str, *args: object, timeout: float = 300) -> int:
    """Bytes of anonymous memory (RssAnon, sampled every 2 ms) a fresh interpreter grows by while it runs
    ``call`` after ``setup`` (both Python source at top level; ``sys.argv[1:]`` are ``args``): the measure
    of "streams, never materialises" tests. Memory-mapped inputs and the page cache are not anonymous."""
    import json
    import textwrap

    script = _ANON_HARNESS.format(setup=textwrap.dedent(setup), call=textwrap.dedent(call))
    proc = subprocess.run([sys.executable, "-c", script, *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert proc.returncode == 0, proc.stderr
    m = json.loads(proc.stdout)
    return m["peak"] - m["baseline"]


PROVENANCE_FILE = "ckpt-tool-provenance.json"
PROVENANCE_KEY = "ckpt_tool.provenance"


def without_provenance(path: object) -> bytes:
    """A safetensors file's bytes with ckpt-tool's provenance entry taken out of ``__metadata__``, the header
    re-laid out exactly as ckpt-tool's (and ``save_file``'s) writer lays it out: for byte-for-byte comparisons
    with files the peers write, which carry no provenance."""
    import json
    import struct
    from pathlib import Path

    raw = Path(str(path)).read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    meta = header.get("__metadata__")
    if isinstance(meta, dict) and PROVENANCE_KEY in meta:
        del meta[PROVENANCE_KEY]
        # the data offsets are relative to the data section, so only the header changes
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode()
        text += b" " * (-len(text) % 8)
        return struct.pack("<Q", len(text)) + text + raw[8 + n :]
    return raw


def names(directory: object, *, provenance: bool = False) -> list[str]:
    """Sorted file names in ``directory`` (without ckpt-tool's provenance file unless asked)."""
    from pathlib import Path

    return sorted(p.name for p in Path(str(directory)).iterdir() if provenance or p.name != PROVENANCE_FILE)
