"""Built-in plugin: LitGPT checkpoints (today's layouts and every legacy one).

Hook implementations stay thin; the knowledge lives in ``detect`` (what a
file or directory is), ``merge`` (LoRA / adapter-v2 folding, bit-exact with
``litgpt merge_lora``) and ``migrate`` (legacy run directories → ``final/``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ckpt_tool import hookimpl

FORMAT = "lit"
# functions ``migrate --apply`` may call (a journal on disk can name nothing else); see ckpt_tool.ops.migrate_steps
MIGRATE_CONVERTERS = ("ckpt_tool_lit.migrate:upgrade_attn_file",)


@hookimpl
def ckpt_detect(path: Path, probe: Any) -> Any:
    from ckpt_tool_lit.detect import detect

    return detect(path, probe)


@hookimpl
def ckpt_merge_base(adapter: Any) -> Any:
    if adapter.format != FORMAT:
        return None
    from ckpt_tool_lit.merge import find_base

    return find_base(adapter)


@hookimpl
def ckpt_merge_plan(adapter: Any, base: Any, options: Any) -> Any:
    if adapter.format != FORMAT:
        return None
    from ckpt_tool_lit.merge import plan_merge

    return plan_merge(adapter, base, options)


@hookimpl
def ckpt_register_layouts(register: Any) -> None:
    from ckpt_tool.ops.layouts import SingleFileLayout

    register(
        SingleFileLayout(
            "lit", "LitGPT checkpoint directory: lit_model.pth (+ model_config.yaml, tokenizer)", "torch", "lit_model.pth"
        )
    )


@hookimpl
def ckpt_migrate_run(run_dir: Path, root: Path, probe: Any, options: Any) -> Any:
    from ckpt_tool_lit.migrate import propose

    return propose(run_dir, root, probe, options)


@hookimpl
def ckpt_to_hub(source: Any, options: Any) -> Any:
    from ckpt_tool_lit.convert import to_hub

    return to_hub(source, options)


@hookimpl
def ckpt_from_hub(view: Any, layout: str, options: Any) -> Any:
    from ckpt_tool_lit.convert import from_hub

    return from_hub(view, layout, options)


@hookimpl
def ckpt_split_adapter(source: Any, options: Any) -> Any:
    from ckpt_tool_lit.split import plan_split

    return plan_split(source, options)


@hookimpl
def ckpt_repair_files(path: Path, probe: Any) -> Any:
    from ckpt_tool_lit.migrate import repair_folder

    return repair_folder(path, probe)
