"""Hugging Face model directories are the hub's own naming: both hooks are renames-free copies.

``to_hub``: an HF model directory (``config.json`` + weights, sharded or not,
safetensors or ``.bin``) as a ``HubView``: every tensor under its own name, the
config as is, tokenizer and generation files along. ``from_hub`` for the
``hf`` layout: the hub tensors into ``model.safetensors`` (sharded past
``--max-shard-size``) + index, with ``config.json`` written from the view and
the travelling files copied.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ckpt_tool.errors import InvalidFile, Unsupported
from ckpt_tool.io.sidefiles import travelling_files
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops.transform import HUB, HubResult, HubView, SideFile, copy_step

LAYOUT = "hf"


def to_hub(source: CheckpointInfo, options: Any) -> HubView | None:
    if source.format not in ("safetensors", "torch") or source.kind != "model":
        return None
    details = source.details or {}
    config = details.get("config")
    if not isinstance(config, dict):
        raise InvalidFile(
            f"{source.path}: no config.json beside the weights, so this is not a Hugging Face model directory "
            "and its architecture is unknown",
            "convert the directory that holds config.json, or use --to safetensors / --to torch to change "
            "only the container",
        )
    if source.training_state:
        raise Unsupported(f"{source.path}: a training state with optimizer; convert the model weights only")
    steps = [copy_step("in", t.name, HUB, t.name, t.dtype, t.shape) for t in source.tensors]
    directory = Path(details.get("dir") or source.path)
    return HubView("model", steps, dict(config), travelling_files(directory))


def from_hub(view: HubView, layout: str, options: Any) -> HubResult | None:
    if layout != LAYOUT:
        return None
    if view.kind != "model":
        return None
    steps = [copy_step(HUB, o.name, "out", o.name, o.dtype, o.shape) for s in view.steps for o in s.outs]
    config = dict(view.config)
    if getattr(options, "dtype", None):
        from ckpt_tool.model import DTYPE_NAMES

        # transformers 4 reads torch_dtype, 5 reads dtype (first): every spelling present must say the new one
        keys = [k for k in ("torch_dtype", "dtype") if k in config] or ["torch_dtype", "dtype"]
        config.update(dict.fromkeys(keys, DTYPE_NAMES[options.dtype]))
    side = [SideFile("config.json", data=(json.dumps(config, indent=2, sort_keys=True) + "\n").encode())]
    side += [SideFile(name, src=src) for name, src in view.files.items()]
    return HubResult(steps, side)
