"""``ckpt-tool convert`` end to end, through the CLI, against the peers (LitGPT 0.5.13, transformers).

* LitGPT → HF for every family: a checkpoint dir as LitGPT writes it (bare ``lit_model.pth``,
  ``model_config.yaml`` by ``save_config``, tokenizer files, sometimes the original ``config.json`` and
  ``generation_config.json``) converts to tensors bit-identical to LitGPT's own ``convert_lit_checkpoint``
  (exception: a head LitGPT's Gemma converters drop although it is untied); transformers loads the
  directory with no missing / unexpected keys and computes LitGPT's logits; side files travel; and the
  HF directory converts back to the original ``lit_model.pth`` bit for bit, loadable by ``litgpt.GPT``.
* HF → LitGPT for models transformers built (``save_pretrained``; sharded; ``.bin``, also with the
  buffers old transformers saved) equals LitGPT's ``convert_hf_checkpoint``.
* Container conversions keep names, bits and metadata; ``--dtype`` casts floats only; shared storages
  are refused for safetensors.
* Bad input: one ``error:`` line, the documented exit code, nothing in the output directory.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

pytestmark = [pytest.mark.interop, pytest.mark.usefixtures("quick_torch")]

TINY = dict(n_layer=2, n_embd=32, n_head=4, intermediate_size=48, vocab_size=96, padded_vocab_size=96, block_size=64)
OTHERS = dict(n_layer=2, n_embd=64, n_head=4, intermediate_size=96, vocab_size=100, padded_vocab_size=128, block_size=64)
LLAMA3_ROPE = {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_seq_len": 16}
LLAMA3_BASE = {"model_type": "llama", "bos_token_id": 128000, "eos_token_id": [128001, 128009], "tie_word_embeddings": False}
GEN = {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.6}
# id -> (LitGPT name, overrides, lm_head == wte (a tied model), original config.json or None, generation config?)
CASES: dict[str, tuple[str, dict[str, Any], bool, dict[str, Any] | None, bool]] = {
    "llama2": ("Llama-2-7b-hf", TINY, False, None, False),
    "llama3-gqa-rope": ("Llama-3.1-8B", {**TINY, "n_query_groups": 2, "rope_adjustments": LLAMA3_ROPE}, False, LLAMA3_BASE, True),
    "mistral": ("Mistral-7B-v0.1", {**TINY, "n_query_groups": 2, "sliding_window_size": 4}, False, None, False),
    "mixtral": ("Mixtral-8x7B-v0.1", {**TINY, "n_query_groups": 2, "n_expert": 4, "n_expert_per_token": 2}, False, None, False),
    "gemma": ("Gemma-7b", {**TINY, "head_size": 16}, True, None, True),
    "gemma2": ("Gemma-2-2b", {**TINY, "head_size": 16, "n_query_groups": 2, "sliding_window_size": 4,
                              "sliding_window_indices": [1, 0], "attention_scores_scalar": 12}, True, None, False),
    "gemma3-tied": ("Gemma-3-1b-it", {**TINY, "head_size": 16, "n_query_groups": 1, "sliding_window_size": 4,
                                      "sliding_window_indices": [1, 0], "rope_indices": [1, 0]}, True, None, False),
    # LitGPT's Gemma converters drop the head even when it was trained apart; the original config.json unties it
    "gemma3-untied": ("Gemma-3-4b-it", {**TINY, "head_size": 16, "n_query_groups": 2, "sliding_window_size": 4,
                                        "sliding_window_indices": [1, 0], "rope_indices": [1, 0]}, False,
                      {"model_type": "gemma3_text", "tie_word_embeddings": False}, False),
    "pythia": ("pythia-14m", OTHERS, False, {"model_type": "gpt_neox", "bos_token_id": 0, "eos_token_id": 0}, True),
    "phi-2": ("phi-2", {**OTHERS, "n_embd": 80, "n_query_groups": 2}, False, None, False),
    "phi-3": ("Phi-3-mini-4k-instruct", {**OTHERS, "sliding_window_size": 5}, False, None, False),
    "phi-4-mini": ("Phi-4-mini-instruct", {**OTHERS, "n_query_groups": 2}, True, None, True),
    "falcon-7b": ("falcon-7b", OTHERS, False, None, False),
    "falcon-40b": ("falcon-40b", {**OTHERS, "n_head": 8, "n_query_groups": 2}, False, None, False),
    "qwen2.5": ("Qwen2.5-0.5B", {**TINY, "n_query_groups": 2}, False, None, False),
    "qwen3": ("Qwen3-0.6B", {**TINY, "n_query_groups": 2, "head_size": 16}, False, None, True),
}  # fmt: skip
TOKENS = torch.tensor([[3, 17, 42, 5, 88, 1, 9, 63, 20, 7, 50, 31]])  # longer than the sliding windows
TOKENIZER = {"tokenizer.json": b'{"version": "1.0", "model": {"type": "BPE"}}', "tokenizer_config.json": b'{"bos_token": "<s>"}'}


def ok(cli, *args: object) -> dict[str, Any]:
    res = cli("convert", *args, "--json")
    assert res.code == 0, res.stderr
    return json.loads(res.stdout)


def lit_model(case: str, dtype: torch.dtype = torch.float32) -> tuple[Any, Any, dict[str, torch.Tensor]]:
    import litgpt

    name, over, tied, _, _ = CASES[case]
    config = litgpt.Config.from_name(name, **over)
    model = litgpt.GPT(config)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():  # every parameter random, norms too, so a misplaced tensor shows
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
        if tied:
            model.lm_head.weight.copy_(model.transformer.wte.weight)
    return config, model.eval(), {k: v.detach().to(dtype).clone() for k, v in model.state_dict().items()}


def lit_dir(d: Path, config: Any, sd: dict[str, torch.Tensor], base: dict | None = None, gen: bool = False) -> Path:
    """A checkpoint dir as LitGPT's download / finetune leave it."""
    from litgpt.utils import save_config

    d.mkdir(parents=True)
    torch.save(sd, d / "lit_model.pth")
    save_config(config, d)
    for name, data in TOKENIZER.items():
        (d / name).write_bytes(data)
    if base is not None:
        (d / "config.json").write_text(json.dumps(base))
    if gen:
        (d / "generation_config.json").write_text(json.dumps(GEN))
    return d


def litgpt_to_hf(lit: Path, tmp: Path) -> dict[str, torch.Tensor]:
    from litgpt.scripts.convert_lit_checkpoint import convert_lit_checkpoint

    with contextlib.redirect_stdout(io.StringIO()):
        convert_lit_checkpoint(lit, tmp / "litgpt-hf")
    return torch.load(tmp / "litgpt-hf" / "model.pth", weights_only=True)


def load_hf(directory: Path) -> Any:
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        directory, output_loading_info=True, attn_implementation="eager", dtype=torch.float32
    )
    assert not any(info.get(k) for k in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs")), info
    return model.eval()


def assert_same(ours: dict[str, torch.Tensor], theirs: dict[str, torch.Tensor], order: bool = False) -> None:
    assert (list(ours) if order else sorted(ours)) == (list(theirs) if order else sorted(theirs))
    for k, t in theirs.items():
        assert ours[k].dtype == t.dtype, k
        assert ours[k].view(torch.uint8).equal(t.contiguous().view(torch.uint8)), k  # the bits, NaN and -0.0 too


def hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    return {k: v for f in files for k, v in load_file(f).items()}


def lit_arch(config: Any) -> dict[str, Any]:
    import dataclasses

    from ckpt_tool_lit.hub.model_config import hf_route, lit_route

    d = dataclasses.asdict(config)
    # the name may come back as the repository's (Meta-Llama-3.1-8B for LitGPT's Llama-3.1-8B): same route
    skip = {"name", "hf_config", "vocab_size", "padding_multiple"}
    route = (lit_route(config.name, config.mlp_class_name), hf_route(config.name, config.mlp_class_name))
    return {"route": route, **{k: v for k, v in d.items() if k not in skip}}


# --- LitGPT -> HF -> LitGPT ------------------------------------------------------------------------------


@pytest.mark.parametrize("case", list(CASES))
def test_lit_to_hf_and_back_through_the_cli(case, tmp_path, cli):
    import litgpt

    config, model, sd = lit_model(case)
    _, _, tied, base, gen = CASES[case]
    lit = lit_dir(tmp_path / "lit", config, sd, base, gen)
    hf = tmp_path / "hf"
    summary = ok(cli, lit, "--to", "hf", "--out", hf)
    assert summary["to"] == "hf" and summary["outputs"][0] == str(hf / "model.safetensors")

    ours, theirs = hf_tensors(hf), litgpt_to_hf(lit, tmp_path)
    if case == "gemma3-untied":  # the documented exception: LitGPT drops the untied head, transformers needs it
        assert "lm_head.weight" not in theirs
        theirs["lm_head.weight"] = sd["lm_head.weight"]
    assert_same(ours, theirs)

    config_json = json.loads((hf / "config.json").read_text())
    head = "embed_out.weight" if case == "pythia" else "lm_head.weight"
    assert config_json["tie_word_embeddings"] is tied and (head in ours) is not tied
    assert config_json["torch_dtype"] == config_json["dtype"] == "float32"
    for key in ("bos_token_id", "eos_token_id"):
        assert config_json[key] == (base or {}).get(key)  # from the original config.json, else null
    for name, data in TOKENIZER.items():
        assert (hf / name).read_bytes() == data
    assert (hf / "generation_config.json").exists() is gen
    if gen:
        assert json.loads((hf / "generation_config.json").read_text()) == GEN
    with torch.no_grad():
        assert (load_hf(hf)(TOKENS).logits - model(TOKENS)).abs().max().item() <= 1e-4

    back = tmp_path / "lit2"
    ok(cli, hf, "--to", "lit", "--out", back)
    assert_same(torch.load(back / "lit_model.pth", weights_only=True), sd, order=True)
    again = litgpt.Config.from_file(back / "model_config.yaml")
    assert lit_arch(again) == lit_arch(config)
    litgpt.GPT(again).load_state_dict(torch.load(back / "lit_model.pth", weights_only=True), strict=True)
    for name, data in TOKENIZER.items():
        assert (back / name).read_bytes() == data
    assert json.loads((back / "config.json").read_text()) == config_json  # the original for a later conversion


def test_bf16_stays_bf16_bit_for_bit(tmp_path, cli):
    config, _, sd = lit_model("llama3-gqa-rope", torch.bfloat16)
    lit = lit_dir(tmp_path / "lit", config, sd)
    ok(cli, lit, "--to", "hf", "--out", tmp_path / "hf")
    assert_same(hf_tensors(tmp_path / "hf"), litgpt_to_hf(lit, tmp_path))
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["torch_dtype"] == "bfloat16"
    ok(cli, tmp_path / "hf", "--to", "lit", "--out", tmp_path / "lit2")
    assert_same(torch.load(tmp_path / "lit2" / "lit_model.pth", weights_only=True), sd, order=True)


def test_fine_tune_output_sharded_for_transformers(tmp_path, cli):
    """A full fine-tune's final/ (``{"model": ...}``, as ``litgpt finetune_full`` saves it) into safetensors shards
    + index that transformers loads."""
    config, model, sd = lit_model("mistral")
    lit = lit_dir(tmp_path / "out" / "final", config, sd)
    torch.save({"model": sd}, lit / "lit_model.pth")
    hf = tmp_path / "hf"
    summary = ok(cli, lit, "--to", "hf", "--out", hf, "--max-shard-size", "40KB")
    shards = sorted(p.name for p in hf.glob("model-*.safetensors"))
    assert len(shards) > 1 and (hf / "model.safetensors.index.json").exists() and not (hf / "model.safetensors").exists()
    assert set(summary["outputs"]) >= {str(hf / n) for n in shards}
    assert_same(hf_tensors(hf), litgpt_to_hf(lit, tmp_path))
    with torch.no_grad():
        assert (load_hf(hf)(TOKENS).logits - model(TOKENS)).abs().max().item() <= 1e-4


def test_dtype_casts_the_conversion(tmp_path, cli):
    config, _, sd = lit_model("qwen2.5")
    lit = lit_dir(tmp_path / "lit", config, sd)
    summary = ok(cli, lit, "--to", "hf", "--out", tmp_path / "hf", "--dtype", "bf16")
    assert summary["output_dtypes"] == {"bfloat16": len(hf_tensors(tmp_path / "hf"))}
    theirs = {k: v.to(torch.bfloat16) for k, v in litgpt_to_hf(lit, tmp_path).items()}
    assert_same(hf_tensors(tmp_path / "hf"), theirs)
    config_json = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert config_json["torch_dtype"] == config_json["dtype"] == "bfloat16"
    # HF -> HF: both spellings of the dtype follow (transformers 5 reads ``dtype`` before ``torch_dtype``)
    ok(cli, tmp_path / "hf", "--to", "hf", "--out", tmp_path / "hf16", "--dtype", "fp16")
    config_json = json.loads((tmp_path / "hf16" / "config.json").read_text())
    assert config_json["torch_dtype"] == config_json["dtype"] == "float16"
    assert_same(hf_tensors(tmp_path / "hf16"), {k: v.half() for k, v in theirs.items()})


NO_TORCH = (
    "import sys\nfrom ckpt_tool.cli import main\n"
    "try:\n    main(['convert', *sys.argv[1:], '--quiet'])\nexcept SystemExit as exc:\n    assert not exc.code, exc.code\n"
    "print('torch' in sys.modules)\n"
)


@pytest.mark.parametrize("case", ["llama3-gqa-rope", "pythia", "falcon-40b", "phi-3", "gemma3-tied"])
def test_conversion_without_dtype_does_not_import_torch(case, tmp_path):
    """qkv split/fuse (grouped, GQA), per-group interleaved qkv (NeoX, Falcon), Phi-3's gate_up and the tied-head
    check are row permutations: byte ranges copied file to file, both ways, bit-identical; LitGPT -> HF without
    torch (HF -> LitGPT writes a torch file, whose pickle the writer builds with torch's rebuild functions)."""
    import subprocess
    import sys

    config, _, sd = lit_model(case, torch.bfloat16)
    _, _, _, base, gen = CASES[case]
    lit = lit_dir(tmp_path / "lit", config, sd, base, gen)
    for args, torch_free in (
        ((lit, "--to", "hf", "--out", tmp_path / "hf"), True),
        ((tmp_path / "hf", "--to", "lit", "--out", tmp_path / "back"), False),
    ):
        proc = subprocess.run([sys.executable, "-c", NO_TORCH, *map(str, args)], capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        assert not torch_free or proc.stdout.strip() == "False", f"{args[1:3]} imported torch"
    assert_same(hf_tensors(tmp_path / "hf"), litgpt_to_hf(lit, tmp_path))
    assert_same(torch.load(tmp_path / "back" / "lit_model.pth", weights_only=True), sd)


# --- HF (transformers-built) -> LitGPT ---------------------------------------------------------------------

TINY_HF = dict(vocab_size=96, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
               num_key_value_heads=2, max_position_embeddings=64)  # fmt: skip


def _hf_case(case: str) -> tuple[Any, str, dict[str, Any]]:
    import transformers as T

    return {
        "llama": (T.LlamaConfig(**TINY_HF, rope_theta=500000.0), "Llama-3.1-8B", dict(TINY, n_query_groups=2)),
        "qwen3": (T.Qwen3Config(**TINY_HF, head_dim=16), "Qwen3-0.6B", dict(TINY, n_query_groups=2, head_size=16)),
        "phi3": (T.Phi3Config(**{**TINY_HF, "num_key_value_heads": 4}, pad_token_id=0, bos_token_id=1, eos_token_id=2),
                 "Phi-3-mini-4k-instruct", dict(TINY, sliding_window_size=None)),
        "neox": (T.GPTNeoXConfig(**{k: v for k, v in TINY_HF.items() if k != "num_key_value_heads"}),
                 "pythia-14m", dict(TINY, intermediate_size=48)),
    }[case]  # fmt: skip


def _save(model: Any, directory: Path, how: str) -> None:
    """As transformers saves (``save_pretrained``), sharded, or as transformers 4 wrote ``.bin`` files."""
    if how == "safetensors":
        model.save_pretrained(directory)
    elif how == "sharded":
        model.save_pretrained(directory, max_shard_size="20KB")
        assert (directory / "model.safetensors.index.json").exists()
    else:
        directory.mkdir()
        model.config.save_pretrained(directory)
        sd = model.state_dict()
        if how == "bin":
            torch.save(sd, directory / "pytorch_model.bin")
        else:  # two .bin shards and their index
            names = list(sd)
            half = {f"pytorch_model-0000{i + 1}-of-00002.bin": names[i::2] for i in range(2)}
            for f, keys in half.items():
                torch.save({k: sd[k] for k in keys}, directory / f)
            weight_map = {k: f for f, keys in half.items() for k in keys}
            (directory / "pytorch_model.bin.index.json").write_text(
                json.dumps({"metadata": {"total_size": 0}, "weight_map": weight_map})
            )


@pytest.mark.parametrize(("case", "how"), [("llama", "safetensors"), ("qwen3", "sharded"), ("phi3", "bin"), ("neox", "bin-sharded")])
def test_hf_to_lit_matches_convert_hf_checkpoint(case, how, tmp_path, cli, monkeypatch):
    import litgpt
    import litgpt.scripts.convert_hf_checkpoint as conv
    from transformers import AutoModelForCausalLM

    config, lit_name, over = _hf_case(case)
    g = torch.Generator().manual_seed(1)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    hf = tmp_path / "hf"
    _save(model, hf, how)
    for name, data in TOKENIZER.items():
        (hf / name).write_bytes(data)
    ok(cli, hf, "--to", "lit", "--out", tmp_path / "lit")
    ours = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)

    ref = tmp_path / "ref"
    shutil.copytree(hf, ref)
    tiny = litgpt.Config.from_name(lit_name, **over)
    monkeypatch.setattr(conv.Config, "from_name", classmethod(lambda cls, name, **kw: tiny))
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        conv.convert_hf_checkpoint(ref, model_name=lit_name)
    assert_same(ours, torch.load(ref / "lit_model.pth", weights_only=True))

    gpt = litgpt.GPT(litgpt.Config.from_file(tmp_path / "lit" / "model_config.yaml")).eval()
    gpt.load_state_dict(ours, strict=True)
    with torch.no_grad():
        assert (gpt(TOKENS) - model(TOKENS).logits).abs().max().item() <= 1e-4
    for name, data in TOKENIZER.items():
        assert (tmp_path / "lit" / name).read_bytes() == data


def test_old_transformers_buffers_are_consumed(tmp_path, cli):
    """GPT-NeoX ``.bin`` files of old transformers carry the causal mask and rotary buffers: they are dropped,
    as LitGPT drops them, and the conversion still places every other tensor."""
    from transformers import AutoModelForCausalLM

    config, _, _ = _hf_case("neox")
    model = AutoModelForCausalLM.from_config(config).eval()
    hf = tmp_path / "hf"
    hf.mkdir()
    model.config.save_pretrained(hf)
    sd = dict(model.state_dict())
    for i in range(2):
        sd[f"gpt_neox.layers.{i}.attention.bias"] = torch.ones(1, 1, 64, 64, dtype=torch.bool).tril()
        sd[f"gpt_neox.layers.{i}.attention.masked_bias"] = torch.tensor(-1e9)
        sd[f"gpt_neox.layers.{i}.attention.rotary_emb.inv_freq"] = torch.ones(2)
    torch.save(sd, hf / "pytorch_model.bin")
    summary = ok(cli, hf, "--to", "lit", "--out", tmp_path / "lit")
    lit = torch.load(tmp_path / "lit" / "lit_model.pth", weights_only=True)
    assert summary["tensors"]["written"] == len(lit) == len(model.state_dict())
    assert not any("inv_freq" in k or "masked_bias" in k for k in lit)


# --- containers ----------------------------------------------------------------------------------------------


def test_torch_and_safetensors_keep_names_bits_and_metadata(tmp_path, cli):
    from safetensors import safe_open
    from safetensors.torch import save_file

    config, _, sd = lit_model("llama2")
    lit = lit_dir(tmp_path / "lit", config, sd)
    ok(cli, lit / "lit_model.pth", "--to", "safetensors", "--out", tmp_path / "m.safetensors")
    with safe_open(tmp_path / "m.safetensors", "pt") as f:
        meta = f.metadata()
        assert json.loads(meta.pop("ckpt_tool.provenance"))["operation"] == "convert"
        assert meta == {"format": "pt"}
        assert_same({k: f.get_tensor(k) for k in f.keys()}, sd)
    ok(cli, tmp_path / "m.safetensors", "--to", "torch", "--out", tmp_path / "m.pth")
    # safetensors lays tensors out as save_file does (by dtype, then name): the torch file keeps that order
    assert_same(torch.load(tmp_path / "m.pth", weights_only=True), sd)

    mixed = {"w": torch.randn(4, 4), "h": torch.randn(3).half(), "step": torch.tensor([7, -1]), "mask": torch.tensor([True])}
    save_file(mixed, tmp_path / "x.safetensors", metadata={"format": "pt", "note": "kept"})
    ok(cli, tmp_path / "x.safetensors", "--to", "safetensors", "--out", tmp_path / "y.safetensors", "--dtype", "bf16")
    with safe_open(tmp_path / "y.safetensors", "pt") as f:
        meta = f.metadata()
        assert "ckpt_tool.provenance" in meta
        assert {k: v for k, v in meta.items() if k != "ckpt_tool.provenance"} == {"format": "pt", "note": "kept"}
        got = {k: f.get_tensor(k) for k in f.keys()}
    assert_same(got, {k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in mixed.items()})


def test_shared_storage_is_refused_for_safetensors_as_safetensors_does(tmp_path, cli):
    from safetensors.torch import save_file

    t = torch.randn(8, 4)
    torch.save({"embed": t, "head": t, "half": t[4:]}, tmp_path / "tied.pth")
    with pytest.raises(RuntimeError, match="share memory"):
        save_file({"embed": t, "head": t}, tmp_path / "ref.safetensors")
    out = tmp_path / "out"
    out.mkdir()
    res = cli("convert", tmp_path / "tied.pth", "--to", "safetensors", "--out", out / "tied.safetensors")
    assert res.code == 6 and res.stderr.count("error:") == 1
    assert "share one storage" in res.stderr and "embed" in res.stderr
    assert list(out.iterdir()) == []
    ok(cli, tmp_path / "tied.pth", "--to", "torch", "--out", out / "copy.pth")  # the torch container can hold it
    assert_same(torch.load(out / "copy.pth", weights_only=True), {"embed": t, "head": t, "half": t[4:]})


# --- bad input and dry runs -----------------------------------------------------------------------------------


def _bad_inputs(tmp: Path) -> dict[str, tuple[Path, int, str]]:
    import litgpt

    config, _, sd = lit_model("llama2")
    good = lit_dir(tmp / "good", config, sd)
    olmo = litgpt.Config.from_name("OLMo-2-1124-7B", **TINY, n_query_groups=4)
    unsupported = lit_dir(tmp / "olmo2", olmo, {k: v.clone() for k, v in litgpt.GPT(olmo).state_dict().items()})
    no_config = tmp / "no-config"
    shutil.copytree(good, no_config)
    (no_config / "model_config.yaml").unlink()
    truncated = tmp / "truncated"
    shutil.copytree(good, truncated)
    data = (good / "lit_model.pth").read_bytes()
    (truncated / "lit_model.pth").write_bytes(data[: len(data) // 2])
    adapter = tmp / "adapter" / "final"
    adapter.mkdir(parents=True)
    import litgpt.adapter as lit_adapter

    acfg = lit_adapter.Config.from_name("Llama-2-7b-hf", **TINY, adapter_prompt_length=4, adapter_start_layer=0)
    asd = {k: v for k, v in lit_adapter.GPT(acfg).state_dict().items() if "adapter" in k or "gating" in k}
    torch.save({"model": asd}, adapter / "lit_model.pth.adapter")
    from litgpt.utils import save_config

    save_config(acfg, adapter)
    return {
        "unsupported-family": (unsupported, 5, "no LitGPT ↔ Hugging Face conversion"),
        "adapter-v1": (adapter, 5, "adapter"),
        "no-model-config": (no_config, 4, "model_config.yaml"),
        "truncated": (truncated, 4, "truncated"),
    }


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory) -> dict[str, tuple[Path, int, str]]:
    return _bad_inputs(tmp_path_factory.mktemp("bad"))


@pytest.mark.parametrize(
    ("case", "to"),
    [("unsupported-family", "hf"), ("adapter-v1", "hf"), ("no-model-config", "hf"), ("truncated", "hf"),
     ("truncated", "safetensors")],
)  # fmt: skip
def test_bad_input_is_one_error_line_and_nothing_written(case, to, bad_inputs, tmp_path, cli):
    src, code, needle = bad_inputs[case]
    out = tmp_path / "out"
    out.mkdir()
    res = cli("convert", src, "--to", to, "--out", out)
    assert res.code == code, res.stderr
    assert res.stderr.startswith("error: ") and res.stderr.count("\n") == 1 and needle in res.stderr
    assert "internal error" not in res.stderr and res.stdout == ""
    assert list(out.iterdir()) == []  # not even a temp file


def test_a_trained_head_is_not_tied_away(tmp_path, cli):
    """A Gemma fine-tune whose head moved: refused at run time (LitGPT's converter drops it), nothing
    published, and the hint (untie in config.json beside the weights) works."""
    config, model, sd = lit_model("gemma")
    sd["lm_head.weight"] = sd["lm_head.weight"] + 1
    lit = lit_dir(tmp_path / "lit", config, sd)
    out = tmp_path / "hf"
    out.mkdir()
    res = cli("convert", lit, "--to", "hf", "--out", out)
    assert res.code == 6 and "lm_head.weight differs from transformer.wte.weight" in res.stderr
    assert "tie_word_embeddings" in res.stderr and list(out.iterdir()) == []
    (lit / "config.json").write_text(json.dumps({"tie_word_embeddings": False}))
    ok(cli, lit, "--to", "hf", "--out", out)
    assert torch.equal(hf_tensors(out)["lm_head.weight"], sd["lm_head.weight"])


def test_dry_run_lists_the_outputs_and_writes_nothing(tmp_path, cli):
    config, _, sd = lit_model("phi-4-mini")
    lit = lit_dir(tmp_path / "lit", config, sd, gen=True)
    out = tmp_path / "hf"
    res = cli("convert", lit, "--to", "hf", "--out", out, "--dry-run")
    assert res.code == 0, res.stderr
    assert not out.exists()
    for name in ("model.safetensors", "config.json", "tokenizer.json", "generation_config.json"):
        assert f"would write {out / name}" in res.stdout
    summary = ok(cli, lit, "--to", "hf", "--out", out, "--dry-run")
    assert summary["dry_run"] and str(out / "model.safetensors") in summary["outputs"] and not out.exists()


def test_existing_output_needs_force(tmp_path, cli):
    config, _, sd = lit_model("llama2")
    lit = lit_dir(tmp_path / "lit", config, sd)
    ok(cli, lit, "--to", "hf", "--out", tmp_path / "hf")
    before = (tmp_path / "hf" / "model.safetensors").read_bytes()
    res = cli("convert", lit, "--to", "hf", "--out", tmp_path / "hf")
    assert res.code == 6 and "--force" in res.stderr
    ok(cli, lit, "--to", "hf", "--out", tmp_path / "hf", "--force")
    assert (tmp_path / "hf" / "model.safetensors").read_bytes() == before
