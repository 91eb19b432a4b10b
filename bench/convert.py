"""Benchmark: ``ckpt-tool convert --to hf`` vs ``litgpt convert_from_litgpt`` vs a plain copy + fsync, >= 1.5 GB.

Builds a bf16 LitGPT checkpoint dir (LLaMA-shaped, GQA: n_embd 2048, 16 heads, 4 query groups,
intermediate 5632, vocab 32000; 16 layers = 1.59 GiB) as LitGPT writes it (bare ``lit_model.pth``,
``model_config.yaml`` by ``save_config``, tokenizer files), then times three whole processes, each
starting with ``lit_model.pth`` in the page cache:

* ``copy``: ``shutil.copyfile`` + fsync of ``lit_model.pth`` — the floor for any tool that writes the model;
* ``ckpt-tool convert LIT --to hf --out OUT --quiet`` (model.safetensors + config.json + tokenizer files,
  fsync, atomic rename);
* ``litgpt convert_from_litgpt`` (the real ``convert_lit_checkpoint``, in its own process) + an fsync of
  its ``model.pth``, so both conversions are timed until the bytes are on disk. (LitGPT writes a torch
  file and no config.json: transformers cannot load its output without more work.)

and, as a reference, ``python -c "import torch"``: a conversion that keeps dtypes never imports torch (every
tensor, the q/k/v split included, is byte ranges copied file to file), LitGPT's always does.

Wall time and peak anonymous RSS (RssAnon of the process tree, sampled every 20 ms) are reported, then
``ckpt-tool diff`` checks the two outputs hold the same tensors bit for bit (LitGPT 0.5.13 writes ``model.pth``
with integer storage keys, which ckpt-tool's reader refuses; then the tensors are compared with torch). Working files live in
bench/_work/convert/ and are deleted at the end (``--keep`` keeps them).

Subprocesses run with bytecode caching (``PYTHONDONTWRITEBYTECODE`` is dropped: installs have .pyc files).

Usage: python bench/convert.py [--layers 16] [--repeat 3] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import textwrap
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import COPY, gib, mib, run_measured, warm

WORK = Path(__file__).parent / "_work" / "convert"


def build(n_layer: int) -> tuple[Path, int]:
    """(checkpoint dir, model bytes). Weights are tiled from one random block: cheap, non-trivial."""
    import litgpt
    import torch
    from litgpt.utils import save_config

    cfg = litgpt.Config(
        name="bench-1b", n_layer=n_layer, n_embd=2048, n_head=16, n_query_groups=4, block_size=2048,
        vocab_size=32000, padded_vocab_size=32000, mlp_class_name="LLaMAMLP", intermediate_size=5632,
        norm_class_name="RMSNorm", bias=False, parallel_residual=False, rotary_percentage=1.0,
    )  # fmt: skip
    with torch.device("meta"):
        meta = litgpt.GPT(cfg)
    block = torch.randn(1 << 22, generator=torch.Generator().manual_seed(0)).to(torch.bfloat16) * 0.02
    sd = {}
    for i, (name, p) in enumerate(meta.state_dict().items()):
        n = p.numel()
        reps = -(-(n + 7 * i) // block.numel())
        sd[name] = block.repeat(reps)[7 * i : 7 * i + n].view(p.shape).clone()
    lit = WORK / "lit"
    lit.mkdir(parents=True)
    torch.save(sd, lit / "lit_model.pth")
    save_config(cfg, lit)
    (lit / "tokenizer.json").write_text("{}")
    (lit / "tokenizer_config.json").write_text("{}")
    return lit, sum(t.numel() * t.element_size() for t in sd.values())


LITGPT = textwrap.dedent(
    """
    import contextlib, io, os, sys
    from pathlib import Path
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint
    with contextlib.redirect_stdout(io.StringIO()):
        convert_lit_checkpoint(checkpoint_dir=Path(sys.argv[1]), output_dir=Path(sys.argv[2]))
    fd = os.open(Path(sys.argv[2]) / "model.pth", os.O_RDONLY); os.fsync(fd); os.close(fd)
    """
)


SAME = textwrap.dedent(
    """
    import sys, torch
    from safetensors.torch import load_file
    a, b = load_file(sys.argv[1]), torch.load(sys.argv[2], weights_only=True, mmap=True)
    same = sorted(a) == sorted(b) and all(a[k].dtype == b[k].dtype and torch.equal(
        a[k].view(torch.uint8), b[k].contiguous().view(torch.uint8)) for k in a)
    print(f"torch comparison: {'identical' if same else 'DIFFERENT'}: {len(a)} tensors bit-equal" if same else "DIFFERENT")
    sys.exit(0 if same else 1)
    """
)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3, help="runs of each contender (interleaved); medians reported")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    py = sys.executable
    # an installed tool runs from .pyc files; without them each run compiles ckpt-tool's modules (~0.5 s)
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    run_measured([py, "-m", "ckpt_tool", "--help"])
    if WORK.exists():
        shutil.rmtree(WORK)
    lit, size = build(args.layers)
    weights = lit / "lit_model.pth"
    print(f"model: {args.layers} layers, {gib(size)} bf16 ({size:,} bytes), LLaMA-shaped GQA")
    runs: dict[str, list] = {"copy": [], "ckpt-tool convert": [], "litgpt convert_from_litgpt": [], "(import torch alone)": []}
    try:
        for _ in range(args.repeat):
            for d in ("copy.pth", "hf", "litgpt"):
                p = WORK / d
                shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
            warm(weights)
            runs["copy"].append(run_measured([py, "-c", COPY, str(weights), str(WORK / "copy.pth")]))
            warm(weights)
            runs["ckpt-tool convert"].append(
                run_measured([py, "-m", "ckpt_tool", "convert", str(lit), "--to", "hf", "--out", str(WORK / "hf"), "--quiet"])
            )
            warm(weights)
            runs["litgpt convert_from_litgpt"].append(run_measured([py, "-c", LITGPT, str(lit), str(WORK / "litgpt")]))
            runs["(import torch alone)"].append(run_measured([py, "-c", "import torch"]))
            for name, ms in runs.items():
                if ms[-1].returncode != 0:
                    sys.exit(f"{name} failed ({ms[-1].returncode}):\n{ms[-1].stderr[-2000:]}")
        check = run_measured(
            [py, "-m", "ckpt_tool", "diff", str(WORK / "hf" / "model.safetensors"), str(WORK / "litgpt" / "model.pth")]
        )
        identical = check.returncode == 0
        if not identical and "is not a string" in check.stderr:  # LitGPT's integer storage keys: compare with torch
            check = run_measured([py, "-c", SAME, str(WORK / "hf" / "model.safetensors"), str(WORK / "litgpt" / "model.pth")])
            identical = check.returncode == 0
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)

    def med(name: str, attr: str) -> float:
        return statistics.median(getattr(m, attr) for m in runs[name])

    copy = med("copy", "seconds")
    print(f"\n{'':28} {'wall (median)':>14} {'runs':>20} {'vs copy':>8} {'peak anon':>10} {'% model':>8}")
    for name, ms in runs.items():
        wall, peak = med(name, "seconds"), med(name, "peak_anon")
        each = " ".join(f"{m.seconds:.2f}" for m in ms)
        print(f"{name:28} {wall:13.2f}s {each:>20} {wall / copy:7.2f}x {mib(int(peak)):>10} {100 * peak / size:7.1f}%")
    ck, lg = med("ckpt-tool convert", "seconds"), med("litgpt convert_from_litgpt", "seconds")
    ck_peak = med("ckpt-tool convert", "peak_anon")
    print(f"\nckpt-tool vs litgpt: {ck / lg:.2f}x wall, "
          f"{ck_peak / max(med('litgpt convert_from_litgpt', 'peak_anon'), 1):.2f}x peak anon")
    print(f"targets: wall <= 1.3x copy: {'PASS' if ck <= 1.3 * copy else 'MISS'} ({ck / copy:.2f}x); "
          f"peak anon <= 25% of model: {'PASS' if ck_peak <= 0.25 * size else 'MISS'} ({100 * ck_peak / size:.1f}%)")
    last = check.stdout.strip().splitlines()[-1] if check.stdout.strip() else check.stderr.strip()
    print(f"ckpt-tool diff of the two outputs: {last}")
    print(json.dumps({
        "model_bytes": size,
        "results": {k: [{"seconds": round(m.seconds, 3), "peak_anon_bytes": m.peak_anon} for m in ms] for k, ms in runs.items()},
        "bit_identical": identical,
    }))
    if not identical:
        sys.exit("the two conversions differ")


if __name__ == "__main__":
    main()
