"""Benchmark: ``ckpt-tool split`` (shard, then consolidate) vs a plain copy + fsync, on a >= 1.5 GB model.

Builds a Llama-shaped bf16 Hugging Face model directory (hidden 2048, GQA 16/4,
intermediate 5632, vocab 32000, untied; 16 layers = 1.69 GB, one
``model.safetensors`` written by ``safetensors.save_file``) and then runs,
round by round and interleaved, three whole processes that each start with
their input in the page cache and no dirty pages (``os.sync()`` before each):

* ``copy``: ``shutil.copyfile`` + fsync of ``model.safetensors`` — the floor for anything that writes the model;
* ``shard``: ``ckpt-tool split SRC --max-shard-size 500MB --out SHARDS --quiet``;
* ``consolidate``: ``ckpt-tool split SHARDS --max-shard-size 0 --out ONE --quiet``.

Wall time and peak anonymous RSS (RssAnon of the process tree, sampled every
20 ms; memory-mapped input and page cache are file-backed and not counted)
are reported per round, then the median. At the end the consolidated file is
compared with the original byte for byte. Work files live in
``bench/_work/split/`` and are deleted at the end (``--keep`` keeps them).

Usage: python bench/split.py [--layers 16] [--shard 500MB] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import struct
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import gib, mib, run_measured, warm

WORK = Path(__file__).parent / "_work" / "split"
HIDDEN, HEADS, KV, INTER, VOCAB = 2048, 16, 4, 5632, 32000


def build(n_layer: int) -> tuple[Path, int]:
    """An HF model dir; weights tiled from one random block (cheap to make, not all-equal bytes)."""
    import torch
    from safetensors.torch import save_file

    src = WORK / "src"
    src.mkdir(parents=True, exist_ok=True)
    block = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16)
    head = HIDDEN // HEADS
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        shapes.update({
            p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
            p + "self_attn.k_proj.weight": (KV * head, HIDDEN),
            p + "self_attn.v_proj.weight": (KV * head, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN),
            p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,),
            p + "post_attention_layernorm.weight": (HIDDEN,),
        })
    shapes.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    sd = {}
    for i, (name, shape) in enumerate(shapes.items()):
        n = 1
        for d in shape:
            n *= d
        salt = 7 * i % block.numel()
        reps = -(-(n + salt) // block.numel())
        sd[name] = block.repeat(reps)[salt : salt + n].view(shape).clone()
    save_file(sd, src / "model.safetensors", metadata={"format": "pt"})
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "num_hidden_layers": n_layer, "vocab_size": VOCAB, "tie_word_embeddings": False, "dtype": "bfloat16",
    }
    (src / "config.json").write_text(json.dumps(config, indent=2))
    (src / "tokenizer.json").write_text("{}")
    return src, sum(t.numel() * t.element_size() for t in sd.values())


COPY = textwrap.dedent(
    """
    import os, shutil, sys
    shutil.copyfile(sys.argv[1], sys.argv[2])
    fd = os.open(sys.argv[2], os.O_RDONLY); os.fsync(fd); os.close(fd)
    """
)


def same_but_provenance(a: Path, b: Path) -> bool:
    """Byte-identical safetensors files, except for the provenance entry ckpt-tool adds to ``__metadata__``:
    the same header otherwise, and the same data section byte for byte (compared 64 MiB at a time)."""

    def header(fh) -> tuple[dict, int]:
        (n,) = struct.unpack("<Q", fh.read(8))
        h = json.loads(fh.read(n))
        meta = h.get("__metadata__") or {}
        meta.pop("ckpt_tool.provenance", None)
        if not meta:
            h.pop("__metadata__", None)
        return h, 8 + n

    with open(a, "rb") as fa, open(b, "rb") as fb:
        (ha, _), (hb, _) = header(fa), header(fb)
        if ha != hb:
            return False
        while True:
            ca, cb = fa.read(1 << 26), fb.read(1 << 26)
            if ca != cb:
                return False
            if not ca:
                return True


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--shard", default="500MB")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    if WORK.exists():
        shutil.rmtree(WORK)
    src, size = build(args.layers)
    model = src / "model.safetensors"
    print(f"model: {args.layers} layers, {gib(size)} bf16 ({size:,} bytes of tensors, one model.safetensors); "
          f"shards of {args.shard}")
    runs: dict[str, list] = {"copy": [], "shard": [], "consolidate": []}
    shards, one = WORK / "shards", WORK / "one"
    identical = None
    try:
        for r in range(args.repeat):
            for d in (shards, one):
                shutil.rmtree(d, ignore_errors=True)
            warm(model)
            os.sync()  # nobody starts with another contender's dirty pages to write back
            runs["copy"].append(run_measured([py, "-c", COPY, str(model), str(WORK / "copy.safetensors")]))
            (WORK / "copy.safetensors").unlink()
            warm(model)
            os.sync()
            runs["shard"].append(run_measured(
                [py, "-m", "ckpt_tool", "split", str(src), "--max-shard-size", args.shard, "--out", str(shards), "--quiet"]
            ))
            for f in shards.glob("*.safetensors"):
                warm(f)
            os.sync()
            runs["consolidate"].append(run_measured(
                [py, "-m", "ckpt_tool", "split", str(shards), "--max-shard-size", "0", "--out", str(one), "--quiet"]
            ))
            for name, ms in runs.items():
                if ms[-1].returncode != 0:
                    sys.exit(f"{name} failed ({ms[-1].returncode}):\n{ms[-1].stderr[-2000:]}")
            line = "  ".join(f"{n} {ms[-1].seconds:5.2f}s {mib(ms[-1].peak_anon):>8}" for n, ms in runs.items())
            print(f"round {r + 1}: {line}")
        identical = same_but_provenance(one / "model.safetensors", model)
        n_shards = len(list(shards.glob("model-*.safetensors")))
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)

    med = {n: statistics.median(m.seconds for m in ms) for n, ms in runs.items()}
    peak = {n: max(m.peak_anon for m in ms) for n, ms in runs.items()}
    print(f"\nmedian of {args.repeat} (peak anon: max)   {'wall':>8} {'vs copy':>8} {'peak anon':>10} {'% model':>8}")
    for n in runs:
        print(f"{n:38} {med[n]:7.2f}s {med[n] / med['copy']:7.2f}x {mib(peak[n]):>10} {100 * peak[n] / size:7.1f}%")
    for n in ("shard", "consolidate"):
        print(f"target {n}: wall <= 1.3x copy: {'PASS' if med[n] <= 1.3 * med['copy'] else 'MISS'} "
              f"({med[n] / med['copy']:.2f}x); peak anon <= 25% of model: "
              f"{'PASS' if peak[n] <= 0.25 * size else 'MISS'} ({100 * peak[n] / size:.1f}%)")
    print(f"shards: {n_shards}; consolidated file byte-identical to the original (but ckpt-tool's provenance entry): {identical}")
    print(json.dumps({
        "model_bytes": size,
        "rounds": {n: [{"seconds": round(m.seconds, 3), "peak_anon_bytes": m.peak_anon} for m in ms] for n, ms in runs.items()},
        "median_seconds": {n: round(v, 3) for n, v in med.items()},
        "bit_identical": identical,
    }))
    if not identical:
        sys.exit("the consolidated model differs from the original")


if __name__ == "__main__":
    main()
