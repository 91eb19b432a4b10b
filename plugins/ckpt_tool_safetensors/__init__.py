"""Built-in plugin: plain and HF model files and directories (the generic fallback).

Single safetensors files, sharded directories with an index (checked against
the shards), HF model directories with ``config.json``, and plain torch
files that no convention-specific plugin claimed. It runs last.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_tool import hookimpl


@hookimpl(trylast=True)
def ckpt_detect(path: Path, probe: Any) -> Any:
    from ckpt_tool_safetensors.detect import detect

    return detect(path, probe)


@hookimpl
def ckpt_register_layouts(register: Any) -> None:
    from ckpt_tool.ops.layouts import ShardedSafetensorsLayout, SingleFileLayout

    register(
        ShardedSafetensorsLayout(
            "hf",
            "Hugging Face model directory: model.safetensors, or shards + model.safetensors.index.json "
            "(+ config.json, tokenizer)",
        )
    )
    register(SingleFileLayout("safetensors", "one .safetensors file, same tensor names", "safetensors"))
    register(SingleFileLayout("torch", "one torch zip file (.pth/.bin), same tensor names", "torch"))
    from ckpt_tool.ops.rename import SameFilesLayout

    register(SameFilesLayout())


@hookimpl
def ckpt_to_hub(source: Any, options: Any) -> Any:
    from ckpt_tool_safetensors.convert import to_hub

    return to_hub(source, options)


@hookimpl
def ckpt_from_hub(view: Any, layout: str, options: Any) -> Any:
    from ckpt_tool_safetensors.convert import from_hub

    return from_hub(view, layout, options)


@hookimpl
def ckpt_tied_duplicates(source: Any, groups: list[list[str]]) -> Any:
    if getattr(source, "format", None) not in ("safetensors", "torch"):
        return None
    from ckpt_tool_safetensors.split import tied_duplicates

    return tied_duplicates(source, groups)
