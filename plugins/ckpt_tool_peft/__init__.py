"""Built-in plugin: Hugging Face PEFT adapter directories.

``detect`` reads ``adapter_config.json`` and the adapter tensors' headers and
checks them strictly (PEFT itself loads with ``strict=False``); ``merge``
reproduces ``merge_and_unload()`` bit for bit, one tensor at a time; ``convert``
expresses LoRA adapters in hub naming and writes the ``peft`` layout; ``rename``
plans crash-safe adapter renames and repairs keys damaged by PEFT <= 0.17.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_tool import hookimpl

FORMAT = "peft"


@hookimpl
def ckpt_detect(path: Path, probe: Any) -> Any:
    from ckpt_tool_peft.detect import detect

    return detect(path, probe)


@hookimpl
def ckpt_merge_base(adapter: Any) -> Any:
    if adapter.format != FORMAT:
        return None
    from ckpt_tool_peft.merge import find_base

    return find_base(adapter)


@hookimpl
def ckpt_merge_plan(adapter: Any, base: Any, options: Any) -> Any:
    if adapter.format != FORMAT:
        return None
    from ckpt_tool_peft.merge import plan_merge

    return plan_merge(adapter, base, options)


@hookimpl
def ckpt_register_layouts(register: Any) -> None:
    from ckpt_tool.ops.layouts import SingleFileLayout

    register(
        SingleFileLayout(
            "peft",
            "PEFT adapter directory: adapter_model.safetensors + adapter_config.json",
            "safetensors",
            "adapter_model.safetensors",
        )
    )


@hookimpl
def ckpt_to_hub(source: Any, options: Any) -> Any:
    if source.format != FORMAT:
        return None
    from ckpt_tool_peft.convert import to_hub

    return to_hub(source, options)


@hookimpl
def ckpt_from_hub(view: Any, layout: str, options: Any) -> Any:
    if layout != FORMAT:
        return None
    from ckpt_tool_peft.convert import from_hub

    return from_hub(view, layout, options)


@hookimpl
def ckpt_split_adapter(source: Any, options: Any) -> Any:
    from ckpt_tool_peft.split import plan_split

    return plan_split(source, options)


@hookimpl
def ckpt_rename_adapter(source: Any, old: str, new: str) -> Any:
    if source.format != FORMAT:
        return None
    from ckpt_tool_peft.rename import plan_adapter_rename

    return plan_adapter_rename(source, old, new)


@hookimpl
def ckpt_repair_keys(source: Any, adapter: Any) -> Any:
    if source.format != FORMAT:
        return None
    from ckpt_tool_peft.rename import repair_keys

    return repair_keys(source, adapter)
