"""Benchmark: ``ckpt-tool split --extract-lora`` vs ``mergekit-extract-lora`` on a >= 1 GB base/fine-tune pair.

Builds, at bench time, a Llama-shaped random bf16 Hugging Face model and a fine-tune of it whose every
projection weight moved by a rank-8 update plus small full-rank noise (then rounded to bf16, as a real
fine-tune is stored); norms and embeddings are left alone, so both tools extract the same Linears.
Default shape (``--hidden 512 --inter 1408 --heads 8 --kv 2 --vocab 256000 --layers 12``, untied): 0.59 GB
per model, 1.18 GB for the pair; most bytes are the (unchanged, read but not decomposed) embedding and head,
the work is 84 Linears of width 512. The SVD cost grows with min(out, in)² · max(out, in), so on the shared
2-core box wider models take minutes per layer for both tools; ``--hidden 1024 --inter 2816`` gives a
wider data point.

Both tools run as whole processes with their inputs in the page cache and no dirty pages (``os.sync()``),
rank 16, round by round:

* ``ckpt-tool split FT --extract-lora --base BASE --rank 16 --out A --quiet``;
* ``mergekit-extract-lora --model FT --base-model BASE --out-path M --max-rank 16 --skip-undecomposable
  -e 'embed_tokens|lm_head' --no-copy-tokenizer --quiet`` from its own venv (``--mergekit``; its
  defaults otherwise: fp32 ``torch.linalg.svd``, factors stored in the model's dtype, scale split
  ``sqrt(S)`` between A and B).

Wall time and peak anonymous RSS (RssAnon of the process tree, see ``_util.py``) per round, then the
median. Afterwards each adapter is scored against the real deltas (fp64): per module the relative
error ``||D - s·B@A||_F / ||D||_F`` and the retained energy ``||s·B@A||_F² / ||D||_F²``, next to the
Eckart-Young optimum (ckpt-tool's reported spectrum, cross-checked with ``torch.linalg.svdvals`` in fp64
on a few modules). Work files live in ``bench/_work/extract_lora/`` and are deleted unless ``--keep``.

Usage: python bench/extract_lora.py [--layers 12] [--hidden 512] [--inter 1408] [--heads 8] [--kv 2] [--vocab 256000]
       [--rank 16] [--repeat 1] [--mergekit /work/venvs/mergekit] [--keep]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import gib, mib, run_measured, warm

WORK = Path(__file__).parent / "_work" / "extract_lora"
HIDDEN, HEADS, KV, INTER, VOCAB = 512, 8, 2, 1408, 256000
PROJ = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
        "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def shapes(n_layer: int) -> dict[str, tuple[int, ...]]:
    head = HIDDEN // HEADS
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    dims = {"self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (KV * head, HIDDEN),
            "self_attn.v_proj": (KV * head, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
            "mlp.gate_proj": (INTER, HIDDEN), "mlp.up_proj": (INTER, HIDDEN), "mlp.down_proj": (HIDDEN, INTER)}
    for i in range(n_layer):
        p = f"model.layers.{i}."
        out.update({p + k + ".weight": v for k, v in dims.items()})
        out[p + "input_layernorm.weight"] = (HIDDEN,)
        out[p + "post_attention_layernorm.weight"] = (HIDDEN,)
    out.update({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    return out


def build(n_layer: int) -> tuple[Path, Path, int]:
    import torch
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    base: dict[str, torch.Tensor] = {}
    ft: dict[str, torch.Tensor] = {}
    for name, shape in shapes(n_layer).items():
        w = torch.ones(shape) if len(shape) == 1 else 0.02 * torch.randn(shape, generator=g)
        base[name] = w.to(torch.bfloat16)
        if name.endswith("proj.weight"):
            o, i = shape
            low = 0.004 * torch.randn(o, 8, generator=g) @ torch.randn(8, i, generator=g) / 8**0.5
            noise = 0.0005 * torch.randn(o, i, generator=g)
            ft[name] = (base[name].float() + low + noise).to(torch.bfloat16)
        else:
            ft[name] = base[name]
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV,
        "num_hidden_layers": n_layer, "vocab_size": VOCAB, "tie_word_embeddings": False, "dtype": "bfloat16",
        "torch_dtype": "bfloat16", "rms_norm_eps": 1e-6, "max_position_embeddings": 2048, "hidden_act": "silu",
    }
    dirs = []
    for label, sd in (("base", base), ("ft", ft)):
        d = WORK / label
        d.mkdir(parents=True, exist_ok=True)
        save_file(sd, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config, indent=2))
        dirs.append(d)
    return dirs[0], dirs[1], sum(t.numel() * t.element_size() for t in base.values())


def score(base: Path, ft: Path, adapter: Path, modules: list[str]) -> dict[str, dict[str, float]]:
    """Per module: relative error and retained energy of the adapter's scaled B@A against the real delta."""
    from safetensors import safe_open

    cfg = json.loads((adapter / "adapter_config.json").read_text())
    out: dict[str, dict[str, float]] = {}
    with safe_open(base / "model.safetensors", "pt") as fb, safe_open(ft / "model.safetensors", "pt") as ff, \
            safe_open(adapter / "adapter_model.safetensors", "pt") as fa:
        for m in modules:
            d = ff.get_tensor(m + ".weight").double() - fb.get_tensor(m + ".weight").double()
            a = fa.get_tensor(f"base_model.model.{m}.lora_A.weight").double()
            b = fa.get_tensor(f"base_model.model.{m}.lora_B.weight").double()
            leaf = m.rsplit(".", 1)[-1]
            r = (cfg.get("rank_pattern") or {}).get(leaf, cfg["r"])
            alpha = (cfg.get("alpha_pattern") or {}).get(leaf, cfg["lora_alpha"])
            ba = (alpha / r) * (b @ a)
            n2 = float((d * d).sum())
            out[m] = {"error": float((d - ba).norm()) / n2**0.5, "energy": float((ba * ba).sum()) / n2,
                      "dtype": fa.get_slice(f"base_model.model.{m}.lora_A.weight").get_dtype()}
    return out


def main() -> None:
    global HIDDEN, INTER, HEADS, KV, VOCAB
    ap = argparse.ArgumentParser()
    ap.add_argument("--layers", type=int, default=12)
    for flag, value in (("hidden", HIDDEN), ("inter", INTER), ("heads", HEADS), ("kv", KV), ("vocab", VOCAB)):
        ap.add_argument(f"--{flag}", type=int, default=value)
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--mergekit", default="/work/venvs/mergekit")
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    HIDDEN, INTER, HEADS, KV, VOCAB = args.hidden, args.inter, args.heads, args.kv, args.vocab
    import torch

    py = sys.executable
    mk = Path(args.mergekit) / "bin" / "mergekit-extract-lora"
    if WORK.exists():
        shutil.rmtree(WORK)
    base, ft, size = build(args.layers)
    print(f"pair: hidden {HIDDEN}, intermediate {INTER}, heads {HEADS}/{KV}, vocab {VOCAB}, {args.layers} layers, {gib(size)} bf16 each ({gib(2 * size)} together), rank {args.rank}; "
          f"torch threads {torch.get_num_threads()}")
    ours, theirs = WORK / "ckpt", WORK / "mergekit"
    cmds = {
        "ckpt-tool": [py, "-m", "ckpt_tool", "split", str(ft), "--extract-lora", "--base", str(base),
                      "--rank", str(args.rank), "--out", str(ours), "--json", "--quiet"],
        "mergekit": [str(mk), "--model", str(ft), "--base-model", str(base), "--out-path", str(theirs),
                     "--max-rank", str(args.rank), "--skip-undecomposable", "-e", "embed_tokens|lm_head",
                     "--no-copy-tokenizer", "--quiet"],
    }
    if not mk.exists():
        print(f"mergekit-extract-lora not found at {mk}: measuring ckpt-tool alone")
        del cmds["mergekit"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    runs: dict[str, list] = {n: [] for n in cmds}
    summary = None
    try:
        for r in range(args.repeat):
            for name, cmd in cmds.items():
                shutil.rmtree(ours if name == "ckpt-tool" else theirs, ignore_errors=True)
                for d in (base, ft):
                    warm(d / "model.safetensors")
                os.sync()
                m = run_measured(cmd, env=env)
                runs[name].append(m)
                if m.returncode != 0:
                    sys.exit(f"{name} failed ({m.returncode}):\n{m.stderr[-3000:]}")
                if name == "ckpt-tool":
                    summary = json.loads(m.stdout)
            print(f"round {r + 1}: " + "  ".join(f"{n} {ms[-1].seconds:6.1f}s {mib(ms[-1].peak_anon):>9}" for n, ms in runs.items()))
        assert summary is not None
        modules = [row["module"] for row in summary["modules"]]
        optimum = {row["module"]: row["optimum"] for row in summary["modules"]}
        scores = {"ckpt-tool": score(base, ft, ours, modules)}
        if "mergekit" in cmds:
            scores["mergekit"] = score(base, ft, theirs, modules)
        check = []
        from safetensors import safe_open
        with safe_open(base / "model.safetensors", "pt") as fb, safe_open(ft / "model.safetensors", "pt") as ff:
            for m in modules[:: max(1, len(modules) // 3)][:3]:
                d = ff.get_tensor(m + ".weight").double() - fb.get_tensor(m + ".weight").double()
                s = torch.linalg.svdvals(d)
                check.append((m, float(s[args.rank:].square().sum().sqrt() / s.square().sum().sqrt()), optimum[m]))
        sizes = {n: (p / "adapter_model.safetensors").stat().st_size for n, p in (("ckpt-tool", ours), ("mergekit", theirs))
                 if (p / "adapter_model.safetensors").exists()}
    finally:
        if not args.keep:
            shutil.rmtree(WORK, ignore_errors=True)

    med = {n: statistics.median(m.seconds for m in ms) for n, ms in runs.items()}
    peak = {n: max(m.peak_anon for m in ms) for n, ms in runs.items()}
    print(f"\nmedian of {args.repeat} (peak anon: max)  {'wall':>8} {'peak anon':>10} {'adapter':>10} "
          f"{'factor dtype':>12} {'err/opt mean':>12} {'err/opt max':>11} {'energy mean':>11}")
    for n in runs:
        sc = scores[n]
        ratio = [sc[m]["error"] / optimum[m] for m in modules if optimum[m] > 0]
        print(f"{n:34} {med[n]:7.1f}s {mib(peak[n]):>10} {mib(sizes.get(n, 0)):>10} {sc[modules[0]]['dtype']:>12} "
              f"{statistics.mean(ratio):12.5f} {max(ratio):11.5f} {statistics.mean(sc[m]['energy'] for m in modules):11.5f}")
    print(f"optimum (Eckart-Young) relative error: mean {statistics.mean(optimum.values()):.5f}; "
          "cross-check with fp64 svdvals: " + ", ".join(f"{m}: {a:.6f} vs {b:.6f}" for m, a, b in check))
    print(json.dumps({
        "model_bytes": size, "rank": args.rank, "modules": len(modules),
        "rounds": {n: [{"seconds": round(m.seconds, 2), "peak_anon_bytes": m.peak_anon} for m in ms] for n, ms in runs.items()},
        "median_seconds": {n: round(v, 2) for n, v in med.items()},
        "error_over_optimum_max": {n: max(scores[n][m]["error"] / optimum[m] for m in modules if optimum[m] > 0) for n in runs},
    }))


if __name__ == "__main__":
    main()
