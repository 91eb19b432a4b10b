"""The generic fallback: plain safetensors / torch files and Hugging Face model directories.

Runs last (``trylast``), after the convention-specific plugins passed. It
claims anything it can read: a single safetensors file, a sharded directory
(whose index is checked against the shards, because a stale or hand-edited
index makes ``from_pretrained`` load a model with silently missing or random
tensors), an HF model dir with ``config.json``, or a plain torch zip.

Reads headers and JSON only; never imports torch (formats.md §1, §4).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from ckpt_tool.errors import CkptError, InvalidFile, NotFound
from ckpt_tool.io import sniff as _sniff
from ckpt_tool.io.sidefiles import MAX_INDEX_BYTES, read_json
from ckpt_tool.model import CheckpointInfo, TensorInfo

INDEX_NAMES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
SINGLE_NAMES = ("model.safetensors", "pytorch_model.bin")
CONFIG_NAME = "config.json"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt", ".ckpt")

_LORA_RE = re.compile(r"\.lora_(A|B)(\.|$)|\.lora_embedding_(A|B)$|\.lora_magnitude_vector$")
_LORA_A = re.compile(r"\.lora_(embedding_)?A(\.weight)?$")


# ---------------------------------------------------------------------------
# JSON side files


def read_config(directory: Path) -> dict[str, Any] | None:
    """Parse ``config.json`` next to the weights, or None when there is none."""
    file = directory / CONFIG_NAME
    if not file.is_file():
        return None
    config = read_json(file, "the model config")
    if not isinstance(config, dict):
        raise InvalidFile(
            f"{file}: expected a JSON object, found a JSON {type(config).__name__}",
            "fix or regenerate config.json",
        )
    return config


def _config_metadata(config: dict[str, Any] | None) -> dict[str, Any]:
    if not config:
        return {}
    out: dict[str, Any] = {}
    for key in ("model_type", "architectures"):
        if config.get(key) is not None:
            out[key] = config[key]
    # transformers >= 5 writes "dtype"; older releases "torch_dtype"
    dtype = config.get("torch_dtype", config.get("dtype"))
    if dtype is not None:
        out["torch_dtype"] = dtype
    return out


# ---------------------------------------------------------------------------
# LoRA-looking key sets


def _lora_facts(tensors: list[TensorInfo]) -> tuple[bool, dict[str, Any] | None, int]:
    """(is an adapter, lora dict, number of LoRA tensors) from key names and shapes only."""
    lora = [t for t in tensors if _LORA_RE.search(t.name)]
    if not lora:
        return False, None, 0
    has_a = any(".lora_A" in t.name or ".lora_embedding_A" in t.name for t in lora)
    has_b = any(".lora_B" in t.name or ".lora_embedding_B" in t.name for t in lora)
    is_adapter = has_a and has_b and len(lora) > len(tensors) - len(lora)
    ranks = sorted({t.shape[0] for t in lora if _LORA_A.search(t.name) and t.shape})
    targets = sorted({_LORA_RE.split(t.name)[0].rsplit(".", 1)[-1] for t in lora})
    info = {
        "r": ranks[0] if len(ranks) == 1 else None,
        "alpha": None,  # not recorded anywhere in a bare weights file
        "targets": targets,
        "ranks": ranks,
    }
    return is_adapter, info, len(lora)


def _apply_lora(info: CheckpointInfo) -> None:
    is_adapter, lora, count = _lora_facts(info.tensors)
    if lora is None:
        return
    if is_adapter:
        info.kind = "adapter"
        info.adapter_type = "lora"
        info.lora = lora
        info.warnings.append(
            "These are LoRA weights without an adapter_config.json: rank is read from the shapes, but alpha (the "
            "scale) is not recorded, so they cannot be merged or loaded as a PEFT adapter as they are. Put the "
            "adapter_config.json of the training run next to them."
        )
    else:
        info.warnings.append(
            f"The model holds {count} LoRA tensor(s) next to its base weights (an unmerged training state): loaders "
            "that expect a plain model will ignore or reject them. Merge the adapter or drop the LoRA tensors."
        )


# ---------------------------------------------------------------------------
# single files


def _single_file(path: Path, probe: Any, config: dict[str, Any] | None = None) -> CheckpointInfo:
    container = probe.container(path)
    info = CheckpointInfo(
        path=str(path),
        format="safetensors" if container.kind == "safetensors" else "torch",
        kind="model",
        container=container.kind,
        files=[str(path.absolute())],
        tensors=list(container.tensors.values()),
        details={"config": config, "dir": str(path.parent.absolute()), "index": None},
    )
    if container.kind == "safetensors":
        info.metadata.update(container.metadata)
        info.description = "safetensors file"
    else:
        tz = container.torch
        info.wrapper = container.wrapper
        info.training_state = container.training_state
        extras = list(tz.extras) if tz else []
        info.metadata["pickle_protocol"] = tz.protocol if tz else None
        if extras:
            info.metadata["other_keys"] = extras
        if tz and tz.other_tensors:
            info.metadata["other_tensors"] = tz.other_tensors
        what = {
            "bare": "bare state dict",
            "model": "state dict under 'model'",
            "state_dict": "state dict under 'state_dict'",
            "module": "state dict under 'module'",
        }.get(container.wrapper or "", "dict mixing tensors and other values")
        info.description = f"torch zip, {what}" + (" + optimizer state" if info.training_state else "")
        if container.wrapper == "other" and not info.tensors:
            info.warnings.append(
                "No tensors were found at the top level or under 'model'/'state_dict'/'module': this file holds no "
                "weights ckpt-tool can address."
            )
    info.metadata.update(_config_metadata(config))
    _apply_lora(info)
    return info


def _file(path: Path, probe: Any) -> CheckpointInfo | None:
    if path.name == CONFIG_NAME or path.name.endswith(".index.json"):
        return _directory(
            path.parent, probe, index_file=path if path.name.endswith(".index.json") else None, path=path
        )
    try:
        kind = probe.kind(path)
    except InvalidFile:
        if path.suffix in WEIGHT_SUFFIXES:
            raise
        return None  # e.g. an empty README: not ours to judge
    if kind == _sniff.UNKNOWN:
        if path.suffix in WEIGHT_SUFFIXES:
            raise InvalidFile(
                f"{path}: not a safetensors or torch checkpoint (unrecognised leading bytes)",
                "the file may be truncated or of another format",
            )
        return None
    # legacy torch / bare pickles: probe.container raises Unsupported with advice
    config = None
    if path.name in SINGLE_NAMES:
        config = read_config(path.parent)
    return _single_file(path, probe, config)


# ---------------------------------------------------------------------------
# sharded directories


def _shard_path(directory: Path, index_file: Path, shard: Any) -> Path:
    if not isinstance(shard, str) or not shard or "\0" in shard:
        raise InvalidFile(f"{index_file}: weight_map names an invalid shard {shard!r}")
    if os.path.isabs(shard) or ".." in Path(shard).parts or "\\" in shard:
        raise InvalidFile(
            f"{index_file}: shard {shard!r} lies outside the model directory",
            "an index may only name files inside its own directory",
        )
    return directory / shard


def read_index(index_file: Path) -> dict[str, Any]:
    """Parse and type-check a ``*.index.json`` (hostile input)."""
    index = read_json(index_file, "the shard index", MAX_INDEX_BYTES)
    if not isinstance(index, dict):
        raise InvalidFile(f"{index_file}: expected a JSON object, found a JSON {type(index).__name__}")
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not weight_map:
        raise InvalidFile(
            f"{index_file}: missing or empty 'weight_map'", "regenerate the index with save_pretrained"
        )
    for name, shard in weight_map.items():
        if not isinstance(shard, str):
            raise InvalidFile(
                f"{index_file}: weight_map entry {name!r} must name a shard file, not {shard!r}"
            )
    meta = index.get("metadata")
    if meta is not None and not isinstance(meta, dict):
        raise InvalidFile(f"{index_file}: 'metadata' must be an object")
    return index


def _sharded(
    directory: Path, index_file: Path, probe: Any, config: dict[str, Any] | None, path: Path
) -> CheckpointInfo:
    index = read_index(index_file)
    weight_map: dict[str, str] = index["weight_map"]
    shards = sorted(set(weight_map.values()))
    shard_paths = {s: _shard_path(directory, index_file, s) for s in shards}
    missing = [s for s in shards if not shard_paths[s].is_file()]
    if missing:
        raise InvalidFile(
            f"{index_file}: {len(missing)} shard(s) named in the index do not exist: {', '.join(missing[:5])}"
            + (" …" if len(missing) > 5 else ""),
            "the download or copy is incomplete; fetch the missing shards",
        )
    warnings: list[str] = []
    tensors: list[TensorInfo] = []
    found_in: dict[str, list[str]] = {}
    kinds: set[str] = set()
    for shard in shards:
        container = probe.container(shard_paths[shard])
        kinds.add(container.kind)
        for t in container.tensors.values():
            tensors.append(t)
            found_in.setdefault(t.name, []).append(shard)

    dupes = {n: s for n, s in found_in.items() if len(s) > 1}
    if dupes:
        name = next(iter(dupes))
        raise InvalidFile(
            f"{index_file}: {len(dupes)} tensor(s) are stored in more than one shard (e.g. {name!r} in "
            f"{', '.join(dupes[name])}); which copy a loader uses is undefined",
            "re-save the model with save_pretrained",
        )
    pattern = re.compile(r"^(?P<stem>.+)-\d+-of-\d+\.(safetensors|bin)$")
    listed = set(shards)
    stems = {m["stem"] for s in shards if (m := pattern.match(Path(s).name))}
    stale = sorted(
        c.name
        for c in directory.iterdir()
        if c.is_file() and c.name not in listed and (m := pattern.match(c.name)) and m["stem"] in stems
    )
    absent = [n for n in weight_map if n not in found_in]
    misplaced = [n for n in weight_map if n in found_in and found_in[n][0] != weight_map[n]]
    if absent or misplaced:
        # Tensors the index sends to the wrong shard may sit in a shard it no longer lists.
        elsewhere: dict[str, str] = {}
        for name in stale:
            try:
                for t in probe.container(directory / name).tensors:
                    elsewhere.setdefault(t, name)
            except (CkptError, OSError):
                continue
        parts = []
        moved = [n for n in absent if n in elsewhere]
        gone = [n for n in absent if n not in elsewhere]
        if gone:
            parts.append(
                f"{len(gone)} tensor(s) listed in the index are in no shard (e.g. {gone[0]!r} "
                f"should be in {weight_map[gone[0]]})"
            )
        if misplaced or moved:
            where = {**{n: found_in[n][0] for n in misplaced}, **{n: elsewhere[n] for n in moved}}
            n = next(iter(where))
            parts.append(
                f"{len(where)} tensor(s) are not in the shard the index names (e.g. {n!r}: index says "
                f"{weight_map[n]}, found in {where[n]})"
            )
        raise InvalidFile(
            f"{index_file}: " + "; ".join(parts),
            "the index does not match the shards; regenerate it or re-download the model",
        )
    unlisted = [n for n in found_in if n not in weight_map]
    if unlisted:
        warnings.append(
            f"{len(unlisted)} tensor(s) in the shards are not listed in {index_file.name} (e.g. {unlisted[0]!r} in "
            f"{found_in[unlisted[0]][0]}): from_pretrained will not load them. Regenerate the index if they belong "
            "to the model."
        )
    total = sum(t.nbytes for t in tensors)
    declared = (index.get("metadata") or {}).get("total_size")
    if declared is not None and (
        not isinstance(declared, int) or isinstance(declared, bool) or declared != total
    ):
        warnings.append(
            f"{index_file.name} declares total_size {declared!r} but the shards hold {total} bytes of tensors: the "
            "index is stale or hand-edited. Loading is not affected, but tools that pre-allocate from it may be; "
            "regenerate the index."
        )
    if stale:
        warnings.append(
            f"{len(stale)} shard file(s) in the directory are not referenced by {index_file.name} "
            f"({', '.join(stale[:3])}{' …' if len(stale) > 3 else ''}): probably left over from an earlier save. "
            "They are ignored by loaders; delete them to save space."
        )
    container_kind = kinds.pop() if len(kinds) == 1 else "mixed"
    info = CheckpointInfo(
        path=str(path),
        format="torch" if container_kind == "torch" else "safetensors",
        kind="model",
        container=container_kind,
        files=[str(shard_paths[s].absolute()) for s in shards],
        tensors=tensors,
        warnings=warnings,
        metadata=_config_metadata(config),
        description=f"{'Hugging Face model' if config else 'sharded model'}, {len(shards)} shard(s)",
        details={"config": config, "dir": str(directory.absolute()), "index": index, "index_file": str(index_file.absolute())},
    )
    if isinstance(index.get("metadata"), dict):
        info.metadata["total_size"] = declared
    _apply_lora(info)
    return info


# ---------------------------------------------------------------------------
# directories


def _directory(
    directory: Path, probe: Any, index_file: Path | None = None, path: Path | None = None
) -> CheckpointInfo | None:
    path = path or directory
    if index_file is None:
        index_file = next((directory / n for n in INDEX_NAMES if (directory / n).is_file()), None)
    if index_file is None:
        others = sorted(directory.glob("*.safetensors.index.json")) + sorted(
            directory.glob("*.bin.index.json")
        )
        index_file = others[0] if others else None
    config = read_config(directory)
    if index_file is not None:
        return _sharded(directory, index_file, probe, config, path)
    weights = next((directory / n for n in SINGLE_NAMES if (directory / n).is_file()), None)
    if weights is None:
        candidates = sorted(c for c in directory.iterdir() if c.is_file() and c.suffix in WEIGHT_SUFFIXES)
        if len(candidates) == 1:
            weights = candidates[0]
    if weights is None:
        if config is not None and ("model_type" in config or "architectures" in config):
            raise NotFound(
                f"{directory}: config.json but no model weights (model.safetensors, pytorch_model.bin or a shard index)",
                "the download is incomplete, or point at the directory that holds the weights",
            )
        return None
    info = _single_file(weights, probe, config)
    info.path = str(path)
    info.details["dir"] = str(directory.absolute())
    if config is not None:
        info.description = "Hugging Face model, " + (info.description or "")
    return info


def detect(path: Path, probe: Any) -> CheckpointInfo | None:
    """Describe a plain/HF model file or directory, or None when there is nothing readable."""
    path = Path(path)
    try:
        if path.is_dir():
            return _directory(path, probe)
        if path.is_file():
            return _file(path, probe)
    except PermissionError as exc:
        raise NotFound(f"{exc.filename or path}: permission denied", "check the permissions") from None
    return None
