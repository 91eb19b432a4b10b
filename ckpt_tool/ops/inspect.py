"""``inspect``: ask the plugins what a path is. Header-only; never imports torch."""

from __future__ import annotations

import fnmatch
import os
from pathlib import Path

from ckpt_tool.errors import NotFound
from ckpt_tool.io import provenance
from ckpt_tool.io.container import Probe
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.plugins import get_plugin_manager


def detect(path: str | os.PathLike[str], probe: Probe | None = None) -> CheckpointInfo:
    """Return what the first plugin that recognises ``path`` says about it.

    Raises:
        NotFound: the path does not exist or no plugin recognises it.
        CkptError: the claiming plugin found the input broken or hostile.
    """
    p = Path(path)
    if not p.exists() and not p.is_symlink():
        raise NotFound(f"{p}: no such file or directory", "check the path")
    if not p.exists():
        raise NotFound(f"{p}: broken symlink", "fix or remove the link")
    probe = probe or Probe()
    info = get_plugin_manager().hook.ckpt_detect(path=p, probe=probe)
    if info is None:
        what = "directory" if p.is_dir() else "file"
        raise NotFound(
            f"{p}: no plugin recognises this {what}",
            "run 'ckpt-tool plugins' to see the formats understood here",
        )
    provenance.attach(info, probe)  # for every format: safetensors headers, or the file beside the weights
    return info


def filter_tensors(info: CheckpointInfo, pattern: str | None) -> CheckpointInfo:
    """Keep only the tensors whose names match the glob ``pattern`` (for display); totals become the filtered ones.

    The unfiltered count is kept in ``metadata["filter"]`` so every rendering says the totals are filtered.
    Raises ``NotFound`` when nothing matches (a typo should not look like an empty checkpoint).
    """
    if not pattern:
        return info
    total = len(info.tensors)
    kept = [t for t in info.tensors if fnmatch.fnmatchcase(t.name, pattern)]
    if not kept:
        raise NotFound(
            f"{info.path}: no tensor name matches --filter {pattern!r} ({total} tensors)",
            "check the pattern; it is a shell-style glob over full names, e.g. 'transformer.h.0.*' or '*lora_A*'",
        )
    info.tensors = kept
    info.metadata["filter"] = {"pattern": pattern, "matched": len(kept), "of": total}
    return info
