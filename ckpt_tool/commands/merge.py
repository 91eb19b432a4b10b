"""``ckpt-tool merge``: fold an adapter into its base, streaming, crash-safe."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ckpt_tool import render


def _human(summary: dict) -> str:
    t = summary.get("tensors", {})
    dry = summary.get("dry_run")
    what = f"{summary.get('adapter_type') or ''} adapter".strip()
    head = "would merge" if dry else "merged"
    lines = [f"{head} {what} {summary['adapter']} into {summary['base']}" + (" (dry run: nothing written)" if dry else "")]
    changed = (summary.get("lora") or {}).get("modules", t.get("changed", 0))
    size = render.human_bytes(t.get("bytes", 0))
    if dry:
        lines.append(f"  {changed} modules to change; {t.get('written', 0)} tensors, {size}")
    else:
        lines.append(
            f"  {changed} modules changed; {t.get('written', 0)} tensors written ({t.get('copied', 0)} copied "
            f"unchanged, {t.get('cast', 0)} cast), {size}, {summary.get('seconds', 0):.2f} s"
        )
    hp = summary.get("hyperparameters") or {}
    if hp.get("given"):
        lora = summary.get("lora") or {}
        shown = [f"lora_alpha={lora.get('alpha')}"] if "alpha" in hp["given"] else []
        flags = [g for g in hp["given"] if g not in ("alpha", "r")]
        if flags:
            shown.append("targets " + (",".join(g for g in flags if lora.get(g)) or "none"))
        lines.append(f"  given on the command line: {'; '.join(shown)}")
    base = summary.get("recorded_base") or {}
    if base.get("resolved") and base.get("how") == "Hugging Face cache" and not base.get("base_given"):
        lines.append(
            f"  base {base.get('id')} found in the local Hugging Face cache ({base.get('revision') or 'main'} = "
            f"commit {str(base.get('commit'))[:12]}, nothing downloaded)"
        )
    dtypes = ", ".join(f"{k}: {v}" for k, v in summary.get("output_dtypes", {}).items())
    if dtypes:
        lines.append(f"  output dtypes: {dtypes}")
    verb = "would write" if dry else "wrote"
    lines.extend(f"  {verb} {p}" for p in summary.get("outputs", []))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("merge", no_args_is_help=True)
    def merge_cmd(
        adapter: Annotated[Path, typer.Argument(metavar="ADAPTER", help="The adapter: a LitGPT final/ or step-*/ dir, a PEFT adapter dir, or its weights file.")],
        base: Annotated[Path | None, typer.Option("--base", help="The base model (default: the one the adapter records).")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Write a complete checkpoint directory here.")] = None,
        dtype: Annotated[str, typer.Option("--dtype", help="auto (LitGPT: the LoRA dtype, as litgpt merge_lora; PEFT: the base's config.json dtype, as from_pretrained), bf16, fp16 or fp32 (LitGPT: cast of the result; PEFT: the dtype the base is loaded in).")] = "auto",
        to: Annotated[str | None, typer.Option("--to", metavar="[lit|hf]", help="Output convention and container: lit (lit_model.pth) or hf (model.safetensors, sharded past --max-shard-size, + config.json). Default: the adapter's own.")] = None,
        max_shard_size: Annotated[str, typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB.")] = "5GB",
        force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Validate and say what would be written; write nothing.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
        adapter_name: Annotated[str | None, typer.Option("--adapter", help="Which adapter of a multi-adapter PEFT dir.")] = None,
        lora_alpha: Annotated[str | None, typer.Option("--lora-alpha", metavar="ALPHA", help="LitGPT adapters: the lora_alpha to merge with, overriding hyperparameters.yaml (for runs whose hyperparameters are lost). Refused for PEFT adapters: adapter_config.json decides.")] = None,
        lora_targets: Annotated[str | None, typer.Option("--lora-targets", metavar="LIST", help="LitGPT adapters: the LoRA targets, e.g. query,value (of query, key, value, projection, mlp, head), overriding hyperparameters.yaml. Refused for PEFT adapters.")] = None,
    ) -> None:
        """Merge a LoRA adapter into its base model, bit-exact with the training library's own merge.

        Streams one tensor at a time (memory ≈ the largest changed tensor), refuses
        mismatched inputs before writing anything, never leaves a partial file, and
        never overwrites an existing output without --force.
        """
        from ckpt_tool.ops.merge import merge

        summary = merge(
            adapter,
            base=base,
            out=out,
            dtype=dtype,
            to=to,
            max_shard_size=max_shard_size,
            force=force,
            dry_run=dry_run,
            adapter_name=adapter_name,
            progress=not render.is_quiet() and not json_out,
            lora_alpha=lora_alpha,
            lora_targets=lora_targets,
        )
        for warning in summary.get("warnings", []):  # on stderr even with --quiet / --json: they change the result
            typer.echo(f"warning: {warning}", err=True)
        if json_out:
            render.emit_json(summary)
        else:
            render.out(_human(summary))
