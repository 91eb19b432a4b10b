"""Output layouts: how a sink's tensors become files. Registered by the plugin that owns the convention.

The core knows containers (safetensors, torch zip); which files a convention
writes — ``lit_model.pth`` for LitGPT, ``adapter_model.safetensors`` for PEFT,
``model-0000i-of-0000K.safetensors`` plus an index for Hugging Face — is the
plugin's knowledge, handed over through the ``ckpt_register_layouts`` hook.
The generic classes below cover those shapes (one file, or safetensors shards
with an index), so a plugin only fills in names.

A layout answers one question: given the sink and its announced output
tensors, which weights files (each with its tensors in file order), which index
files (published after every weights file), and which existing files would
become misleading next to the new output (removed only with ``--force``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ckpt_tool.errors import UsageError
from ckpt_tool.ops.transform import Out, SideFile, Sink


@dataclass
class FilePlan:
    """One weights file: its final path, container, tensor names in file order, and container options."""

    path: Path
    container: str  # "safetensors" | "torch"
    names: list[str]
    metadata: dict[str, str] | None = None  # safetensors __metadata__
    wrapper: str | None = None  # torch: None writes a bare state dict, "model" writes {"model": sd}
    #: torch, with a wrapper: the other top-level entries in file order (plain values only, ``writers.is_plain``);
    #: the state dict replaces the wrapper key's placeholder, or comes first (migrate keeps a file's counters)
    extras: dict[Any, Any] | None = None


@dataclass
class LayoutFiles:
    weights: list[FilePlan]
    index: list[SideFile] = field(default_factory=list)
    stale: list[Path] = field(default_factory=list)


class Layout(Protocol):
    name: str
    description: str
    #: "dir": ``Sink.path`` is the output directory; "file": it is the weights file itself.
    target: str

    def files(self, sink: Sink, outs: Sequence[Out]) -> LayoutFiles: ...


#: The order of ``safetensors``' ``Dtype`` enum (0.8.0): ``save_file`` lays tensors out by this rank, highest
#: first, then by name. Pinned against the library by ``tests/test_split.py``.
SAFETENSORS_DTYPE_RANK: dict[str, int] = {
    name: i
    for i, name in enumerate(
        ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32", "U32", "F32", "C64", "F64",
         "I64", "U64")
    )
}


def safetensors_order(outs: Sequence[Out]) -> list[Out]:
    """The order ``safetensors.save_file`` writes: dtype rank descending, then name (byte order).

    Widest dtypes come first, so every tensor stays aligned to its item size,
    and a file we write holds exactly the bytes ``save_file`` would write for
    the same tensors and metadata (so re-sharding and consolidating round-trip
    byte for byte, and our shards equal ``save_pretrained``'s).
    """
    return sorted(outs, key=lambda o: (-SAFETENSORS_DTYPE_RANK[o.dtype], o.name))


def hf_shards(outs: Sequence[Out], max_shard_size: int) -> list[list[Out]]:
    """Group ``outs`` (in the given order) into shards exactly as ``huggingface_hub``'s
    ``split_state_dict_into_shards_factory`` (what ``save_pretrained`` calls) does.

    Greedy in order: a tensor that would tip the current shard over the limit
    starts a new one, and a tensor larger than the limit is put in a shard of
    its own *at once*, while the current shard stays open for the tensors that
    follow (so ``[1, 10, 1]`` with a limit of 5 gives ``[[10], [1, 1]]``).
    """
    shards: list[list[Out]] = []
    current: list[Out] = []
    size = 0
    for o in outs:
        n = o.nbytes
        if n > max_shard_size:
            shards.append([o])
            continue
        if size + n > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(o)
        size += n
    if current:
        shards.append(current)
    return shards


def _metadata(sink: Sink, default: dict[str, str] | None) -> dict[str, str] | None:
    extra = sink.options.get("metadata")
    if extra is None:
        return default
    return {**(default or {}), **{str(k): str(v) for k, v in extra.items()}}


@dataclass
class SingleFileLayout:
    """All tensors in one file named ``weights_name`` inside the sink directory (or the sink path itself)."""

    name: str
    description: str
    container: str
    weights_name: str | None = None  # None: ``Sink.path`` is the file
    wrapper: str | None = None

    @property
    def target(self) -> str:
        return "file" if self.weights_name is None else "dir"

    def files(self, sink: Sink, outs: Sequence[Out]) -> LayoutFiles:
        if self.weights_name is None:
            path = sink.path
        else:
            path = sink.path / str(sink.options.get("weights_name") or self.weights_name)
        ordered = safetensors_order(outs) if self.container == "safetensors" else list(outs)
        meta = _metadata(sink, {"format": "pt"}) if self.container == "safetensors" else None
        wrapper = sink.options.get("wrapper", self.wrapper) if self.container == "torch" else None
        extras = sink.options.get("extras") if self.container == "torch" else None
        # files a loader would take instead of (or together with) the new one, e.g. a merged lit_model.pth
        # beside a new LitGPT adapter: existing output, replaced only with --force
        stale = [path.parent / n for n in sink.options.get("stale_names", ()) if (path.parent / n) != path]
        stale = [p for p in stale if p.exists()]
        return LayoutFiles([FilePlan(path, self.container, [o.name for o in ordered], meta, wrapper, extras)], stale=stale)


@dataclass
class ShardedSafetensorsLayout:
    """``<prefix>.safetensors``, or ``<prefix>-0000i-of-0000K.safetensors`` + ``<prefix>.safetensors.index.json``
    past ``options["max_shard_size"]`` bytes (0: one file): shard boundaries as ``save_pretrained`` draws them
    over the tensors in plan order (``hf_shards``), each shard laid out as ``save_file`` lays it out."""

    name: str
    description: str
    prefix: str = "model"
    default_shard_size: int = 5 * 10**9
    target: str = "dir"

    def files(self, sink: Sink, outs: Sequence[Out]) -> LayoutFiles:
        from ckpt_tool.io.writers import TensorSpec, index_json, shard_names

        limit = sink.options.get("max_shard_size")
        limit = self.default_shard_size if limit is None else limit
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < 0:
            raise UsageError(f"invalid shard size {limit!r}", "use e.g. --max-shard-size 5GB (0: one file)")
        groups = ([safetensors_order(g) for g in hf_shards(outs, limit)] if limit else [safetensors_order(outs)]) or [[]]
        names = shard_names(len(groups), self.prefix)
        meta = _metadata(sink, {"format": "pt"})
        weights = [FilePlan(sink.path / n, "safetensors", [o.name for o in g], meta) for n, g in zip(names, groups)]
        index: list[SideFile] = []
        index_name = f"{self.prefix}.safetensors.index.json"
        if len(groups) > 1:
            specs = [TensorSpec(o.name, o.dtype, o.shape) for g in groups for o in g]
            wmap = {o.name: n for n, g in zip(names, groups) for o in g}
            index.append(SideFile(index_name, data=index_json(specs, wmap)))
        new = {p.path.name for p in weights} | {i.name for i in index}
        stale = []
        if sink.path.is_dir():
            candidates = [sink.path / f"{self.prefix}.safetensors", sink.path / index_name]
            candidates += sorted(sink.path.glob(f"{self.prefix}-?????-of-?????.safetensors"))
            stale = [c for c in candidates if c.name not in new and c.exists()]
        return LayoutFiles(weights, index, stale)


# --- registry ---------------------------------------------------------------------------------------

_cache: tuple[object, dict[str, Layout]] | None = None  # (plugin manager, layouts it registered)


def layouts() -> dict[str, Layout]:
    """Every registered layout by name, collected through ``ckpt_register_layouts`` once per plugin manager.

    The first registration of a name wins (built-ins load first), so a third-party
    plugin cannot silently replace how ``hf`` output is written.
    """
    global _cache
    from ckpt_tool.plugins import get_plugin_manager

    pm = get_plugin_manager()
    if _cache is None or _cache[0] is not pm:
        found: dict[str, Layout] = {}

        def register(layout: Layout) -> None:
            found.setdefault(layout.name, layout)

        pm.hook.ckpt_register_layouts(register=register)
        _cache = (pm, found)
    return dict(_cache[1])


def get_layout(name: str) -> Layout:
    found = layouts()
    if name not in found:
        raise UsageError(f"unknown output layout {name!r}", "choose one of: " + ", ".join(sorted(found)))
    return found[name]

