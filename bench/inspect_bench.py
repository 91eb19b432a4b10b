"""Benchmark: ``ckpt-tool inspect`` vs ``torch.load(mmap=True, weights_only=True)`` on a >= 1.5 GB checkpoint.

Both are timed as whole processes (interpreter start included), because that is
what a user waits for. Also checks that ``inspect`` never imports torch
(``PYTHONPROFILEIMPORTTIME=1``).

Usage: python bench/inspect_bench.py [--gb 1.6] [--repeat 5] [--keep]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _util import time_process

WORK = Path(__file__).parent / "_work" / "inspect"


def build(gb: float) -> tuple[Path, Path]:
    """A LitGPT-shaped bf16 base (bare dict) as .pth and the same tensors as .safetensors."""
    import torch
    from safetensors.torch import save_file

    WORK.mkdir(parents=True, exist_ok=True)
    pth, st = WORK / "lit_model.pth", WORK / "model.safetensors"
    if pth.exists() and st.exists():
        return pth, st
    n_embd, inter, vocab = 2048, 5632, 32000
    per_layer = 2 * n_embd + (2048 + 2 * 256) * n_embd + n_embd * n_embd + 3 * inter * n_embd
    n_layer = max(1, int((gb * 1e9 / 2 - 2 * vocab * n_embd) / per_layer) + 1)
    sd = {"transformer.wte.weight": torch.zeros(vocab, n_embd, dtype=torch.bfloat16)}
    for i in range(n_layer):
        p = f"transformer.h.{i}."
        for name, shape in (("norm_1.weight", (n_embd,)), ("attn.qkv.weight", (2048 + 512, n_embd)),
                            ("attn.proj.weight", (n_embd, n_embd)), ("norm_2.weight", (n_embd,)),
                            ("mlp.fc_1.weight", (inter, n_embd)), ("mlp.fc_2.weight", (inter, n_embd)),
                            ("mlp.proj.weight", (n_embd, inter))):
            sd[p + name] = torch.zeros(shape, dtype=torch.bfloat16)
    sd["transformer.ln_f.weight"] = torch.zeros(n_embd, dtype=torch.bfloat16)
    sd["lm_head.weight"] = torch.zeros(vocab, n_embd, dtype=torch.bfloat16)
    torch.save(sd, pth)
    save_file(sd, st)
    return pth, st


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.6)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--keep", action="store_true", help="keep the generated files")
    args = ap.parse_args()
    pth, st = build(args.gb)
    py = sys.executable
    rows = []
    for path in (pth, st):
        size = path.stat().st_size
        ours = time_process([py, "-m", "ckpt_tool", "inspect", "--json", str(path)], args.repeat)
        if path.suffix == ".pth":
            peer_code = f"import torch; sd = torch.load({str(path)!r}, mmap=True, weights_only=True); len(sd)"
            peer_name = "torch.load(mmap=True, weights_only=True)"
        else:
            peer_code = (f"from safetensors import safe_open\nwith safe_open({str(path)!r}, 'pt') as f: "
                         "[f.get_slice(k).get_shape() for k in f.keys()]")
            peer_name = "safetensors safe_open (framework=pt)"
        peer = time_process([py, "-c", peer_code], args.repeat)
        env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
        proc = subprocess.run([py, "-m", "ckpt_tool", "inspect", str(path)], capture_output=True, text=True, env=env)
        torch_imported = any(line.rstrip().endswith(" torch") for line in proc.stderr.splitlines())
        rows.append((path.name, size, ours, peer_name, peer, torch_imported))
    print(f"{'file':22} {'size':>9}  {'ckpt-tool inspect':>18}  {'peer':>8}  {'ratio':>6}  torch imported")
    for name, size, ours, peer_name, peer, imported in rows:
        print(f"{name:22} {size / 1e9:7.2f}GB  {ours[0]:16.3f} s  {peer[0]:6.3f} s  {peer[0] / ours[0]:5.1f}x  "
              f"{'YES' if imported else 'no'}   (peer: {peer_name}; median of {args.repeat}, min {ours[1]:.3f} s vs {peer[1]:.3f} s)")
    if not args.keep:
        shutil.rmtree(WORK)


if __name__ == "__main__":
    main()
