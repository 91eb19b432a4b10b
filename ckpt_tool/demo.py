"""Build a small, realistic workspace of fine-tuning leftovers for ``ckpt-tool demo``.

The files follow the real layouts (formats.md): a LitGPT base checkpoint and a
LoRA ``final/`` directory, the same fine-tune saved whole (base and LoRA tensors
in one state dict, what ``split`` takes apart), an HF model with a PEFT LoRA
adapter, and a tree of run directories from older LitGPT releases. Weights are
tiny and seeded, made with torch alone so the demo needs none of the peer
libraries. README's examples run on this workspace as built (tests/test_readme.py).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

N_LAYER, N_HEAD, N_GROUPS, N_EMBD, VOCAB, INTER, R, ALPHA = 2, 4, 2, 64, 256, 128, 8, 16
HEAD = N_EMBD // N_HEAD

MODEL_CONFIG: dict[str, Any] = {
    "name": "tiny-llama-demo",
    "hf_config": {"org": "demo-org", "name": "tiny-llama"},
    "block_size": 128,
    "vocab_size": VOCAB,
    "padded_vocab_size": VOCAB,
    "n_layer": N_LAYER,
    "n_head": N_HEAD,
    "head_size": HEAD,
    "n_embd": N_EMBD,
    "n_query_groups": N_GROUPS,
    "rotary_percentage": 1.0,
    "parallel_residual": False,
    "bias": False,
    "lm_head_bias": False,
    "norm_class_name": "RMSNorm",
    "norm_eps": 1e-5,
    "mlp_class_name": "LLaMAMLP",
    "intermediate_size": INTER,
    "rope_base": 10000,
}
TOKENIZER_FILES = {
    "tokenizer.json": json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}),
    "tokenizer_config.json": json.dumps({"add_bos_token": True, "bos_token": "<s>", "eos_token": "</s>"}),
}
QKV_ROWS = (N_HEAD + 2 * N_GROUPS) * HEAD


def _lit_base_state(gen: Any, dtype: Any) -> dict[str, Any]:
    import torch

    def w(*shape: int) -> Any:
        return (torch.randn(*shape, generator=gen) * 0.02).to(dtype)

    sd = {"transformer.wte.weight": w(VOCAB, N_EMBD)}
    for i in range(N_LAYER):
        p = f"transformer.h.{i}."
        sd[p + "norm_1.weight"] = torch.ones(N_EMBD, dtype=dtype)
        sd[p + "attn.qkv.weight"] = w(QKV_ROWS, N_EMBD)
        sd[p + "attn.proj.weight"] = w(N_EMBD, N_HEAD * HEAD)
        sd[p + "norm_2.weight"] = torch.ones(N_EMBD, dtype=dtype)
        sd[p + "mlp.fc_1.weight"] = w(INTER, N_EMBD)
        sd[p + "mlp.fc_2.weight"] = w(INTER, N_EMBD)
        sd[p + "mlp.proj.weight"] = w(N_EMBD, INTER)
    sd["transformer.ln_f.weight"] = torch.ones(N_EMBD, dtype=dtype)
    sd["lm_head.weight"] = w(VOCAB, N_EMBD)
    return sd


def _lit_lora_state(gen: Any, dtype: Any, query: bool = True, key: bool = False, value: bool = True) -> dict[str, Any]:
    import torch

    enabled = [N_HEAD * HEAD] * query + [N_GROUPS * HEAD] * key + [N_GROUPS * HEAD] * value
    sd = {}
    for i in range(N_LAYER):
        p = f"transformer.h.{i}.attn.qkv."
        sd[p + "lora_A"] = (torch.randn(R * len(enabled), N_EMBD, generator=gen) * 0.1).to(dtype)
        sd[p + "lora_B"] = (torch.randn(sum(enabled), R, generator=gen) * 0.1).to(dtype)
    return sd


#: Linear layers of LitGPT's LoRA GPT: each is a ``LoRALinear`` whose weight lives under ``.linear.``.
_LORA_LINEARS = ("attn.qkv.", "attn.proj.", "mlp.fc_1.", "mlp.fc_2.", "mlp.proj.", "lm_head.")


def _lit_combined_state(base: dict[str, Any], lora: dict[str, Any]) -> dict[str, Any]:
    """``state_dict()`` of LitGPT's LoRA GPT holding ``base`` and ``lora``, in torch's order (a module's own
    parameters ``lora_A``/``lora_B`` before its child ``linear``)."""
    sd: dict[str, Any] = {}
    for name, tensor in base.items():
        module = name[: -len("weight")]
        if module.endswith(_LORA_LINEARS):
            for part in ("lora_A", "lora_B"):
                if module + part in lora:
                    sd[module + part] = lora[module + part]
            name = module + "linear.weight"
        sd[name] = tensor
    return sd


def _write_lit_dir(d: Path, config: dict[str, Any] | None = MODEL_CONFIG) -> None:
    d.mkdir(parents=True, exist_ok=True)
    if config is not None:
        (d / "model_config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    for name, text in TOKENIZER_FILES.items():
        (d / name).write_text(text)


def lora_hyperparameters(checkpoint_dir: str) -> dict[str, Any]:
    return {
        "checkpoint_dir": checkpoint_dir,
        "out_dir": "out/finetune/lora",
        "precision": "bf16-true",
        "devices": 1,
        "lora_r": R,
        "lora_alpha": ALPHA,
        "lora_dropout": 0.05,
        "lora_query": True,
        "lora_key": False,
        "lora_value": True,
        "lora_projection": False,
        "lora_mlp": False,
        "lora_head": False,
        "data": {"class_path": "litgpt.data.Alpaca"},
        "train": {"save_interval": 1000, "epochs": 1, "global_batch_size": 16, "micro_batch_size": 1},
        "seed": 1337,
    }


def build_workspace(root: Path) -> dict[str, Path]:
    """Create the demo workspace under ``root``; return the interesting paths."""
    import torch
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(2024)
    bf16 = torch.bfloat16
    paths: dict[str, Path] = {}

    # LitGPT: base checkpoint + LoRA fine-tune output
    base = root / "checkpoints" / "demo-org" / "tiny-llama"
    _write_lit_dir(base)
    base_sd = _lit_base_state(gen, bf16)
    torch.save(base_sd, base / "lit_model.pth")
    final = root / "out" / "finetune" / "lora" / "final"
    _write_lit_dir(final)
    lora_sd = _lit_lora_state(gen, bf16)
    torch.save({"model": lora_sd}, final / "lit_model.pth.lora")
    hyperparameters = yaml.safe_dump(lora_hyperparameters(str(base)), sort_keys=False)
    (final / "hyperparameters.yaml").write_text(hyperparameters)
    (final / "prompt_style.yaml").write_text("class_path: litgpt.prompts.Alpaca\n")
    # The same fine-tune saved whole (``fabric.save`` of the LoRA GPT): what ``split`` takes apart
    combined = root / "combined" / "tiny-llama-lora"
    _write_lit_dir(combined)
    torch.save({"model": _lit_combined_state(base_sd, lora_sd)}, combined / "lit_model.pth")
    (combined / "hyperparameters.yaml").write_text(hyperparameters)
    paths.update(lit_base=base, lit_final=final, lit_combined=combined)

    # HF model + PEFT LoRA adapter
    hf = root / "hf" / "tiny-llama"
    hf.mkdir(parents=True)
    hf_cfg = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": N_EMBD,
        "intermediate_size": INTER, "num_hidden_layers": N_LAYER, "num_attention_heads": N_HEAD,
        "num_key_value_heads": N_GROUPS, "vocab_size": VOCAB, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    (hf / "config.json").write_text(json.dumps(hf_cfg, indent=2))
    (hf / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    hf_sd: dict[str, Any] = {"model.embed_tokens.weight": (torch.randn(VOCAB, N_EMBD, generator=gen) * 0.02).to(bf16)}
    for i in range(N_LAYER):
        p = f"model.layers.{i}."
        for name, shape in (("self_attn.q_proj", (N_HEAD * HEAD, N_EMBD)), ("self_attn.k_proj", (N_GROUPS * HEAD, N_EMBD)),
                            ("self_attn.v_proj", (N_GROUPS * HEAD, N_EMBD)), ("self_attn.o_proj", (N_EMBD, N_EMBD)),
                            ("mlp.gate_proj", (INTER, N_EMBD)), ("mlp.up_proj", (INTER, N_EMBD)), ("mlp.down_proj", (N_EMBD, INTER))):
            hf_sd[p + name + ".weight"] = (torch.randn(*shape, generator=gen) * 0.02).to(bf16)
        hf_sd[p + "input_layernorm.weight"] = torch.ones(N_EMBD, dtype=bf16)
        hf_sd[p + "post_attention_layernorm.weight"] = torch.ones(N_EMBD, dtype=bf16)
    hf_sd["model.norm.weight"] = torch.ones(N_EMBD, dtype=bf16)
    hf_sd["lm_head.weight"] = (torch.randn(VOCAB, N_EMBD, generator=gen) * 0.02).to(bf16)
    save_file(hf_sd, hf / "model.safetensors", metadata={"format": "pt"})
    adapter = root / "hf" / "tiny-llama-lora"
    adapter.mkdir(parents=True)
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": str(hf), "r": R,
        "lora_alpha": ALPHA, "lora_dropout": 0.05, "target_modules": ["q_proj", "v_proj"], "bias": "none",
        "use_rslora": False, "use_dora": False, "fan_in_fan_out": False, "init_lora_weights": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {},
    }, indent=2))
    ad_sd = {}
    for i in range(N_LAYER):
        for proj, out in (("q_proj", N_HEAD * HEAD), ("v_proj", N_GROUPS * HEAD)):
            p = f"base_model.model.model.layers.{i}.self_attn.{proj}."
            ad_sd[p + "lora_A.weight"] = torch.randn(R, N_EMBD, generator=gen) * 0.1
            ad_sd[p + "lora_B.weight"] = torch.randn(out, R, generator=gen) * 0.1
    save_file(ad_sd, adapter / "adapter_model.safetensors", metadata={"format": "pt"})
    paths.update(hf_base=hf, peft_adapter=adapter)

    # Legacy run directories, one per LitGPT era (formats.md §2.2)
    runs = root / "runs"
    old_cfg = {"org": "demo-org", "name": "tiny-llama", "block_size": 128, "vocab_size": VOCAB, "n_layer": N_LAYER,
               "n_head": N_HEAD, "n_embd": N_EMBD, "n_query_groups": N_GROUPS, "_norm_class": "RMSNorm",
               "_mlp_class": "LLaMAMLP", "intermediate_size": INTER, "condense_ratio": 1}
    r1 = runs / "2023-06-alpaca-lora"
    r1.mkdir(parents=True)
    torch.save({"model": _lit_lora_state(gen, bf16)}, r1 / "lit_model_lora_finetuned.pth")
    torch.save({"model": _lit_lora_state(gen, bf16)}, r1 / "iter-000800-ckpt.pth")
    (r1 / "lit_config.json").write_text(json.dumps(old_cfg, indent=2))
    r2 = runs / "2024-03-dolly-lora"
    _write_lit_dir(r2 / "final", config=None)
    torch.save(_lit_lora_state(gen, bf16), r2 / "final" / "lit_model.pth")
    _write_lit_dir(r2 / "iter-000400", config=None)
    torch.save(_lit_lora_state(gen, bf16), r2 / "iter-000400" / "lit_model.pth")
    for folder in ("final", "iter-000400"):
        (r2 / folder / "lit_config.json").write_text(json.dumps(old_cfg, indent=2))
    r3 = runs / "2024-09-current"
    _write_lit_dir(r3 / "final")
    torch.save({"model": _lit_lora_state(gen, bf16)}, r3 / "final" / "lit_model.pth.lora")
    (r3 / "final" / "hyperparameters.yaml").write_text(yaml.safe_dump(lora_hyperparameters(str(base)), sort_keys=False))
    paths.update(runs=runs)
    return paths
