"""``ckpt-tool split``: separate LoRA tensors from their base, shard / consolidate a model (byte copies), or extract
a LoRA adapter from a full fine-tune."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ckpt_tool import render


def _human(s: dict[str, Any]) -> str:
    t = s.get("tensors", {})
    dry = s.get("dry_run")
    tail = " (dry run: nothing written)" if dry else ""
    size = render.human_bytes(t.get("bytes", 0))
    if s.get("mode") == "adapter":
        head = "would split" if dry else "split"
        lines = [f"{head} {s['source_format']} {s['kind']} {s['source']} into a base and a {s['convention']} adapter{tail}"]
        for role in ("base", "adapter"):
            part = s.get(f"{role}_out", {})
            lines.append(
                f"  {role}: {part['tensors']} tensors, {render.human_bytes(part['bytes'])} -> {part['path']}"
            )
        lora = s.get("lora") or {}
        if lora:
            targets = lora.get("targets")
            targets = ", ".join(targets) if isinstance(targets, list) else targets
            lines.append(
                f"  LoRA: r={lora.get('r')}, alpha={lora.get('alpha')} ({lora.get('alpha_source')}), "
                f"{lora.get('modules')} modules, targets: {targets}"
            )
    else:
        limit = s.get("max_shard_bytes")
        what = f"{s['source_format']} {s['kind']} {s['source']}"
        if not limit or s.get("shards") == 1:
            head = "would consolidate" if dry else "consolidated"
            lines = [f"{head} {what} into one model.safetensors{tail}"]
        else:
            head = "would shard" if dry else "sharded"
            lines = [f"{head} {what} into {s.get('shards')} shards of at most {limit:,} bytes{tail}"]
    if dry:
        lines.append(f"  {t.get('written', 0)} tensors, {size}")
    else:
        lines.append(
            f"  {t.get('written', 0)} tensors written ({t.get('copied', 0)} copied unchanged, {t.get('cast', 0)} cast), "
            f"{size}, {s.get('seconds', 0):.2f} s"
        )
    verb = "would write" if dry else "wrote"
    lines.extend(f"  {verb} {p}" for p in s.get("outputs", []))
    lines.extend(f"  removed {p}" for p in s.get("removed", []))
    lines.extend(f"  note: {n}" for n in s.get("notes", []))
    lines.extend(f"  warning: {w}" for w in s.get("warnings", []))
    return "\n".join(lines)


def _extracted(s: dict[str, Any]) -> str:
    """The per-module table of ``--extract-lora`` and the lines around it."""
    dry = s.get("dry_run")
    lora = s.get("adapter_config") or {}
    head = "would extract" if dry else "extracted"
    lines = [
        f"{head} a rank-{s['rank']} PEFT LoRA adapter from {s['source']} against the base {s['base']}"
        + (" (dry run: nothing written)" if dry else ""),
        f"  r={lora.get('r')}, lora_alpha={lora.get('lora_alpha')} (scale 1), {len(s.get('modules', []))} modules, "
        f"factors stored as {s.get('factor_dtype')}",
    ]
    rows = []
    for m in s.get("modules", []):
        row = [m["module"], "x".join(map(str, m["shape"])), m["rank"]]
        row += [f"{m[k]:.4%}" if k in m else "-" for k in ("energy", "error", "optimum")]
        rows.append(row)
    lines.append(render.table(rows, ["module", "shape", "rank", "energy kept", "rel. error", "optimum"]))
    t = s.get("tensors", {})
    if not dry:
        lines.append(f"  {t.get('written', 0)} tensors, {render.human_bytes(t.get('bytes', 0))}, {s.get('seconds', 0):.2f} s")
    verb = "would write" if dry else "wrote"
    lines.extend(f"  {verb} {p}" for p in s.get("outputs", []))
    lines.extend(f"  note: {n}" for n in s.get("notes", []))
    lines.extend(f"  warning: {w}" for w in s.get("warnings", []))
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    @app.command("split", no_args_is_help=True)
    def split_cmd(
        src: Annotated[Path, typer.Argument(metavar="SRC", help="The checkpoint: a LitGPT LoRA model or PEFT model saved whole (with --base-out/--adapter-out), or any model (with --out), or a full fine-tune (with --extract-lora).")],
        base_out: Annotated[Path | None, typer.Option("--base-out", help="Write the clean base model here (a directory).")] = None,
        adapter_out: Annotated[Path | None, typer.Option("--adapter-out", help="Write the adapter here (a directory), in its own convention.")] = None,
        out: Annotated[Path | None, typer.Option("--out", help="Shard or consolidate the model into this directory (model-0000i-of-0000K.safetensors + index); with --extract-lora, the adapter directory.")] = None,
        max_shard_size: Annotated[str | None, typer.Option("--max-shard-size", help="Largest safetensors shard, e.g. 5GB, 500MB, 2GiB; 0 writes one model.safetensors. Default 5GB.")] = None,
        lora_alpha: Annotated[str | None, typer.Option("--lora-alpha", help="The LoRA alpha the adapter was trained with, when no config beside the input records it.")] = None,
        force: Annotated[bool, typer.Option("--force", help="Overwrite existing output files.")] = False,
        dry_run: Annotated[bool, typer.Option("--dry-run", help="Check everything and list the outputs; write nothing.")] = False,
        json_out: Annotated[bool, typer.Option("--json", help="Print a JSON summary on stdout.")] = False,
        extract_lora: Annotated[bool, typer.Option("--extract-lora", help="Extract a PEFT LoRA adapter from a full fine-tune (with --base, --rank, --out).")] = False,
        base: Annotated[Path | None, typer.Option("--base", metavar="BASE", help="--extract-lora: the base model the fine-tune was trained from.")] = None,
        rank: Annotated[str | None, typer.Option("--rank", metavar="R", help="--extract-lora: the LoRA rank R (clamped to each module's smaller side).")] = None,
        targets: Annotated[list[str] | None, typer.Option("--targets", metavar="GLOB", help="--extract-lora: module glob to extract (repeatable; q_proj, 'mlp.*', lm_head). Default: every changed Linear except the output head.")] = None,
    ) -> None:
        """Split a checkpoint by byte copies: LoRA tensors from their base, or a model into shards.

        --base-out B --adapter-out A: a full model that still carries its LoRA tensors (a LitGPT LoRA
        model's whole state dict, a PEFT model saved whole) becomes a clean base with the original key
        names and an adapter in its own convention (LitGPT lit_model.pth.lora + hyperparameters.yaml,
        PEFT adapter_model.safetensors + adapter_config.json).

        --max-shard-size SIZE --out DIR: any model becomes Hugging Face shards + index, cut where
        save_pretrained cuts (0: one model.safetensors); config and tokenizer files are copied.

        --extract-lora --base BASE --rank R --out DIR: the weight deltas of a full fine-tune become a PEFT
        LoRA adapter (rank-R truncated SVD per changed Linear, scale 1, fp32 factors) that
        PeftModel.from_pretrained loads on BASE; a table shows each module's retained energy and error.

        Every tensor is copied bit for bit (except the extracted LoRA factors); nothing is written when
        anything is refused.
        """
        from ckpt_tool.ops.split import split

        summary = split(
            src,
            base_out=base_out,
            adapter_out=adapter_out,
            out=out,
            max_shard_size=max_shard_size,
            lora_alpha=lora_alpha,
            force=force,
            dry_run=dry_run,
            progress=not render.is_quiet() and not json_out,
            extract_lora=extract_lora,
            base=base,
            rank=rank,
            targets=targets or (),
        )
        if json_out:
            render.emit_json(summary)
        else:
            render.out(_extracted(summary) if summary.get("mode") == "extract-lora" else _human(summary))
