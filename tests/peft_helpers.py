"""Builders of real PEFT adapter directories and tiny Hugging Face base models.

Shared by the PEFT detection tests and (later) the PEFT merge tests: every
checkpoint here is written by the real ``transformers`` / ``peft`` code paths
from tiny config objects, fully offline, so the tests pin ckpt-tool against
what the libraries actually put on disk rather than against our reading of
their sources. Hand-built damaged files use ``write_adapter`` so they look
exactly like a PEFT save apart from the damage under test.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch

LLAMA_KW: dict[str, Any] = {
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "vocab_size": 128,
}


def tiny_llama(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: Any) -> Any:
    """A fresh, randomly initialised 2-layer LlamaForCausalLM (GQA: 4 heads, 2 KV heads).

    A new model each call: ``get_peft_model`` mutates the model it wraps.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**{**LLAMA_KW, **overrides}))
    return model.to(dtype)


def tiny_gpt2(dtype: torch.dtype = torch.float32, seed: int = 0, **overrides: Any) -> Any:
    """A fresh 2-layer GPT2LMHeadModel; its ``Conv1D`` layers need ``fan_in_fan_out=True``."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    kw = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64, "vocab_size": 128}
    model = GPT2LMHeadModel(GPT2Config(**{**kw, **overrides}))
    return model.to(dtype)


def randomize_lora(model: Any, seed: int = 1) -> None:
    """Give every adapter parameter non-trivial values (PEFT initialises lora_B to zero,
    which would make any merge test pass trivially)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name or "ia3_" in name:
                param.copy_((torch.randn(param.shape, generator=g) * 0.1).to(param.dtype))


def peft_model(model: Any, config: Any, adapter_name: str = "default", randomize: bool = True) -> Any:
    """``get_peft_model`` with PEFT's own warnings silenced (some tests want a bad name)."""
    from peft import get_peft_model

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm = get_peft_model(model, config, adapter_name=adapter_name)
    if randomize:
        randomize_lora(pm)
    return pm


def save_adapter(
    model: Any,
    directory: str | os.PathLike[str],
    config: Any = None,
    adapter_name: str = "default",
    safe_serialization: bool = True,
    randomize: bool = True,
) -> Path:
    """Save a PEFT adapter of ``model`` into ``directory`` and return the adapter's own dir.

    ``model`` is either a plain transformers model (then ``config`` is applied
    with ``get_peft_model``) or an existing ``PeftModel`` (``config`` ignored).
    PEFT writes adapter ``default`` at the root and any other name under
    ``<directory>/<name>/``; the returned path is where the files landed.
    """
    from peft import PeftModel

    pm = model if isinstance(model, PeftModel) else peft_model(model, config, adapter_name, randomize)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(directory), safe_serialization=safe_serialization)
    directory = Path(directory)
    return directory if adapter_name == "default" else directory / adapter_name


def lora_config(**kw: Any) -> Any:
    """A LoraConfig with small defaults (r=4, alpha=8, q/v) overridable by ``kw``."""
    from peft import LoraConfig

    base: dict[str, Any] = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"]}
    return LoraConfig(**{**base, **kw})


def save_base(model: Any, directory: str | os.PathLike[str], **kw: Any) -> Path:
    """``model.save_pretrained(directory, **kw)`` (e.g. ``max_shard_size="20KB"``) quietly."""
    directory = Path(directory)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(str(directory), **kw)
    return directory


def write_adapter(
    directory: str | os.PathLike[str],
    config: dict[str, Any] | str,
    tensors: dict[str, torch.Tensor],
    safe: bool = True,
) -> Path:
    """Hand-write an adapter dir: ``adapter_config.json`` (a dict, or raw text for
    hostile-config tests) plus ``adapter_model.safetensors`` (or ``.bin``)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    text = config if isinstance(config, str) else json.dumps(config, indent=2)
    (directory / "adapter_config.json").write_text(text)
    if safe:
        save_file(
            {k: v.contiguous() for k, v in tensors.items()},
            str(directory / "adapter_model.safetensors"),
            metadata={"format": "pt"},
        )
    else:
        torch.save(tensors, directory / "adapter_model.bin")
    return directory


def read_adapter(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """Load an adapter dir's config and tensors (for building damaged variants of real saves)."""
    from safetensors.torch import load_file

    directory = Path(directory)
    config = json.loads((directory / "adapter_config.json").read_text())
    st = directory / "adapter_model.safetensors"
    if st.exists():
        return config, load_file(str(st))
    return config, torch.load(directory / "adapter_model.bin", weights_only=True)
