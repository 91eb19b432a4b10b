"""Benchmark ``ckpt-tool migrate`` on a generated tree of many legacy LitGPT runs.

    python bench/migrate.py [--runs 2000] [--dir /tmp/ckpt-bench-migrate] [--keep] [--big-mib 1024]

Builds ``--runs`` run directories cycling through the eras of formats.md §2.2
(2023 LoRA/adapter/full names, iter-N intermediates, Jan 2024 step-N.pth
training states, March 2024 final/lit_model.pth LoRA-only and iter-N/ folders,
lit_config.json, plus runs already in today's layout), each file a real
``torch.save`` (tiny tensors, LitGPT key names). Then times, through the CLI
in a fresh process: the plan with ``--jobs 1`` and ``--jobs N``, ``--apply``,
the no-op second ``--apply``, and ``--undo``. Targets on a 2-core machine:
plan < 10 s, apply < 30 s.

Then the cost of the content fingerprint migrate records for every moved
file at plan time (``migrate_steps.sampled_sha256``: size + sha256 of the
first and last MiB and 8 spread 64 KiB blocks) on one ``--big-mib`` file,
cold (its pages dropped with ``posix_fadvise``) and warm, against a full
sha256 of the same file — the price of recognising weights by content on a
copied tree (``--undo`` after ``cp -r``).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

N_EMBD, VOCAB, R = 8, 16, 4


def _payloads() -> dict[str, bytes]:
    """Serialized files, one per kind, so each run gets real bytes without calling torch 10,000 times."""
    import torch

    g = torch.Generator().manual_seed(0)

    def t(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g)

    p = "transformer.h.0."
    full = {
        "transformer.wte.weight": t(VOCAB, N_EMBD),
        p + "attn.attn.weight": t(3 * N_EMBD, N_EMBD),
        p + "attn.proj.weight": t(N_EMBD, N_EMBD),
        p + "mlp.fc.weight": t(4 * N_EMBD, N_EMBD),
        p + "mlp.proj.weight": t(N_EMBD, 4 * N_EMBD),
        "transformer.ln_f.weight": t(N_EMBD),
        "lm_head.weight": t(VOCAB, N_EMBD),
    }
    lora = {p + "attn.attn.lora_A": t(2 * R, N_EMBD), p + "attn.attn.lora_B": t(2 * N_EMBD, R)}
    adapter = {p + "attn.adapter_wte.weight": t(10, N_EMBD), p + "attn.gating_factor": t(1, 2, 1, 1)}
    state = {
        "model": full,
        "optimizer": {
            "state": {0: {"exp_avg": t(VOCAB, N_EMBD)}},
            "param_groups": [{"lr": 1e-3, "params": [0]}],
        },
        "iter_num": 100,
        "step_count": 25,
    }

    def ser(obj: object) -> bytes:
        buf = io.BytesIO()
        torch.save(obj, buf)
        return buf.getvalue()

    cfg = {
        "org": "EleutherAI",
        "name": "pythia-tiny",
        "n_layer": 1,
        "n_head": 2,
        "n_embd": N_EMBD,
        "vocab_size": VOCAB,
        "block_size": 64,
        "_norm_class": "LayerNorm",
        "_mlp_class": "GptNeoxMLP",
        "condense_ratio": 1,
    }
    return {
        "lora_bare": ser(lora),
        "lora": ser({"model": lora}),
        "adapter": ser({"model": adapter}),
        "full": ser({"model": full}),
        "state": ser(state),
        "lit_config": json.dumps(cfg).encode(),
        "tokenizer": b'{"version": "1.0", "model": {"type": "BPE"}}',
        "model_config": b"name: pythia-tiny\nn_layer: 1\nn_head: 2\nn_embd: 8\n",
    }


def _put(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


ERAS = (
    "2023-05-lora",
    "2023-06-lora",
    "2023-07-adapter",
    "2023-09-full",
    "2024-01-full",
    "2024-03-04-lora",
    "2024-03-06-lora",
    "current",
)


def build(root: Path, runs: int) -> dict[str, int]:
    data = _payloads()
    counts: dict[str, int] = {}
    for i in range(runs):
        era = ERAS[i % len(ERAS)]
        counts[era] = counts.get(era, 0) + 1
        d = root / f"team-{i % 20:02d}" / f"{era}-{i:05d}"
        if era == "2023-05-lora":
            _put(d / "lit_model_lora_finetuned.pth", data["lora_bare"])
            _put(d / "iter-000100.pth", data["lora_bare"])
        elif era == "2023-06-lora":
            _put(d / "lit_model_lora_finetuned.pth", data["lora"])
            _put(d / "iter-000100-ckpt.pth", data["lora"])
            _put(d / "lit_config.json", data["lit_config"])
            _put(d / "tokenizer.json", data["tokenizer"])
        elif era == "2023-07-adapter":
            _put(d / "lit_model_adapter_finetuned.pth", data["adapter"])
            _put(d / "lit_config.json", data["lit_config"])
        elif era == "2023-09-full":
            _put(d / "lit_model_finetuned.pth", data["full"])
            _put(d / "iter-000200-ckpt.pth", data["full"])
            _put(d / "lit_config.json", data["lit_config"])
        elif era == "2024-01-full":
            _put(d / "step-000100.pth", data["state"])
            _put(d / "lit_model_finetuned.pth", data["full"])
            _put(d / "lit_config.json", data["lit_config"])
        elif era == "2024-03-04-lora":
            for folder in ("final", "iter-000100"):
                _put(d / folder / "lit_model.pth", data["lora"])
                _put(d / folder / "lit_config.json", data["lit_config"])
                _put(d / folder / "tokenizer.json", data["tokenizer"])
        elif era == "2024-03-06-lora":
            for folder in ("final", "step-000050"):
                _put(d / folder / "lit_model.pth", data["lora"])
                _put(d / folder / "lit_config.json", data["lit_config"])
                _put(d / folder / "hyperparameters.yaml", b"lora_r: 4\nlora_alpha: 16\n")
        else:
            _put(d / "final" / "lit_model.pth.lora", data["lora"])
            _put(d / "final" / "model_config.yaml", data["model_config"])
            _put(d / "final" / "tokenizer.json", data["tokenizer"])
    return counts


def _cli(*args: str) -> tuple[float, float, dict]:
    """Run the CLI in a fresh process: (wall seconds, CPU seconds user+sys of the child, its JSON)."""
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "ckpt_tool", "migrate", *args, "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    elapsed = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        raise SystemExit(f"migrate {' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")
    return elapsed, cpu, json.loads(proc.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--runs", type=int, default=2000)
    ap.add_argument("--dir", type=Path, default=Path("/tmp/ckpt-bench-migrate"))
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--keep", action="store_true", help="keep the generated tree")
    ap.add_argument("--big-mib", type=int, default=1024, help="size of the file for the fingerprint timing (0: skip)")
    args = ap.parse_args()

    root = args.dir / "runs"
    shutil.rmtree(args.dir, ignore_errors=True)
    t0 = time.perf_counter()
    counts = build(root, args.runs)
    files = sum(len(f) for _, _, f in os.walk(root))
    print(f"generated {args.runs} run dirs ({files} files) in {time.perf_counter() - t0:.1f} s: {counts}")

    t_plan1, c_plan1, plan = _cli(str(root), "--jobs", "1")
    t_planN, c_planN, planN = _cli(str(root), "--jobs", str(args.jobs))
    assert plan["actions"] == planN["actions"], "parallel plan differs from the serial one"
    steps = len(plan["actions"])
    moves = plan["counts"].get("move", 0)
    t_apply, c_apply, applied = _cli(str(root), "--apply", "--jobs", str(args.jobs))
    done = sum(1 for a in applied["actions"] if a.get("status") == "done")
    t_noop, c_noop, noop = _cli(str(root), "--apply", "--jobs", str(args.jobs))
    assert not noop["actions"], "second --apply was not a no-op"
    t_undo, c_undo, undone = _cli(str(root), "--undo")
    assert not undone["skipped"] and not undone.get("missing"), (undone["skipped"][:3], undone.get("missing"))

    rows = [
        ("plan, --jobs 1", t_plan1, c_plan1, 10.0),
        (f"plan, --jobs {args.jobs}", t_planN, c_planN, 10.0),
        ("apply", t_apply, c_apply, 30.0),
        ("second apply (no-op)", t_noop, c_noop, None),
        ("undo", t_undo, c_undo, None),
    ]
    print(
        f"plan: {steps} steps ({moves} renames); applied {done}; mutations during apply: {applied['mutations']}"
    )
    print(f"  {'':<24} {'wall':>9} {'CPU':>9}")
    for name, secs, cpu, target in rows:
        verdict = (
            ""
            if target is None
            else (f"  OK (target < {target:.0f} s)" if secs < target else f"  SLOW (target < {target:.0f} s)")
        )
        print(f"  {name:<24} {secs:7.2f} s {cpu:7.2f} s{verdict}")
    if args.big_mib:
        _fingerprint_cost(args.dir / "big.bin", args.big_mib)
    if not args.keep:
        shutil.rmtree(args.dir, ignore_errors=True)


def _fingerprint_cost(path: Path, mib: int) -> None:
    """Time the sampled fingerprint against a full sha256 on one large file, cold and warm."""
    from ckpt_tool.ops.migrate_steps import full_sha256, sample_ranges, sampled_sha256

    block = os.urandom(1 << 20)
    with open(path, "wb") as fh:
        for i in range(mib):
            fh.write(block[i % 251 :] + block[: i % 251])
        fh.flush()
        os.fsync(fh.fileno())
    size = path.stat().st_size

    def timed(fn, cold: bool) -> float:
        fd = os.open(path, os.O_RDONLY)
        try:
            if cold and hasattr(os, "posix_fadvise"):
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            t0 = time.perf_counter()
            fn(fd)
            return time.perf_counter() - t0
        finally:
            os.close(fd)

    sampled = sum(n for _, n in sample_ranges(size))
    rows = [
        ("sampled, cold", timed(lambda fd: sampled_sha256(fd, size), True)),
        ("sampled, warm", timed(lambda fd: sampled_sha256(fd, size), False)),
        ("full sha256, cold", timed(full_sha256, True)),
        ("full sha256, warm", timed(full_sha256, False)),
    ]
    print(f"fingerprint of one {mib} MiB file (reads {sampled / 2**20:.2f} MiB sampled vs {size / 2**20:.0f} MiB full):")
    for name, secs in rows:
        print(f"  {name:<24} {secs * 1000:9.1f} ms")
    path.unlink()


if __name__ == "__main__":
    main()
