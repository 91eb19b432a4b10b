"""Legacy LitGPT run trees for the migrate tests (formats.md §2.2), built with real ``torch.save``.

Each era gets the names, wrappers and configs its releases wrote. Tensors are
tiny (n_embd 8, one layer) but the key names are LitGPT's: before 0.5.5 the
fused attention was ``attn.attn``, so every legacy file uses that name.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
import yaml

N_EMBD, N_HEAD, VOCAB, R = 8, 2, 16, 4
QKV = 3 * N_EMBD  # n_query_groups == n_head

OLD_CONFIG = {  # a mid-2023 lit_config.json (asdict of lit_gpt.Config)
    "org": "EleutherAI",
    "name": "pythia-tiny",
    "block_size": 64,
    "vocab_size": VOCAB,
    "padding_multiple": 16,
    "padded_vocab_size": VOCAB,
    "n_layer": 1,
    "n_head": N_HEAD,
    "n_embd": N_EMBD,
    "rotary_percentage": 0.25,
    "parallel_residual": True,
    "bias": True,
    "n_query_groups": N_HEAD,
    "shared_attention_norm": False,
    "_norm_class": "LayerNorm",
    "norm_eps": 1e-5,
    "_mlp_class": "GptNeoxMLP",
    "intermediate_size": 4 * N_EMBD,
    "condense_ratio": 1,
}

CURRENT_CONFIG = {
    k: v for k, v in OLD_CONFIG.items() if k not in ("org", "_norm_class", "_mlp_class", "condense_ratio")
}
CURRENT_CONFIG.update(
    {
        "hf_config": {"org": "EleutherAI", "name": "pythia-tiny"},
        "norm_class_name": "LayerNorm",
        "mlp_class_name": "GptNeoxMLP",
        "rope_condense_ratio": 1,
    }
)


def _t(*shape: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g)


def full_sd(attn: str = "attn", seed: int = 0) -> dict[str, torch.Tensor]:
    p = "transformer.h.0."
    return {
        "transformer.wte.weight": _t(VOCAB, N_EMBD, seed=seed),
        p + "norm_1.weight": _t(N_EMBD, seed=seed + 1),
        p + "norm_1.bias": _t(N_EMBD, seed=seed + 2),
        p + f"attn.{attn}.weight": _t(QKV, N_EMBD, seed=seed + 3),
        p + f"attn.{attn}.bias": _t(QKV, seed=seed + 4),
        p + "attn.proj.weight": _t(N_EMBD, N_EMBD, seed=seed + 5),
        p + "attn.proj.bias": _t(N_EMBD, seed=seed + 6),
        p + "norm_2.weight": _t(N_EMBD, seed=seed + 7),
        p + "norm_2.bias": _t(N_EMBD, seed=seed + 8),
        p + "mlp.fc.weight": _t(4 * N_EMBD, N_EMBD, seed=seed + 9),
        p + "mlp.fc.bias": _t(4 * N_EMBD, seed=seed + 10),
        p + "mlp.proj.weight": _t(N_EMBD, 4 * N_EMBD, seed=seed + 11),
        p + "mlp.proj.bias": _t(N_EMBD, seed=seed + 12),
        "transformer.ln_f.weight": _t(N_EMBD, seed=seed + 13),
        "transformer.ln_f.bias": _t(N_EMBD, seed=seed + 14),
        "lm_head.weight": _t(VOCAB, N_EMBD, seed=seed + 15),
    }


def lora_sd(attn: str = "attn", seed: int = 0, r: int = R) -> dict[str, torch.Tensor]:
    """LoRA on query+value (the 2023 default): A (2r, in), B (q+v rows, r)."""
    p = "transformer.h.0.attn."
    return {
        p + f"{attn}.lora_A": _t(2 * r, N_EMBD, seed=seed + 20),
        p + f"{attn}.lora_B": _t(2 * N_EMBD, r, seed=seed + 21),
    }


def adapter_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    p = "transformer.h.0.attn."
    return {
        p + "adapter_wte.weight": _t(10, N_EMBD, seed=seed + 30),
        p + "gating_factor": _t(1, N_HEAD, 1, 1, seed=seed + 31),
    }


def adapter_v2_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    sd = adapter_sd(seed)
    p = "transformer.h.0."
    sd.update(
        {
            p + "attn.attn.adapter_bias": _t(QKV, seed=seed + 32),
            p + "attn.attn.adapter_scale": _t(QKV, seed=seed + 33),
            p + "mlp.fc.adapter_bias": _t(4 * N_EMBD, seed=seed + 34),
            p + "mlp.fc.adapter_scale": _t(4 * N_EMBD, seed=seed + 35),
            p + "norm_1.weight": _t(N_EMBD, seed=seed + 36),
            "transformer.ln_f.weight": _t(N_EMBD, seed=seed + 37),
        }
    )
    return sd


def lit_llama_sd(lora: bool = True) -> dict[str, torch.Tensor]:
    p = "transformer.h.0."
    if lora:
        return {
            p + "attn.c_attn.lora_A": _t(2 * R, N_EMBD, seed=50),
            p + "attn.c_attn.lora_B": _t(2 * N_EMBD, R, seed=51),
        }
    return {
        "transformer.wte.weight": _t(VOCAB, N_EMBD, seed=52),
        p + "rms_1.scale": _t(N_EMBD, seed=53),
        p + "attn.c_attn.weight": _t(QKV, N_EMBD, seed=54),
        "transformer.ln_f.scale": _t(N_EMBD, seed=55),
        "lm_head.weight": _t(VOCAB, N_EMBD, seed=56),
    }


def training_state(model: dict[str, torch.Tensor], it: int) -> dict:
    """The Jan 2024 full fine-tune step file: model, optimizer and counters."""
    first = next(iter(model.values()))
    return {
        "model": model,
        "optimizer": {
            "state": {0: {"step": torch.tensor(float(it)), "exp_avg": torch.zeros_like(first)}},
            "param_groups": [{"lr": 3e-3, "params": [0]}],
        },
        "iter_num": it,
        "step_count": it // 4,
    }


def save(path: Path, obj: object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)
    return path


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def tokenizer_files(d: Path) -> None:
    write_text(
        d / "tokenizer.json", json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0}}})
    )
    write_text(d / "tokenizer_config.json", json.dumps({"model_max_length": 64}))


def lit_config(d: Path, **extra: object) -> None:
    write_text(d / "lit_config.json", json.dumps({**OLD_CONFIG, **extra}))


# --------------------------------------------------------------------------- the eras


def run_2023_05_lora(d: Path) -> None:
    """May 2023: bare LoRA dicts, iter-N.pth intermediates, no config saved with the run."""
    save(d / "lit_model_lora_finetuned.pth", lora_sd(seed=1))
    save(d / "iter-000100.pth", lora_sd(seed=2))
    save(d / "iter-000200.pth", lora_sd(seed=3))


def run_2023_06_lora(d: Path, outside: Path | None = None) -> None:
    """Late June 2023: {"model": lora}, iter-N-ckpt.pth, lit_config.json with the old keys."""
    save(d / "lit_model_lora_finetuned.pth", {"model": lora_sd(seed=4)})
    save(d / "iter-000100-ckpt.pth", {"model": lora_sd(seed=5)})
    lit_config(d)
    tokenizer_files(d)
    write_text(d / "notes.txt", "lr sweep 3e-4\n")
    if outside is not None:
        os.symlink(outside, d / "base_model")


def run_2023_07_adapter(d: Path) -> None:
    save(d / "lit_model_adapter_finetuned.pth", {"model": adapter_sd(seed=6)})
    save(d / "iter-000050-ckpt.pth", {"model": adapter_sd(seed=7)})
    lit_config(d)


def run_2023_08_adapter_v2(d: Path) -> None:
    """The adapter v2 script wrote the same name as v1: only the keys tell them apart."""
    save(d / "lit_model_adapter_finetuned.pth", {"model": adapter_v2_sd(seed=8)})
    lit_config(d)
    tokenizer_files(d)


def run_2023_09_full(d: Path) -> None:
    """Full fine-tune; the last intermediate is a hard link to the final file."""
    save(d / "lit_model_finetuned.pth", {"model": full_sd(seed=9)})
    os.link(d / "lit_model_finetuned.pth", d / "iter-000300-ckpt.pth")
    save(d / "iter-000100-ckpt.pth", {"model": full_sd(seed=10)})
    lit_config(d, sliding_window_layer_placing="interleaved", sliding_window_size=16)
    tokenizer_files(d)


def run_2024_01_full(d: Path) -> None:
    """Jan 2024: step-NNNNNN.pth with the full training state."""
    save(d / "step-000100.pth", training_state(full_sd(seed=11), 100))
    save(d / "lit_model_finetuned.pth", {"model": full_sd(seed=12)})
    lit_config(d)


def run_2024_03_04_lora(d: Path) -> None:
    """March 4 2024: final/lit_model.pth holding only LoRA weights, iter-N/ folders."""
    for folder, seed in (("final", 13), ("iter-000100", 14)):
        save(d / folder / "lit_model.pth", {"model": lora_sd(seed=seed)})
        lit_config(d / folder)
        tokenizer_files(d / folder)


def run_2024_03_06_lora(d: Path) -> None:
    """March 6 2024: + hyperparameters.yaml and prompt_style.yaml; step-N/ folders."""
    hp = {
        "checkpoint_dir": "checkpoints/EleutherAI/pythia-tiny",
        "lora_r": R,
        "lora_alpha": 32,
        "lora_query": True,
        "lora_value": True,
    }
    for folder, seed in (("final", 15), ("step-000050", 16)):
        save(d / folder / "lit_model.pth", {"model": lora_sd(seed=seed)})
        lit_config(d / folder)
        tokenizer_files(d / folder)
        write_text(d / folder / "hyperparameters.yaml", yaml.safe_dump(hp))
        write_text(d / folder / "prompt_style.yaml", "class_path: litgpt.prompts.Alpaca\n")


def run_2024_03_10_lora(d: Path) -> None:
    """March 10 2024: today's weights name, but the config is still lit_config.json."""
    save(d / "final" / "lit_model.pth.lora", {"model": lora_sd(seed=17)})
    lit_config(d / "final")
    tokenizer_files(d / "final")
    write_text(d / "final" / "hyperparameters.yaml", yaml.safe_dump({"lora_r": R, "lora_alpha": 16}))


def run_current(d: Path) -> None:
    """Today's layout: must be left untouched."""
    for folder, seed in (("final", 18), ("step-000200", 19)):
        save(d / folder / "lit_model.pth.lora", {"model": lora_sd(attn="qkv", seed=seed)})
        write_text(d / folder / "model_config.yaml", yaml.safe_dump(CURRENT_CONFIG))
        tokenizer_files(d / folder)
        write_text(d / folder / "hyperparameters.yaml", yaml.safe_dump({"lora_r": R, "lora_alpha": 16}))
    write_text(d / "logs" / "csv" / "version_0" / "metrics.csv", "step,loss\n1,2.0\n")


def base_checkpoint(d: Path) -> None:
    save(d / "lit_model.pth", full_sd(attn="qkv", seed=20))
    write_text(d / "model_config.yaml", yaml.safe_dump(CURRENT_CONFIG))
    tokenizer_files(d)


def lit_llama_run(d: Path) -> None:
    """lit-llama used the same iter-N-ckpt.pth names: its keys give it away."""
    save(d / "lit-llama-lora-finetuned.pth", lit_llama_sd(lora=True))
    save(d / "iter-000050-ckpt.pth", lit_llama_sd(lora=True))
    save(d / "lit-llama.pth", lit_llama_sd(lora=False))


def build_tree(root: Path, outside: Path) -> Path:
    """Every era in one ROOT, plus a current run, a base, lit-llama and unrelated files."""
    outside.mkdir(parents=True, exist_ok=True)
    (outside / "weights.pth").write_bytes(b"not part of the tree")
    run_2023_05_lora(root / "2023-05-alpaca-lora")
    run_2023_06_lora(root / "2023-06-dolly-lora", outside)
    run_2023_07_adapter(root / "2023-07-adapter")
    run_2023_08_adapter_v2(root / "2023-08-adapter-v2")
    run_2023_09_full(root / "2023-09-full")
    run_2024_01_full(root / "2024-01-full")
    run_2024_03_04_lora(root / "2024-03-04-lora")
    run_2024_03_06_lora(root / "2024-03-06-lora")
    run_2024_03_10_lora(root / "2024-03-10-lora")
    run_current(root / "2024-11-current")
    base_checkpoint(root / "checkpoints" / "EleutherAI" / "pythia-tiny")
    lit_llama_run(root / "lit-llama-2023")
    write_text(root / "misc" / "README.md", "experiments\n")
    write_text(root / "misc" / "results.csv", "run,score\n")
    return root


def snapshot(root: Path) -> dict[str, str]:
    """Relative path → sha256 (files), "dir", or "link:<target>"; the migrate journal/lock excluded."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel.startswith(".ckpt-tool-migrate"):
                continue
            if p.is_symlink():
                out[rel] = "link:" + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def small_tree(root: Path) -> Path:
    """Two runs covering every kind of step: rename, mkdir, copy, write, rmdir (iter-N/ folder)."""
    run = root / "2023-06"
    save(run / "lit_model_lora_finetuned.pth", {"model": lora_sd(seed=4)})
    lit_config(run)
    write_text(run / "tokenizer.json", '{"version": "1.0"}')
    folder = root / "2024-03" / "iter-000100"
    save(folder / "lit_model.pth", {"model": lora_sd(seed=14)})
    lit_config(folder)
    return root


def edit_journal_steps(root: Path, edit, match=lambda step: True) -> int:
    """Apply ``edit(step)`` to the first journal step (a dict with an ``op``) for which ``match`` is true.

    Works on the records as JSON whatever their layout (one step per line, or a list inside a plan
    record), so a test can damage a journal the tool wrote itself. Returns the 1-based line it edited.
    """
    path = root / ".ckpt-tool-migrate.journal"
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines):
        if not line.strip():
            continue
        rec = json.loads(line)
        candidates = rec.get("steps") if isinstance(rec.get("steps"), list) else [rec.get("step", rec)]
        for step in candidates:
            if isinstance(step, dict) and "op" in step and match(step):
                edit(step)
                lines[n] = json.dumps(rec, separators=(",", ":"), sort_keys=True).encode()
                path.write_bytes(b"\n".join(lines))
                return n + 1
    raise AssertionError("no journal step matched")


def edit_journal_records(root: Path, edit, match) -> int:
    """Apply ``edit(record)`` to the first journal record (a whole line) for which ``match`` is true."""
    path = root / ".ckpt-tool-migrate.journal"
    lines = path.read_bytes().split(b"\n")
    for n, line in enumerate(lines):
        if line.strip() and match(json.loads(line)):
            rec = json.loads(line)
            edit(rec)
            lines[n] = json.dumps(rec, separators=(",", ":"), sort_keys=True).encode()
            path.write_bytes(b"\n".join(lines))
            return n + 1
    raise AssertionError("no journal record matched")
