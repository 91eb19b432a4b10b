"""LitGPT checkpoints to and from Hugging Face naming (the ``ckpt_to_hub`` / ``ckpt_from_hub`` hooks).

Full models go through the family modules in ``hub/`` (one per family, as
LitGPT's converters dispatch). The LitGPT directory's side files travel along:
tokenizer files and ``generation_config.json`` are copied, ``config.json`` is
generated from ``model_config.yaml`` (LitGPT's own converter writes only a
``model.pth``, which transformers cannot load without a hand-made config), and
the other way ``model_config.yaml`` is derived from ``config.json`` for any
size (LitGPT itself needs a known model name).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.io.sidefiles import read_json, travelling_files
from ckpt_tool.model import CheckpointInfo, TensorInfo
from ckpt_tool.ops.transform import HUB, HubResult, HubView, SideFile
from ckpt_tool_lit.config import MODEL_CONFIG
from ckpt_tool_lit.hub import family_for_hf, family_for_lit
from ckpt_tool_lit.keys import FULL, WEIGHTS_NAME

FORMAT = "lit"
OUT = "out"
SRC = "in"


def source_dir(info: CheckpointInfo) -> Path:
    """The LitGPT directory a detected checkpoint (a folder or a weights file) belongs to."""
    d = (info.details or {}).get("dir")
    return Path(d) if d else (Path(info.path) if Path(info.path).is_dir() else Path(info.path).parent)


def original_config(directory: Path) -> dict[str, Any] | None:
    """The HF ``config.json`` LitGPT's download leaves beside ``lit_model.pth`` and copies into a fine-tune's
    ``final/`` (token ids, tying), if any."""
    p = directory / "config.json"
    if not p.is_file():
        return None
    data = read_json(p, "the original Hugging Face config")
    if not isinstance(data, dict):
        raise InvalidFile(f"{p}: expected a JSON object")
    return data


def to_hub(source: CheckpointInfo, options: Any) -> HubView | None:
    if source.format != FORMAT:
        return None
    if source.kind != "model":
        return _adapter_to_hub(source, options)
    if source.training_state:
        raise Unsupported(
            f"{source.path}: a training state (weights + optimizer); converting it would drop the optimizer",
            "convert final/lit_model.pth, or pass the weights of a finished run",
        )
    cfg = (source.details or {}).get("model_config")
    if not cfg:
        raise InvalidFile(
            f"{source.path}: no {MODEL_CONFIG} beside the weights, so the architecture is unknown",
            f"copy the {MODEL_CONFIG} of the model into {source_dir(source)}",
        )
    directory = source_dir(source)
    base = original_config(directory)
    fam = family_for_lit(cfg)
    tensors = {t.name: t for t in source.tensors}
    steps = fam.to_hf_steps(cfg, tensors, SRC, HUB, tie=options.tie, base=base)
    config = fam.hf_config(cfg, tie=options.tie, base=base, dtype=_config_dtype(steps, options))
    return HubView("model", steps, config, travelling_files(directory), extra={"family": fam.name})


def _adapter_to_hub(source: CheckpointInfo, options: Any) -> HubView:
    """LitGPT LoRA → PEFT naming; ``lora_hub`` refuses LitGPT's other adapters (no Hugging Face form)."""
    from ckpt_tool_lit.lora_hub import lora_to_hub

    return lora_to_hub(source, options)


def _config_dtype(steps: list[Any], options: Any) -> str | None:
    """The dtype recorded in config.json: the one the weights are written in (``--dtype``, else the majority)."""
    if options.dtype:
        return options.dtype
    counts: dict[str, int] = {}
    for s in steps:
        for o in s.outs:
            counts[o.dtype] = counts.get(o.dtype, 0) + o.nbytes
    floats = {k: v for k, v in counts.items() if k in ("F16", "BF16", "F32", "F64")}
    return max(floats, key=floats.__getitem__) if floats else None


def header(name: str, dtype: str, shape: tuple[int, ...]) -> TensorInfo:
    """A header-only tensor record (no file): what steps are planned from."""
    return TensorInfo(name, dtype, shape, file="", data_offset=0, storage_numel=math.prod(shape))


def hub_tensors(view: HubView) -> dict[str, TensorInfo]:
    """The hub tensors a view announces, as header-only records (what the target's steps plan from)."""
    return {o.name: header(o.name, o.dtype, o.shape) for s in view.steps for o in s.outs}


def from_hub(view: HubView, layout: str, options: Any) -> HubResult | None:
    if layout != FORMAT:
        return None
    if view.kind != "model":
        from ckpt_tool_lit.lora_hub import lora_from_hub

        return lora_from_hub(view, options)
    fam = family_for_hf(view.config)
    cfg = fam.lit_config(view.config)
    steps = fam.to_lit_steps(cfg, view.config, hub_tensors(view), HUB, OUT)
    import yaml

    side = [SideFile(MODEL_CONFIG, data=yaml.safe_dump(cfg, sort_keys=False).encode())]
    side.append(SideFile("config.json", data=(json.dumps(view.config, indent=2) + "\n").encode()))
    side += [SideFile(name, src=src) for name, src in view.files.items()]
    return HubResult(steps, side, {"weights_name": WEIGHTS_NAME[FULL]}, {"family": fam.name, "model": cfg.get("name")})
