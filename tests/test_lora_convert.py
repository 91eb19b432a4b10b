"""LitGPT LoRA ↔ PEFT LoRA through ``ckpt-tool convert``, checked against the real peers.

Each case trains nothing but builds what a LitGPT LoRA fine-tune leaves behind: a ``litgpt.lora.GPT`` with
every parameter random (LoRA B too, which LitGPT starts at zero), the base saved as ``litgpt download`` leaves
it, ``final/`` as ``litgpt finetune_lora`` writes it (``lit_model.pth.lora`` = ``{"model": lora-only}``,
``hyperparameters.yaml`` with LitGPT's keys, ``model_config.yaml`` and tokenizer files copied from the base).
Then, through the CLI:

* ``convert BASE --to hf`` and ``convert final --to peft``: ``PeftModel.from_pretrained`` loads the adapter with
  no missing or unexpected key and gives LitGPT's logits (fp32, ≤ 1e-4);
* ``convert OUT --to lit --base BASE``: the LoRA tensors come back bit for bit (families whose PEFT modules
  are not fused), hyperparameters too; for fused families (Phi-3 ``qkv_proj``, GPT-NeoX / Falcon
  ``query_key_value``) the delta comes back (logits), in LitGPT's shared-A form;
* refusals exit with their documented code and write nothing.
"""

from __future__ import annotations

import json
import shutil
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

pytestmark = pytest.mark.interop

FLAGS = ("query", "key", "value", "projection", "mlp", "head")
QV = ("query", "value")
ALL = FLAGS
TINY = {"n_layer": 2, "block_size": 32, "vocab_size": 96, "padded_vocab_size": 96}
# (case, LitGPT registry name, tiny overrides)
MODELS: dict[str, tuple[str, dict[str, Any]]] = {
    "llama-gqa": ("Llama-3.2-1B", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96,
                                   "rope_adjustments": None}),
    "llama-mha": ("Llama-2-7b-hf", {"n_embd": 64, "n_head": 4, "n_query_groups": 4, "intermediate_size": 96}),
    "qwen2.5": ("Qwen2.5-0.5B", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96}),
    "phi-2": ("phi-2", {"n_embd": 80, "n_head": 4, "n_query_groups": 2}),
    "phi-3": ("Phi-3-mini-4k-instruct", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96,
                                         "sliding_window_size": None}),
    "pythia": ("pythia-14m", {"n_embd": 64, "n_head": 4}),
    "falcon-7b": ("falcon-7b", {"n_embd": 64, "n_head": 4}),
    "mixtral": ("Mixtral-8x7B-v0.1", {"n_embd": 64, "n_head": 4, "n_query_groups": 2, "intermediate_size": 96,
                                      "n_expert": 4, "n_expert_per_token": 2, "sliding_window_size": None}),
}  # fmt: skip
#: families whose PEFT modules are LitGPT's modules one for one (the round trip is byte for byte)
UNFUSED = ("llama-gqa", "llama-mha", "qwen2.5", "phi-2", "mixtral")


@pytest.fixture(autouse=True, scope="module")
def _fast():
    """Tiny matrices: one thread (two threads on a busy 2-core box cost 30 ms per matmul)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- building LitGPT runs -----------------------------------------------------------------------------------


def base_config(case: str) -> Any:
    import litgpt

    name, overrides = MODELS[case]
    return litgpt.Config.from_name(name, **{**TINY, **overrides})


def lora_config(case: str, flags: tuple[str, ...], r: int = 2, alpha: int = 4) -> Any:
    import litgpt.lora

    fields = asdict(base_config(case))
    return litgpt.lora.Config(
        **fields, lora_r=r, lora_alpha=alpha, lora_dropout=0.05, **{f"lora_{f}": f in flags for f in FLAGS}
    )


def hyperparameters(base: Path, config: Any, precision: str = "32-true") -> dict[str, Any]:
    """What ``litgpt finetune_lora``'s ``save_hyperparameters`` records (the same keys, in its order)."""
    return {
        "checkpoint_dir": str(base), "out_dir": "out/finetune/lora", "precision": precision, "devices": 1,
        "num_nodes": 1, **{k: getattr(config, k) for k in ("lora_r", "lora_alpha", "lora_dropout")},
        **{f"lora_{f}": getattr(config, f"lora_{f}") for f in FLAGS},
        "train": {"save_interval": 1000, "log_interval": 1, "global_batch_size": 16, "micro_batch_size": 1,
                  "lr_warmup_steps": 100, "epochs": 5, "min_lr": 6.0e-05},
        "optimizer": "AdamW", "logger_name": "csv", "seed": 1337,
    }  # fmt: skip


def make_run(
    root: Path, case: str, flags: tuple[str, ...], r: int = 2, alpha: int = 4, seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """A base checkpoint dir and a LoRA ``final/``, both as LitGPT writes them (tensors in ``dtype``), and the
    live fp32 LoRA model."""
    import litgpt.lora
    from litgpt.utils import save_config

    config = lora_config(case, flags, r, alpha)
    torch.manual_seed(seed)
    model = litgpt.lora.GPT(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if "lora_" in name else 0.1))
    base = root / "checkpoints" / "tiny"
    base.mkdir(parents=True)
    state = {k.replace("linear.", ""): v.detach().to(dtype) for k, v in model.state_dict().items() if "lora_" not in k}
    torch.save(state, base / "lit_model.pth")
    save_config(base_config(case), base)
    (base / "tokenizer.json").write_text(json.dumps({"version": "1.0", "model": {"type": "BPE", "vocab": {}, "merges": []}}))
    (base / "tokenizer_config.json").write_text("{}")
    final = root / "out" / "final"
    final.mkdir(parents=True)
    lora = {k: v.detach().to(dtype) for k, v in model.state_dict().items() if litgpt.lora.lora_filter(k, v)}
    torch.save({"model": lora}, final / "lit_model.pth.lora")
    for f in ("model_config.yaml", "tokenizer.json", "tokenizer_config.json"):
        shutil.copy(base / f, final / f)
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hyperparameters(base, config), sort_keys=False))
    return {"model": model, "config": config, "base": base, "final": final, "lora": lora}


def peft_load(hf_dir: Path, adapter: Path) -> tuple[Any, list[str]]:
    """``PeftModel.from_pretrained`` on the HF base, with every warning it gives."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(hf_dir, dtype=torch.float32).eval()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(base, adapter).eval()
    return model, [str(w.message) for w in caught]


def tokens(config: Any, seed: int = 5) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, config.padded_vocab_size, (2, 12), generator=g)


def lit_logits(model: Any, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)


def assert_loads_and_matches(run: dict[str, Any], hf_dir: Path, adapter: Path) -> Any:
    model, caught = peft_load(hf_dir, adapter)
    bad = [w for w in caught if "missing" in w.lower() or "unexpected" in w.lower() or "lora" in w.lower()]
    assert not bad, bad
    from safetensors.torch import load_file

    saved = load_file(adapter / "adapter_model.safetensors")
    loaded = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    assert len(loaded) == len(saved)  # every LoRA parameter PEFT created has a saved tensor and vice versa
    for key, t in saved.items():
        live = key.replace(".lora_A.weight", ".lora_A.default.weight").replace(".lora_B.weight", ".lora_B.default.weight")
        assert torch.equal(loaded[live], t), key
    ids = tokens(run["config"])
    with torch.no_grad():
        got = model(ids).logits
    ref = lit_logits(run["model"], ids)
    assert (got - ref).abs().max().item() <= 1e-4
    return model


def read_lora(d: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(d / "lit_model.pth.lora", weights_only=True)
    assert set(obj) == {"model"}
    return obj["model"]


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32) if t.dtype == torch.float32 else t.contiguous().view(torch.int16)


def nothing_written(out: Path) -> bool:
    return not out.exists() or not any(out.iterdir())


# --- LitGPT → PEFT → LitGPT ---------------------------------------------------------------------------------

FORWARD = [
    ("llama-gqa", QV),
    ("llama-gqa", ALL),
    ("llama-gqa", ("key", "projection")),
    ("llama-mha", QV),
    ("llama-mha", ALL),
    ("qwen2.5", ALL),
    ("phi-2", ("query", "key", "mlp", "head")),
    ("phi-3", QV + ("mlp",)),
    ("phi-3", ALL),
    ("pythia", QV),
    ("pythia", ALL),
    ("falcon-7b", ("query", "key", "value", "projection")),
    ("mixtral", QV + ("projection",)),
]


@pytest.mark.parametrize(("case", "flags"), FORWARD, ids=[f"{c}-{'+'.join(f)}" for c, f in FORWARD])
def test_litgpt_lora_converts_to_a_peft_adapter_with_the_same_logits(cli, tmp_path, case, flags):
    run = make_run(tmp_path, case, flags)
    hf, out = tmp_path / "hf", tmp_path / "peft"
    assert cli("convert", run["base"], "--to", "hf", "--out", hf, "-q").code == 0
    res = cli("convert", run["final"], "--to", "peft", "--out", out)
    assert res.code == 0, res.stderr
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["task_type"] == "CAUSAL_LM"
    assert cfg["r"] == 2 and cfg["lora_alpha"] == 4 and cfg["base_model_name_or_path"] == str(run["base"])
    assert_loads_and_matches(run, hf, out)

    back = tmp_path / "back"
    res = cli("convert", out, "--to", "lit", "--out", back, "--base", run["base"])
    hp = yaml.safe_load((back / "hyperparameters.yaml").read_text()) if res.code == 0 else None
    if case in UNFUSED:
        assert res.code == 0, res.stderr
        got = read_lora(back)
        assert list(got) == list(run["lora"])  # LitGPT's own key order too
        for k, t in run["lora"].items():
            assert got[k].dtype == t.dtype and torch.equal(bits(got[k]), bits(t)), k
        orig = yaml.safe_load((run["final"] / "hyperparameters.yaml").read_text())
        assert {k: v for k, v in hp.items() if k.startswith("lora_")} == {
            k: v for k, v in orig.items() if k.startswith("lora_")
        }
        assert hp["checkpoint_dir"] == str(run["base"])
        assert (back / "model_config.yaml").read_bytes() == (run["base"] / "model_config.yaml").read_bytes()
    elif res.code == 0:
        # a fused PEFT module comes back as LitGPT blocks sharing one A: the same delta, LitGPT's other layout
        assert_lit_delta(run, back, hp)
    else:
        assert res.code == 5 and "differ in rank or scale" in res.stderr, res.stderr
        assert nothing_written(back)


def assert_lit_delta(run: dict[str, Any], back: Path, hp: dict[str, Any]) -> None:
    import litgpt.lora

    fields = asdict(base_config_of(run))
    cfg = litgpt.lora.Config(**fields, **{k: v for k, v in hp.items() if k.startswith("lora_")})
    model = litgpt.lora.GPT(cfg).eval()
    state = torch.load(run["base"] / "lit_model.pth", weights_only=True)
    model.load_state_dict({**state, **read_lora(back)}, strict=False)
    missing = [k for k in model.state_dict() if "lora_" in k and k not in read_lora(back)]
    assert not missing
    ids = tokens(run["config"])
    assert (lit_logits(model, ids) - lit_logits(run["model"], ids)).abs().max().item() <= 1e-4


def base_config_of(run: dict[str, Any]) -> Any:
    import litgpt

    known = set(litgpt.Config.__dataclass_fields__)
    return litgpt.Config(**{k: v for k, v in asdict(run["config"]).items() if k in known})


def test_adapter_config_is_what_peft_itself_saves(cli, tmp_path):
    """Our adapter_config.json == PEFT 0.21.2 loading it and saving it again (every field, sorted, same values)."""
    from peft import LoraConfig, PeftConfig

    run = make_run(tmp_path, "llama-gqa", ALL)
    out = tmp_path / "peft"
    assert cli("convert", run["final"], "--to", "peft", "--out", out, "--base", "org/tiny", "-q").code == 0
    ours = (out / "adapter_config.json").read_text()
    cfg = PeftConfig.from_pretrained(out)
    assert isinstance(cfg, LoraConfig)
    again = tmp_path / "again"
    cfg.save_pretrained(again)
    theirs = json.loads((again / "adapter_config.json").read_text())
    theirs["target_modules"] = sorted(theirs["target_modules"])  # PEFT saves a set: any order
    assert json.loads(ours) == theirs
    assert ours == json.dumps(theirs, indent=2, sort_keys=True)  # PEFT's formatting: sorted, indent 2, no newline
    assert cfg.base_model_name_or_path == "org/tiny" and cfg.inference_mode
    assert sorted(cfg.target_modules) == ["down_proj", "gate_proj", "k_proj", "lm_head", "o_proj", "q_proj",
                                         "up_proj", "v_proj"]  # fmt: skip
    assert "library_name: peft" in (out / "README.md").read_text()


def test_peft_lora_defaults_are_pinned():
    import peft
    from ckpt_tool_peft.convert import LORA_DEFAULTS, PEFT_VERSION
    from peft import LoraConfig

    theirs = LoraConfig().to_dict()
    theirs["peft_type"] = "LORA"
    assert {k: (sorted(v) if isinstance(v, set) else v) for k, v in theirs.items()} == LORA_DEFAULTS
    assert peft.__version__ == PEFT_VERSION


def test_fused_modules_get_rank_and_alpha_patterns(cli, tmp_path):
    """Phi-3's qkv_proj fed by q and v blocks: rank 2r, alpha 2·alpha (scale unchanged), B zero on k rows."""
    run = make_run(tmp_path, "phi-3", QV + ("mlp",))
    out = tmp_path / "peft"
    assert cli("convert", run["final"], "--to", "peft", "--out", out, "-q").code == 0
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["rank_pattern"] == {"gate_up_proj": 4, "qkv_proj": 4}
    assert cfg["alpha_pattern"] == {"gate_up_proj": 8, "qkv_proj": 8}
    from safetensors.torch import load_file

    t = load_file(out / "adapter_model.safetensors")
    b = t["base_model.model.model.layers.0.self_attn.qkv_proj.lora_B.weight"]
    q, kv = 64, 32
    assert b.shape == (q + 2 * kv, 4)
    assert not b[q : q + kv].any()  # the key rows: LitGPT's zero_pad
    assert not b[:q, 2:].any() and not b[q + kv :, :2].any()  # each part only its own block of columns
    lit = run["lora"]
    assert torch.equal(b[:q, :2], lit["transformer.h.0.attn.qkv.lora_B"][:q])
    a = t["base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight"]
    assert torch.equal(a, lit["transformer.h.0.attn.qkv.lora_A"])


@pytest.mark.parametrize("rank", [4, 8])
def test_rslora_converts_when_an_integer_alpha_keeps_the_scale(cli, tmp_path, rank):
    """rsLoRA scale alpha/√r: LitGPT's alpha/r is the same float with alpha·√r when √r is an integer."""
    from peft import LoraConfig, get_peft_model

    run = make_run(tmp_path, "llama-gqa", QV)
    hf = tmp_path / "hf"
    assert cli("convert", run["base"], "--to", "hf", "--out", hf, "-q").code == 0
    from transformers import AutoModelForCausalLM

    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32),
        LoraConfig(r=rank, lora_alpha=6, use_rslora=True, target_modules=["q_proj", "v_proj"]),
    )
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.3)
    adapter = tmp_path / "rs"
    model.save_pretrained(adapter)
    back = tmp_path / "back"
    res = cli("convert", adapter, "--to", "lit", "--out", back, "--base", hf)
    if rank == 8:  # 6/√8 has no integer LitGPT alpha
        assert res.code == 5 and "rsLoRA" in res.stderr, res.stderr
        assert nothing_written(back)
        return
    assert res.code == 0, res.stderr
    hp = yaml.safe_load((back / "hyperparameters.yaml").read_text())
    assert hp["lora_r"] == 4 and hp["lora_alpha"] == 12 and hp["lora_alpha"] / 4 == 6 / 4**0.5
    ids = tokens(run["config"])
    with torch.no_grad():
        ref = model.eval()(ids).logits
    import litgpt.lora

    cfg = litgpt.lora.Config(**asdict(base_config_of(run)), **{k: v for k, v in hp.items() if k.startswith("lora_")})
    lit = litgpt.lora.GPT(cfg).eval()
    lit.load_state_dict({**torch.load(run["base"] / "lit_model.pth", weights_only=True), **read_lora(back)}, strict=False)
    assert (lit_logits(lit, ids) - ref).abs().max().item() <= 1e-4


# --- merge: PEFT's merge of the converted adapter vs LitGPT's own merge -----------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_peft_merge_of_the_converted_adapter_matches_litgpt_merge(cli, tmp_path, dtype):
    """``ckpt-tool merge`` (PEFT's math) of the converted adapter into the HF base vs ``litgpt merge_lora``
    converted to HF. fp32: bit for bit at these sizes (PEFT's fp32 ``B@A`` and LitGPT's conv1d sum in the same
    order here; larger GEMMs need not). bf16 LoRA on a bf16 base: PEFT upcasts the adapter and rounds once,
    LitGPT computes the delta in bf16 and rounds three times (matmul, scale, add): a few bf16 ulps apart."""
    from lit_merge_helpers import litgpt_merge
    from safetensors.torch import load_file

    run = make_run(tmp_path, "llama-gqa", ALL, dtype=dtype)
    hf, out = tmp_path / "hf", tmp_path / "peft"
    assert cli("convert", run["base"], "--to", "hf", "--out", hf, "-q").code == 0
    assert cli("convert", run["final"], "--to", "peft", "--out", out, "-q").code == 0
    merged = tmp_path / "merged-peft"
    res = cli("merge", out, "--base", hf, "--out", merged, "-q")
    assert res.code == 0, res.stderr
    litgpt_merge(run["final"], run["base"], tmp_path)  # writes tmp_path/ref_final/lit_model.pth
    ref_hf = tmp_path / "merged-lit-hf"
    res = cli("convert", tmp_path / "ref_final", "--to", "hf", "--out", ref_hf, "-q")
    assert res.code == 0, res.stderr
    ours, ref = load_file(merged / "model.safetensors"), load_file(ref_hf / "model.safetensors")
    base = load_file(hf / "model.safetensors")
    assert sorted(ours) == sorted(ref)
    for k, t in ref.items():
        assert ours[k].dtype == t.dtype == dtype, k
        if "norm" in k or "embed" in k:
            assert torch.equal(ours[k], t), k  # not adapted: the base's bits in both
        elif dtype == torch.float32:
            assert torch.allclose(ours[k], t, rtol=1e-6, atol=1e-7), k
        else:
            a, b = ours[k].float(), t.float()
            size = torch.maximum(torch.maximum(a.abs(), b.abs()), base[k].float().abs())  # rounding happens at |W|
            ulp = torch.exp2(torch.floor(torch.log2(size.clamp_min(2**-100))) - 7)
            assert ((a - b).abs() <= 4 * ulp).all(), k
    changed = [k for k in ref if not torch.equal(ours[k], ref[k])]
    assert (changed == []) if dtype == torch.float32 else changed  # what we measured (see the docstring)


# --- refusals ---------------------------------------------------------------------------------------------------


def test_adapter_v1_is_refused_and_nothing_written(cli, tmp_path):
    from lit_helpers import build_adapter_final

    final = build_adapter_final(tmp_path / "final", version=1, base_dir=tmp_path / "base")
    out = tmp_path / "peft"
    res = cli("convert", final, "--to", "peft", "--out", out)
    assert res.code == 5 and "adapter (v1" in res.stderr and "PEFT has no counterpart" in res.stderr
    assert nothing_written(out)


def test_missing_alpha_is_refused_with_the_fix(cli, tmp_path):
    run = make_run(tmp_path, "llama-gqa", QV)
    (run["final"] / "hyperparameters.yaml").unlink()
    out = tmp_path / "peft"
    res = cli("convert", run["final"], "--to", "peft", "--out", out)
    assert res.code == 6 and "lora_alpha is unknown" in res.stderr and "hyperparameters.yaml" in res.stderr
    assert nothing_written(out)


def test_assumed_values_travel_into_the_notes(cli, tmp_path):
    run = make_run(tmp_path, "llama-gqa", QV)
    hp = run["final"] / "hyperparameters.yaml"
    hp.write_text("# ASSUMED: lora_alpha=16 (the old lit-gpt default)\n" + hp.read_text())
    res = cli("convert", run["final"], "--to", "peft", "--out", tmp_path / "peft", "--json")
    assert res.code == 0, res.stderr
    notes = json.loads(res.stdout)["notes"]
    assert any("ASSUMED: lora_alpha=16" in n for n in notes)


def test_lora_tensors_that_disagree_with_the_hyperparameters_are_refused(cli, tmp_path):
    run = make_run(tmp_path, "llama-gqa", ALL)
    lora = dict(run["lora"])
    del lora["transformer.h.1.mlp.fc_2.lora_A"], lora["transformer.h.1.mlp.fc_2.lora_B"]
    torch.save({"model": lora}, run["final"] / "lit_model.pth.lora")
    out = tmp_path / "peft"
    res = cli("convert", run["final"], "--to", "peft", "--out", out)
    assert res.code == 6 and "mlp.fc_2" in res.stderr and "layer 1" in res.stderr, res.stderr
    assert nothing_written(out)


def test_moe_mlp_lora_is_refused(cli, tmp_path):
    """transformers 5 fuses Mixtral's experts into 3-D parameters: no Linear for LitGPT's per-expert LoRA."""
    run = make_run(tmp_path, "mixtral", QV + ("mlp",))
    out = tmp_path / "peft"
    res = cli("convert", run["final"], "--to", "peft", "--out", out)
    assert res.code == 5 and "mixture-of-experts" in res.stderr, res.stderr
    assert nothing_written(out)


def test_tied_head_lora_is_refused(cli, tmp_path):
    """Gemma ties lm_head to the embeddings in transformers: no module of its own to put LitGPT's head LoRA on."""
    MODELS["gemma"] = ("Gemma-2b", {"n_embd": 64, "n_head": 4, "n_query_groups": 1, "head_size": 16, "intermediate_size": 96})
    try:
        run = make_run(tmp_path, "gemma", ("query", "value", "head"))
    finally:
        del MODELS["gemma"]
    out = tmp_path / "peft"
    res = cli("convert", run["final"], "--to", "peft", "--out", out)
    assert res.code == 5 and "lm_head" in res.stderr and "ties" in res.stderr, res.stderr
    assert nothing_written(out)


def _peft_adapter(cli, tmp_path: Path, case: str = "llama-gqa", **lora: Any) -> tuple[dict[str, Any], Path, Path]:
    """A PEFT adapter trained (random) on the HF conversion of a LitGPT base."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path, case, QV)
    hf = tmp_path / "hf"
    assert cli("convert", run["base"], "--to", "hf", "--out", hf, "-q").code == 0
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(hf, dtype=torch.float32), LoraConfig(**lora))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_" in n:
                p.copy_(torch.randn_like(p) * 0.3)
    adapter = tmp_path / "adapter"
    model.save_pretrained(adapter)
    return run, hf, adapter


REFUSED_PEFT = [
    ("dora", {"r": 2, "lora_alpha": 4, "use_dora": True, "target_modules": ["q_proj", "v_proj"]}, "DoRA"),
    ("some-layers", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "layers_to_transform": [0]},
     "must cover every layer"),
    ("part-of-mlp", {"r": 2, "lora_alpha": 4, "target_modules": ["gate_proj", "up_proj"]}, "every MLP Linear"),
    ("rank-pattern", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "v_proj"], "rank_pattern": {"v_proj": 4}},
     "differ in rank or scale"),
    ("embedding", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj", "embed_tokens"]}, "embedding LoRA"),
    ("modules-to-save", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "modules_to_save": ["lm_head"]},
     "full tensors"),
    ("lora-bias", {"r": 2, "lora_alpha": 4, "target_modules": ["q_proj"], "lora_bias": True}, "lora_bias"),
]  # fmt: skip


@pytest.mark.parametrize(("case", "lora", "why"), REFUSED_PEFT, ids=[c[0] for c in REFUSED_PEFT])
def test_peft_adapters_litgpt_cannot_express_are_refused(cli, tmp_path, case, lora, why):
    _, hf, adapter = _peft_adapter(cli, tmp_path, **lora)
    out = tmp_path / "lit"
    res = cli("convert", adapter, "--to", "lit", "--out", out, "--base", hf)
    assert res.code == 5 and why in res.stderr, res.stderr
    assert "Traceback" not in res.stderr
    assert nothing_written(out)


def test_peft_to_lit_needs_the_base(cli, tmp_path):
    _, hf, adapter = _peft_adapter(cli, tmp_path, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "lit"
    res = cli("convert", adapter, "--to", "lit", "--out", out)
    assert res.code == 2 and "--base" in res.stderr
    res = cli("convert", adapter, "--to", "lit", "--out", out, "--base", tmp_path / "nowhere")
    assert res.code == 3
    assert nothing_written(out)


def test_peft_trained_adapter_on_a_fused_family_converts_with_a_shared_a(cli, tmp_path):
    """PEFT's Phi-3 qkv_proj / gate_up_proj LoRA (one A per fused module) → LitGPT blocks sharing that A:
    exact, LitGPT's logits equal PEFT's."""
    run, hf, adapter = _peft_adapter(
        cli, tmp_path, "phi-3", r=2, lora_alpha=4, target_modules=["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
    )
    back = tmp_path / "lit"
    res = cli("convert", adapter, "--to", "lit", "--out", back, "--base", run["base"])
    assert res.code == 0, res.stderr
    hp = yaml.safe_load((back / "hyperparameters.yaml").read_text())
    assert {k: hp[k] for k in hp if k.startswith("lora_") and k != "lora_dropout"} == {
        "lora_r": 2, "lora_alpha": 4, "lora_query": True, "lora_key": True, "lora_value": True,
        "lora_projection": True, "lora_mlp": True, "lora_head": False,
    }  # fmt: skip
    peft_model, _ = peft_load(hf, adapter)
    ids = tokens(run["config"])
    with torch.no_grad():
        ref = peft_model(ids).logits
    import litgpt.lora

    cfg = litgpt.lora.Config(**asdict(base_config_of(run)), **{k: v for k, v in hp.items() if k.startswith("lora_")})
    lit = litgpt.lora.GPT(cfg).eval()
    lit.load_state_dict({**torch.load(run["base"] / "lit_model.pth", weights_only=True), **read_lora(back)}, strict=False)
    assert (lit_logits(lit, ids) - ref).abs().max().item() <= 1e-4


def test_damaged_peft_keys_are_refused_with_the_repair(cli, tmp_path):
    from safetensors.torch import load_file, save_file

    _, hf, adapter = _peft_adapter(cli, tmp_path, r=2, lora_alpha=4, target_modules=["q_proj"])
    f = adapter / "adapter_model.safetensors"
    t = load_file(f)
    save_file({k.replace(".lora_A.", "_A.").replace(".lora_B.", "_B."): v for k, v in t.items()}, f)
    out = tmp_path / "lit"
    res = cli("convert", adapter, "--to", "lit", "--out", out, "--base", hf)
    assert res.code == 6 and "restore '.lora_'" in res.stderr
    assert nothing_written(out)


def test_non_lora_peft_tuners_are_refused(cli, tmp_path):
    from peft import IA3Config, get_peft_model
    from transformers import AutoModelForCausalLM

    run = make_run(tmp_path, "llama-gqa", QV)
    hf = tmp_path / "hf"
    assert cli("convert", run["base"], "--to", "hf", "--out", hf, "-q").code == 0
    model = get_peft_model(
        AutoModelForCausalLM.from_pretrained(hf), IA3Config(target_modules=["q_proj", "down_proj"],
                                                          feedforward_modules=["down_proj"])
    )
    model.save_pretrained(tmp_path / "ia3")
    out = tmp_path / "lit"
    res = cli("convert", tmp_path / "ia3", "--to", "lit", "--out", out, "--base", hf)
    assert res.code == 5 and "only LoRA adapters convert" in res.stderr
    assert nothing_written(out)


# --- the synthetic base table the module map is read from ----------------------------------------------------


def test_base_table_is_litgpt_state_dict_for_every_registry_config():
    """``LitModel.base_table`` (names and shapes, no litgpt) == ``litgpt.GPT`` on the meta device, for every
    config in LitGPT's registry (cut to 2 layers and 4 experts so the sweep is quick)."""
    import litgpt
    from ckpt_tool_lit.lora_hub import TABLE_DEFAULTS, LitModel
    from litgpt.config import configs

    defaults = {f.name: f.default for f in litgpt.Config.__dataclass_fields__.values() if f.name in TABLE_DEFAULTS}
    assert defaults == TABLE_DEFAULTS
    checked, seen = 0, set()
    for raw in configs:
        small = {**raw, "n_layer": min(raw.get("n_layer", 16), 2)}
        if small.get("n_expert"):
            small["n_expert"] = min(small["n_expert"], 4)
            small["n_expert_per_token"] = min(small.get("n_expert_per_token", 1), 4)
        cfg = litgpt.Config(**small)
        fields = asdict(cfg)
        shape_of = (tuple(str(fields[k]) for k in sorted(TABLE_DEFAULTS)), "OLMo" in cfg.name)
        if cfg.latent_attention or shape_of in seen:
            continue  # the same tensor table as a config already checked
        seen.add(shape_of)
        with torch.device("meta"):
            ref = {k: tuple(v.shape) for k, v in litgpt.GPT(cfg).state_dict().items()}
        assert LitModel(asdict(cfg)).base_table() == ref, cfg.name
        checked += 1
    assert checked > 60  # of LitGPT's 210 registry configs, 84 distinct tensor tables (0.5.13)


def test_a_merged_model_beside_the_new_lit_adapter_counts_as_existing_output(cli, tmp_path):
    """LitGPT takes final/lit_model.pth beside lit_model.pth.lora as that adapter's merge without looking."""
    _, hf, adapter = _peft_adapter(cli, tmp_path, r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"])
    out = tmp_path / "lit"
    out.mkdir()
    (out / "lit_model.pth").write_bytes(b"an older merge")
    res = cli("convert", adapter, "--to", "lit", "--out", out, "--base", hf)
    assert res.code == 6 and "lit_model.pth" in res.stderr and "--force" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["lit_model.pth"]
    res = cli("convert", adapter, "--to", "lit", "--out", out, "--base", hf, "--force", "--json")
    assert res.code == 0, res.stderr
    assert not (out / "lit_model.pth").exists() and (out / "lit_model.pth.lora").is_file()
