"""``ckpt-tool convert``: another convention (lit / hf / peft) or container (safetensors / torch), exactly."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ckpt_tool import render


class To(str, Enum):
    lit = "lit"
    hf = "hf"
    peft = "peft"
    safetensors = "safetensors"
    torch = "torch"


def _human(s: dict[str, Any]) -> str:
    t = s.get("tensors", {})
    head = "would convert" if s.get("dry_run") else "converted"
    lines = [f"{head} {s['source_format']} {s['kind']} {s['source']} to {s['to']}" + (" (dry run: nothing written)" if s.get("dry_run") else "")]
    size = render.human_bytes(t.get("bytes", 0))
    if s.get("dry_run"):
        lines.append(f"  {t.get('written', 0)} tensors, {size}")
    else:
        lines.append(
            f"  {t.get('written', 0)} tensors written ({t.get('copied', 0)} copied unchanged, {t.get('computed', 0)} "
            f"computed, {t.get('cast', 0)} cast), {size}, {s.get('seconds', 0):.2f} s"
        )
    dtypes = ", ".join(f"{k}: {v}" for k, v in s.get("output_dtypes", {}).items())
    if dtypes:
        lines.append(f"  output dtypes: {dtypes}")
    verb = "would write" if s.get("dry_run") else "wrote"
    lines.extend(f"  {verb} {p}" for p in s.get("outputs", []))
    lines.extend(f"  note: {n}" for n in s.get("notes", []))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("convert", no_args_is_help=True)
    def convert_cmd(
        src: Annotated[Path, typer.Argument(metavar="SRC", help="The checkpoint to convert: a file or directory of any supported format.")],
        to: Annotated[To, typer.Option("--to", help="Target: lit (LitGPT dir), hf (transformers dir), peft (adapter dir), safetensors or torch (same names, another container).", case_sensitive=False)],
        out: Annotated[Path, typer.Option("--out", help="Output directory (lit, hf, peft) or file (safetensors, torch; a directory gets <name>.safetensors / .pth).")],
        dtype: Annotated[str, typer.Option("--dtype", help="auto (keep), bf16, fp16 or fp32 for every floating tensor.")] = "auto",
        max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest safetensors shard for --to hf, e.g. 5GB, 500MB.")] = "5GB",
        base: Annotated[str | None, typer.Option("--base", help="Adapters: the base model to record (base_model_name_or_path).")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and list the outputs; write nothing.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
    ) -> None:
        """Convert between LitGPT, Hugging Face and PEFT conventions, or between .pth and .safetensors.

        Bit-identical to LitGPT's own converters, streaming one tensor group at a time; config.json /
        model_config.yaml / adapter_config.json are generated, tokenizer files copied. Nothing is
        written when anything cannot be converted exactly.
        """
        from ckpt_tool.ops.convert import convert

        summary = convert(
            src,
            to.value,
            out,
            dtype=dtype,
            max_shard_size=max_shard_size,
            base=base,
            force=force,
            dry_run=dry_run,
            progress=not render.is_quiet() and not json_out,
        )
        if json_out:
            render.emit_json(summary)
        else:
            render.out(_human(summary))
