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


@hookspec
def ckpt_register_layouts(register: Any) -> None:
    """Register the output layouts your convention owns: call ``register(layout)`` for each.

    Called once per process, the first time a command needs a layout (``convert
    --to NAME``, ``merge --to NAME``, ``split``, ``rename``). A layout
    (``ckpt_tool.ops.layouts.Layout``: ``name``, ``description``, ``target`` "dir" |
    "file", ``files(sink, outs)``) says which weights files a sink's tensors go
    into, which index files follow them and which existing files would go stale;
    ``SingleFileLayout`` and ``ShardedSafetensorsLayout`` cover the usual shapes.
    The first plugin to register a name keeps it. Built-ins: ``lit`` (LitGPT
    ``lit_model.pth``), ``peft`` (``adapter_model.safetensors``), ``hf``
    (``model.safetensors`` / shards + index), ``safetensors`` and ``torch`` (one
    plain file), ``same-files`` (``rename``: the input's own files, tensors renamed).
    """


@hookspec(firstresult=True)
def ckpt_to_hub(source: CheckpointInfo, options: Any) -> Any | None:
    """Express ``source`` — a checkpoint of your convention — in Hugging Face naming, or return ``None``.

    Called by ``convert`` (and ``merge --to``) on the plugin that detected the
    source (check ``source.format``). Returns a ``ckpt_tool.ops.transform.HubView``:
    steps that read input ``"in"`` (your tensor names) and write sink ``"hub"``
    (transformers names for models; PEFT's key grammar without ``base_model.model.``
    for adapters), the ``config`` (``config.json`` for models, LoRA settings for
    adapters) and side files that travel along (tokenizer). Only headers and side
    files may be read; raise ``Unsupported`` naming what has no counterpart
    (e.g. a LitGPT adapter v1), ``InvalidFile`` for inconsistent inputs.

    Args:
        source: what ``ckpt_detect`` said about the source path.
        options: ``ckpt_tool.ops.convert.ConvertOptions`` (target layout, dtype, base, ...).
    """


@hookspec(firstresult=True)
def ckpt_from_hub(view: Any, layout: str, options: Any) -> Any | None:
    """Turn a ``HubView`` into the tensors and side files of ``layout``, if you own that layout; else ``None``.

    Returns a ``ckpt_tool.ops.transform.HubResult``: steps reading input ``"hub"``
    and writing sink ``"out"``, the side files your layout needs (generated
    ``model_config.yaml`` / ``adapter_config.json``, copied tokenizer files) and
    layout options. The core composes the two plugins' steps
    (``transform.compose``) so no tensor is materialised twice. Raise
    ``Unsupported`` / ``Refused`` naming what cannot be represented (e.g. LoRA on
    only some layers for LitGPT).
    """


@hookspec(firstresult=True)
def ckpt_split_adapter(source: CheckpointInfo, options: Any) -> Any | None:
    """Separate a combined checkpoint of your convention into a clean base and an adapter, or return ``None``.

    A *combined* checkpoint is a full model whose state dict still carries the
    adapter's tensors: a LitGPT LoRA model's whole ``state_dict()``
    (``….attn.qkv.linear.weight`` + ``….lora_A``), a PEFT model saved whole
    (``base_model.model.….base_layer.weight`` + ``….lora_A.default.weight``).
    Called by ``split --base-out B --adapter-out A`` once the input was
    detected. ``source`` may come from any plugin (a PEFT model saved whole is a
    plain safetensors / torch file that the generic handler detects), so claim
    it by its key grammar, not by ``source.format``.

    Args:
        source: what ``ckpt_detect`` said about the input.
        options: ``ckpt_tool.ops.split.SplitOptions`` (``base_out``, ``adapter_out``,
            ``lora_alpha`` given on the command line, ``max_shard_size`` for sharded base layouts).

    Returns:
        A ``ckpt_tool.ops.split.SplitPlan``: steps that read input ``"in"`` and write
        sinks ``"base"`` (original key names of the base convention) and
        ``"adapter"`` (your adapter's key grammar), as ``compute=None`` copies so the
        engine copies bytes file to file; both ``Sink`` objects (layouts, side files:
        configs, tokenizer); and summary facts (r, alpha, targets, which values were
        *assumed*). Raise ``Refused`` listing every incomplete adapter pair at once,
        ``Unsupported`` for adapter tensors you cannot place; never read tensor bytes.
    """


@hookspec(firstresult=True)
def ckpt_rename_adapter(source: CheckpointInfo, old: str, new: str) -> Any | None:
    """Plan renaming the adapter ``old`` of ``source`` to ``new``, if ``source`` is yours; else ``None``.

    Called by ``rename PATH --adapter OLD --to NEW`` after ``ckpt_detect``. Where a
    format keeps several named adapters in one directory (PEFT: ``default`` at the root,
    any other name in ``<root>/<name>/``), the name lives in the layout, so renaming is a
    change of directory entries, not of tensors. Return a
    ``ckpt_tool.ops.rename.AdapterRenamePlan``: ``FileOp`` steps in order (``mkdir``,
    ``link``, ``rename`` without replacing, ``unlink``, ``rmdir``) that the core runs one
    atomic, fsynced step at a time and prints for ``--dry-run``. Order them so that an
    interruption after any step leaves a directory your library still loads, and plan
    from what is on disk, so that rerunning the same command finishes a half-done rename
    (set ``resumed``). Must not change anything itself.

    Raise ``UsageError`` for names that are not valid folder names, ``Refused`` (with
    the reason, all at once) for names your library mis-handles and for targets that
    exist, ``NotFound`` for an unknown ``old``.
    """


@hookspec(firstresult=True)
def ckpt_tied_duplicates(source: CheckpointInfo, groups: list[list[str]]) -> list[str] | None:
    """Which tensors sharing one storage (tied weights) your convention's loader re-creates, or ``None``.

    Called by ``split`` when an output holds several tensors that are the same
    storage in the input (``torch.save`` keeps tied parameters as one storage;
    safetensors cannot store one tensor under two names). ``groups`` lists the
    output names of each shared storage. Return the names to leave out because
    the loader ties them back from the one kept (``save_pretrained`` drops
    ``lm_head.weight`` when ``config.json`` says ``tie_word_embeddings: true``),
    or ``None`` when you cannot tell; every group left unresolved is refused with
    the reason, so a loader never gets an untied or a randomly initialised copy.
    """


@hookspec(firstresult=True)
def ckpt_repair_keys(source: CheckpointInfo, adapter: str | None) -> Any | None:
    """Say which tensor names of ``source`` an older release of your library damaged on disk, if it is yours.

    Called by ``rename PATH --repair`` after ``ckpt_detect`` (``adapter``: the adapter
    the user chose with ``--adapter``, or ``None``). Return a
    ``ckpt_tool.ops.rename.KeyRepair``: the adapter's name and directory, the renames
    (damaged name -> restored name; empty when nothing is damaged) and the checks they
    passed. Verify the repaired names against the checkpoint's own config before
    returning (every module the config targets has complete tensors of the configured
    shape) and raise ``Refused`` listing every problem otherwise: the core writes the
    renames exactly as returned (bytes untouched, atomically). Headers only; return
    ``None`` when ``source`` is not yours.
    """


@hookspec(firstresult=True)
def ckpt_repair_files(path: Path, probe: Probe) -> Any | None:
    """Say which files of the folder at ``path`` an older release of your library misnamed, if it is yours.

    Called by ``rename PATH --repair`` before ``ckpt_detect`` (a misnamed file may not
    be detected as what it is), with ``path`` as the user gave it (a file or a
    folder). Return a ``ckpt_tool.ops.rename.FileRepair``: the folder (it becomes
    the journal's ROOT; nothing outside it may be named) and
    ``ckpt_tool.ops.migrate.Action`` s inside it — the same actions your
    ``ckpt_migrate_run`` proposes for that folder, so both commands follow one
    policy. The core plans, journals, applies, resumes and undoes them exactly as
    ``migrate`` does. No actions: today's names are in place. Raise ``Refused``
    when the folder is yours but must not be changed (the reason says why);
    return ``None`` when it is not yours (the core then asks ``ckpt_repair_keys``).
    Must not change anything, and is called again with the lock held.
    """
