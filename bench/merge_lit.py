"""Benchmark: ``ckpt-tool merge`` vs ``litgpt merge_lora`` vs a plain copy + fsync, on a >= 1.5 GB LitGPT model.

Builds a bf16 LitGPT base (LLaMA-shaped, GQA: n_embd 2048, 16 heads, 4 query
groups, intermediate 5632, vocab 32000) and a LoRA adapter on every target
(q, k, v, projection, mlp, head; r=8, alpha=16, bf16) written the way
``litgpt finetune lora`` writes it, then times three whole processes:

* ``copy``: ``shutil.copyfile`` + fsync of the base file — the floor for any tool that writes the model;
* ``ckpt-tool merge FINAL --base BASE --out OUT --quiet`` (fsyncs, atomic rename);
* ``litgpt merge_lora`` (the real function, in its own process) + an fsync of its output, so both
  merges are measured until the bytes are on disk.

Wall time and peak anonymous RSS (RssAnon of the process tree, sampled every
20 ms) are reported, then ``ckpt-tool diff`` checks the two merges are
bit-identical. Every contender starts with the base in the page cache.
Working files live in bench/_work/merge_lit/ and are deleted at the end
(``--keep`` keeps them).

Usage: python bench/merge_lit.py [--layers 16] [--targets query,value] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import COPY, gib, mib, run_measured, warm

WORK = Path(__file__).parent / "_work" / "merge_lit"
FLAGS = ("query", "key", "value", "projection", "mlp", "head")


def _config(n_layer: int, lora: bool, targets: tuple[str, ...] = FLAGS):
    import litgpt
    import litgpt.lora

    kw = dict(
        name="bench-1b", n_layer=n_layer, n_embd=2048, n_head=16, n_query_groups=4, block_size=2048,
        vocab_size=32000, padded_vocab_size=32000, mlp_class_name="LLaMAMLP", intermediate_size=5632,
        norm_class_name="RMSNorm", bias=False, parallel_residual=False, rotary_percentage=1.0,
    )
    if not lora:
        return litgpt.Config(**kw)
    return litgpt.lora.Config(**kw, lora_r=8, lora_alpha=16, lora_dropout=0.0, **{f"lora_{f}": f in targets for f in FLAGS})


def build(n_layer: int, targets: tuple[str, ...] = FLAGS) -> tuple[Path, Path, int]:
    """(base_dir, final_dir, model bytes). Weights are tiled from one random block: cheap, non-trivial."""
    import torch
    import yaml
    from litgpt.lora import GPT
    from litgpt.utils import save_config

    base, final = WORK / "base", WORK / "out" / "final"
    for d in (base, final):
        d.mkdir(parents=True, exist_ok=True)
        (d / "tokenizer.json").write_text("{}")
        (d / "tokenizer_config.json").write_text("{}")
    cfg = _config(n_layer, lora=True, targets=targets)
    with torch.device("meta"):
        meta = GPT(cfg)
    block = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) * 0.02

    def fill(shape: tuple[int, ...], salt: int) -> torch.Tensor:
        n = 1
        for d in shape:
            n *= d
        reps = -(-(n + salt) // block.numel())
        return block.repeat(reps)[salt : salt + n].view(shape).clone()

    base_sd, lora_sd = {}, {}
    for i, (name, p) in enumerate(meta.state_dict().items()):
        if "lora_" in name:
            lora_sd[name] = fill(tuple(p.shape), 7 * i) * 10
        else:
            base_sd[name.replace("linear.", "")] = fill(tuple(p.shape), 7 * i)
    torch.save(base_sd, base / "lit_model.pth")
    save_config(_config(n_layer, lora=False), base)
    torch.save({"model": lora_sd}, final / "lit_model.pth.lora")
    save_config(cfg, final)
    hp = {"checkpoint_dir": str(base), "out_dir": str(final.parent), "precision": "bf16-true",
          "lora_r": 8, "lora_alpha": 16, "lora_dropout": 0.0, **{f"lora_{f}": f in targets for f in FLAGS}}
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    (final / "prompt_style.yaml").write_text("class_path: litgpt.prompts.Alpaca\n")
    return base, final, sum(t.numel() * t.element_size() for t in base_sd.values())


LITGPT = textwrap.dedent(
    """
    import contextlib, io, os, sys
    from pathlib import Path
    from litgpt.scripts.merge_lora import merge_lora
    with contextlib.redirect_stdout(io.StringIO()):
        merge_lora(checkpoint_dir=Path(sys.argv[1]), pretrained_checkpoint_dir=Path(sys.argv[2]))
    fd = os.open(Path(sys.argv[1]) / "lit_model.pth", os.O_RDONLY); os.fsync(fd); os.close(fd)
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--targets", default=",".join(FLAGS),
                    help="LoRA targets, comma-separated (LitGPT's finetune default is query,value)")
    args = ap.parse_args()
    targets = tuple(t for t in args.targets.split(",") if t)
    if not targets or set(targets) - set(FLAGS):
        sys.exit(f"--targets: choose from {', '.join(FLAGS)}")
    py = sys.executable
    if WORK.exists():
        shutil.rmtree(WORK)
    base, final, size = build(args.layers, targets)
    print(f"model: {args.layers} layers, {gib(size)} bf16 ({size:,} bytes); LoRA r=8 on {', '.join(targets)}")
    results = {}
    try:
        warm(base / "lit_model.pth")
        results["copy"] = run_measured([py, "-c", COPY, str(base / "lit_model.pth"), str(WORK / "copy.pth")])
        (WORK / "copy.pth").unlink()

        warm(base / "lit_model.pth")
        out = WORK / "merged_ckpt_tool"
        results["ckpt-tool merge"] = run_measured(
            [py, "-m", "ckpt_tool", "merge", str(final), "--base", str(base), "--out", str(out), "--quiet"]
        )

        ref = WORK / "litgpt_final"
        shutil.copytree(final, ref)
        warm(base / "lit_model.pth")
        results["litgpt merge_lora"] = run_measured([py, "-c", LITGPT, str(ref), str(base)])
        for name, m in results.items():
            if m.returncode != 0:
                sys.exit(f"{name} failed ({m.returncode}):\n{m.stderr[-2000:]}")

        check = run_measured([py, "-m", "ckpt_tool", "diff", str(out / "lit_model.pth"), str(ref / "lit_model.pth")])
        identical = check.returncode == 0
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)

    copy = results["copy"].seconds
    print(f"\n{'':20} {'wall':>8} {'vs copy':>8} {'peak anon':>10} {'% model':>8}")
    for name, m in results.items():
        print(f"{name:20} {m.seconds:7.2f}s {m.seconds / copy:7.2f}x {mib(m.peak_anon):>10} "
              f"{100 * m.peak_anon / size:7.1f}%")
    ck, lg = results["ckpt-tool merge"], results["litgpt merge_lora"]
    print(f"\nckpt-tool vs litgpt: {ck.seconds / lg.seconds:.2f}x wall, {ck.peak_anon / max(lg.peak_anon, 1):.2f}x peak anon")
    print(f"targets: wall <= 1.5x copy: {'PASS' if ck.seconds <= 1.5 * copy else 'MISS'} "
          f"({ck.seconds / copy:.2f}x); peak anon <= 25% of model: "
          f"{'PASS' if ck.peak_anon <= 0.25 * size else 'MISS'} ({100 * ck.peak_anon / size:.1f}%)")
    print(f"ckpt-tool diff of the two merges: {check.stdout.strip().splitlines()[-1] if check.stdout else check.stderr.strip()}")
    print(json.dumps({
        "model_bytes": size,
        "results": {k: {"seconds": round(m.seconds, 3), "peak_anon_bytes": m.peak_anon} for k, m in results.items()},
        "bit_identical": identical,
    }))
    if not identical:
        sys.exit("the two merges differ")


if __name__ == "__main__":
    main()
