"""The plugin contract. Every hook is documented here; the project name is ``ckpt_tool``.

A plugin is any module or object with functions decorated by
``ckpt_tool.hookimpl`` whose names match the specs below. Built-in handlers
(``ckpt_tool_lit``, ``ckpt_tool_peft``, ``ckpt_tool_safetensors``) are ordinary
plugins registered through the ``ckpt_tool`` entry-point group, exactly like
third-party ones::

    [project.entry-points.ckpt_tool]
    gguf = "ckpt_tool_gguf"

Hooks must only look at names and headers (``probe``) when detecting: no
tensor bytes, no ``import torch``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from pathlib import Path

    from ckpt_tool.io.container import Probe
    from ckpt_tool.model import CheckpointInfo

hookspec = pluggy.HookspecMarker("ckpt_tool")
from ckpt_tool import hookimpl  # noqa: E402,F401  (re-exported)


@hookspec(firstresult=True)
def ckpt_detect(path: Path, probe: Probe) -> CheckpointInfo | None:
    """Say what the file or directory at ``path`` is, or return ``None`` if it is not yours.

    Called by ``inspect`` (and by every command that needs to know what an input
    is) once per path. The first non-``None`` answer wins; generic handlers that
    accept anything readable mark their implementation ``trylast=True``.

    Args:
        path: an existing file or directory (not resolved; symlinks as given).
        probe: cached, validated header readers (``probe.container(file)``).

    Returns:
        A filled ``CheckpointInfo`` (``format`` is the plugin's format name,
        ``kind`` "model" or "adapter", warnings as full sentences), or ``None``.

    Raise ``ckpt_tool.errors.CkptError`` subclasses for files that are yours but
    broken (bad config, inconsistent shapes); never let other exceptions escape.
    """


@hookspec(firstresult=True)
def ckpt_merge_plan(adapter: CheckpointInfo, base: CheckpointInfo, options: Any) -> Any | None:
    """Describe how to fold the adapter ``adapter`` into the model ``base``, or ``None`` if not yours.

    Called by ``merge`` after both inputs were detected. The plugin validates the
    pair (every target exists, shapes agree with r and the base, nothing already
    merged) and returns a ``ckpt_tool.ops.merge.MergePlan``: per base tensor,
    how it changes (low-rank delta, replacement, rescale, drop) and the output
    dtype. It must raise ``Refused`` listing *all* mismatches at once, and
    must not read base tensor bytes (the engine streams them).

    Args:
        adapter: what ``ckpt_detect`` said about the adapter path.
        base: what ``ckpt_detect`` said about the base path.
        options: ``ckpt_tool.ops.merge.MergeOptions`` (dtype, adapter name, ...).
    """


@hookspec(firstresult=True)
def ckpt_merge_base(adapter: CheckpointInfo) -> Path | None:
    """Return the base model path recorded by the adapter (e.g. LitGPT ``checkpoint_dir``,
    PEFT ``base_model_name_or_path`` when it is a local directory), or ``None``.

    Called by ``merge`` when ``--base`` is not given. Must never download.
    """


@hookspec
def ckpt_migrate_run(run_dir: Path, root: Path, probe: Probe, options: Any) -> list[Any] | None:
    """Propose actions that bring the run directory ``run_dir`` into today's layout.

    Called by ``migrate`` for every directory under ``root`` (symlinks are not
    followed). Returns a list of ``ckpt_tool.ops.migrate.Action`` (moves, config
    rewrites, copies, reports) or ``None`` when the directory is not yours. Must
    not change anything: the core checks the whole plan before it applies it.
    ``options`` is a ``ckpt_tool.ops.migrate.MigrateOptions`` (opt-in behaviour such as
    ``upgrade_attn``); implementations may leave the argument out if they ignore it.
    A ``derive`` action's ``converter`` must be one of the ``"module:function"`` names the
    plugin lists in a ``MIGRATE_CONVERTERS`` tuple (the journal on disk is untrusted and can
    name nothing else); every path must stay inside ``root`` and never go through a symlink.
    """
