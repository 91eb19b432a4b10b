"""Benchmark: ``ckpt-tool merge`` of a PEFT LoRA vs PEFT's own ``merge_and_unload`` vs a plain copy.

Not a test. Builds a ≈1.5 GB bf16 Llama-shaped HF model (hidden 2048, vocab 32000) and an r=16 LoRA on
all linear layers directly as state dicts (no model init), then runs each contender in its own
process and reports wall time and peak anonymous RSS (``RssAnon`` in ``/proc/<pid>/status``, sampled
every ~20 ms, children included):

* ``ckpt-tool merge ADAPTER --base BASE --out OUT`` (streaming, one tensor at a time);
* ``PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base, dtype=bf16), adapter)
  .merge_and_unload().save_pretrained(out)`` - what people run today;
* copying ``model.safetensors`` + fsync - the I/O floor.

Then checks that the two merged outputs are bit-identical. The base is read from the page cache in
every run (the machine is shared; caches are not dropped), so the numbers compare CPU and memory work,
not cold-disk reads. Work files live in ``bench/_work/`` (gitignored) and are deleted at the end
unless ``--keep``.

Usage: ``python bench/merge_peft.py [--layers 14] [--rank 16] [--repeat 3] [--keep]``
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _util import run_measured  # noqa: E402

WORK = HERE / "_work" / "merge_peft"
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


# ------------------------------------------------------------------------------- measurement


def run_checked(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run ``cmd``; return (wall seconds, peak RssAnon bytes of the process tree). Fails loudly."""
    m = run_measured(cmd, env=env)
    if m.returncode != 0:
        sys.exit(f"command failed ({m.returncode}): {' '.join(cmd)}\n{m.stdout}\n{m.stderr}")
    return m.seconds, m.peak_anon


# ------------------------------------------------------------------------------------ inputs


def build_inputs(layers: int, rank: int) -> tuple[Path, Path]:
    """A bf16 Llama-shaped base (config.json + model.safetensors) and an fp32 PEFT LoRA for it."""
    import torch
    from peft import LoraConfig
    from safetensors.torch import save_file
    from transformers import GenerationConfig, LlamaConfig

    base, adapter = WORK / "base", WORK / "adapter"
    base.mkdir(parents=True, exist_ok=True)
    adapter.mkdir(parents=True, exist_ok=True)
    cfg = LlamaConfig(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=layers,
        num_attention_heads=16,
        num_key_value_heads=4,
        vocab_size=32000,
        tie_word_embeddings=False,
        dtype="bfloat16",
    )
    cfg.save_pretrained(base)
    GenerationConfig(bos_token_id=1, eos_token_id=2).save_pretrained(base)
    h, kv, inter = (
        cfg.hidden_size,
        cfg.hidden_size * cfg.num_key_value_heads // cfg.num_attention_heads,
        cfg.intermediate_size,
    )
    shapes = {
        "q_proj": (h, h),
        "k_proj": (kv, h),
        "v_proj": (kv, h),
        "o_proj": (h, h),
        "gate_proj": (inter, h),
        "up_proj": (inter, h),
        "down_proj": (h, inter),
    }
    gen = torch.Generator().manual_seed(0)

    def rnd(*shape: int, std: float = 0.02) -> torch.Tensor:
        return (torch.randn(shape, generator=gen) * std).to(torch.bfloat16)

    sd: dict[str, torch.Tensor] = {"model.embed_tokens.weight": rnd(cfg.vocab_size, h)}
    lora: dict[str, torch.Tensor] = {}
    for i in range(layers):
        p = f"model.layers.{i}"
        sd[f"{p}.input_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        sd[f"{p}.post_attention_layernorm.weight"] = torch.ones(h, dtype=torch.bfloat16)
        for name, (o, n) in shapes.items():
            mod = f"{p}.{'self_attn' if name.endswith(('q_proj', 'k_proj', 'v_proj', 'o_proj')) else 'mlp'}.{name}"
            sd[f"{mod}.weight"] = rnd(o, n)
            lora[f"base_model.model.{mod}.lora_A.weight"] = torch.randn((rank, n), generator=gen) * 0.01
            lora[f"base_model.model.{mod}.lora_B.weight"] = torch.randn((o, rank), generator=gen) * 0.01
    sd["model.norm.weight"] = torch.ones(h, dtype=torch.bfloat16)
    sd["lm_head.weight"] = rnd(cfg.vocab_size, h)
    save_file(sd, base / "model.safetensors", metadata={"format": "pt"})
    save_file(lora, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=list(TARGETS), task_type="CAUSAL_LM"
    ).save_pretrained(adapter)
    return base, adapter


# ------------------------------------------------------------------------------- contenders

PEFT_SCRIPT = textwrap.dedent(
    """
    import sys, torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM
    base, adapter, out = sys.argv[1:4]
    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
    merged.save_pretrained(out)
    """
)

COPY_SCRIPT = textwrap.dedent(
    """
    import os, shutil, sys
    src, dst = sys.argv[1:3]
    os.makedirs(dst, exist_ok=True)
    with open(src, "rb") as fi, open(os.path.join(dst, "model.safetensors"), "wb") as fo:
        shutil.copyfileobj(fi, fo, 1 << 24)
        fo.flush()
        os.fsync(fo.fileno())
    """
)

COMPARE_SCRIPT = textwrap.dedent(
    """
    import glob, os, sys
    import torch
    from safetensors import safe_open
    INT = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
    def index(d):
        idx = {}
        for f in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
            with safe_open(f, "pt") as h:
                idx.update({k: f for k in h.keys()})
        return idx
    a, b = index(sys.argv[1]), index(sys.argv[2])
    assert sorted(a) == sorted(b), sorted(set(a) ^ set(b))[:5]
    bad = []
    for k in a:
        with safe_open(a[k], "pt") as ha, safe_open(b[k], "pt") as hb:
            x, y = ha.get_tensor(k), hb.get_tensor(k)
        same = x.dtype == y.dtype and x.shape == y.shape and torch.equal(x.view(INT[x.element_size()]), y.view(INT[y.element_size()]))
        if not same:
            bad.append(k)
    print(len(a), len(bad), ",".join(bad[:5]))
    """
)


def ckpt_tool_cmd(adapter: Path, base: Path, out: Path) -> list[str]:
    """The ``ckpt-tool merge`` command line (the installed console script)."""
    exe = shutil.which("ckpt-tool")
    if exe is None:
        sys.exit("ckpt-tool is not on PATH: pip install -e . first")
    return [exe, "merge", str(adapter), "--base", str(base), "--out", str(out), "--quiet"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", type=int, default=14)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument(
        "--repeat", type=int, default=3, help="interleaved rounds; the median wall time is reported"
    )
    ap.add_argument("--keep", action="store_true", help="keep bench/_work/merge_peft afterwards")
    args = ap.parse_args()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
    if WORK.exists():
        shutil.rmtree(WORK)
    try:
        t0 = time.perf_counter()
        base, adapter = build_inputs(args.layers, args.rank)
        size = (base / "model.safetensors").stat().st_size
        print(
            f"inputs: base {size / 1e9:.2f} GB bf16 ({args.layers} layers), "
            f"adapter {(adapter / 'adapter_model.safetensors').stat().st_size / 1e6:.1f} MB fp32 r={args.rank}; "
            f"built in {time.perf_counter() - t0:.1f} s"
        )
        ours_cmd = ckpt_tool_cmd(adapter, base, WORK / "out_ours")
        runs = {
            "copy + fsync (I/O floor)": (
                [sys.executable, "-c", COPY_SCRIPT, str(base / "model.safetensors"), str(WORK / "out_copy")],
                {},
            ),
            "ckpt-tool merge": (ours_cmd, {}),
            "peft merge_and_unload + save_pretrained": (
                [sys.executable, "-c", PEFT_SCRIPT, str(base), str(adapter), str(WORK / "out_peft")],
                {},
            ),
        }
        # Rounds interleave the contenders so that load from other processes on a shared machine hits
        # them alike; outputs are removed before each run (ckpt-tool refuses to overwrite).
        samples: dict[str, list[tuple[float, int]]] = {label: [] for label in runs}
        outs = {"copy + fsync (I/O floor)": "out_copy", "ckpt-tool merge": "out_ours"}
        outs["peft merge_and_unload + save_pretrained"] = "out_peft"
        for rnd in range(args.repeat):
            for label, (cmd, extra) in runs.items():
                shutil.rmtree(WORK / outs[label], ignore_errors=True)
                samples[label].append(run_checked(cmd, {**env, **extra}))
                wall, peak = samples[label][-1]
                print(
                    f"  [{rnd + 1}] {label:42s} {wall:7.2f} s   peak RssAnon {peak / 2**20:7.0f} MiB",
                    flush=True,
                )
        results = {
            label: (statistics.median(w for w, _ in s), max(p for _, p in s)) for label, s in samples.items()
        }
        print(f"median of {args.repeat} run(s) (peak memory: max):")
        for label, (wall, peak) in results.items():
            print(f"  {label:46s} {wall:7.2f} s   peak RssAnon {peak / 2**20:7.0f} MiB")
        out = subprocess.run(
            [sys.executable, "-c", COMPARE_SCRIPT, str(WORK / "out_ours"), str(WORK / "out_peft")],
            capture_output=True,
            text=True,
            env=env,
            check=True,
        ).stdout.split()
        n, bad = int(out[0]), int(out[1])
        print(f"bit-identical to PEFT: {'yes' if bad == 0 else 'NO'} ({n - bad}/{n} tensors equal)")
        ours, peft = results["ckpt-tool merge"], results["peft merge_and_unload + save_pretrained"]
        print(
            f"ratios: wall {peft[0] / ours[0]:.1f}x faster than PEFT, peak memory {peft[1] / max(ours[1], 1):.1f}x smaller; "
            f"{ours[0] / results['copy + fsync (I/O floor)'][0]:.1f}x the copy time"
        )
        print(
            json.dumps(
                {
                    k: {"seconds": round(v[0], 2), "peak_rss_anon_mib": round(v[1] / 2**20)}
                    for k, v in results.items()
                }
            )
        )
    finally:
        if not args.keep and WORK.exists():
            shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
