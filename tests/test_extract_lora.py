"""``ckpt-tool split --extract-lora``: the Eckart-Young optimum per module, zero-delta modules absent,
refusals that leave nothing; with ``@pytest.mark.interop``: PEFT loads the adapter on a transformers Llama
with no missing / unexpected keys and reproduces an exactly low-rank fine-tune's logits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_helpers import PROVENANCE_KEY, names
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from ckpt_tool.ops.extract_lora import factor

pytestmark = pytest.mark.usefixtures("quick_torch")

HIDDEN, INTER, KV = 16, 40, 8


# --- builders --------------------------------------------------------------------------------------


def _base_sd(seed: int = 0, layers: int = 2, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    sd = {"model.embed_tokens.weight": torch.randn(50, HIDDEN, generator=g)}
    for i in range(layers):
        p = f"model.layers.{i}."
        sd[p + "self_attn.q_proj.weight"] = torch.randn(HIDDEN, HIDDEN, generator=g)
        sd[p + "self_attn.k_proj.weight"] = torch.randn(KV, HIDDEN, generator=g)
        sd[p + "mlp.up_proj.weight"] = torch.randn(INTER, HIDDEN, generator=g)
        sd[p + "mlp.down_proj.weight"] = torch.randn(HIDDEN, INTER, generator=g)
        sd[p + "input_layernorm.weight"] = torch.ones(HIDDEN)
    sd["model.norm.weight"] = torch.ones(HIDDEN)
    sd["lm_head.weight"] = torch.randn(50, HIDDEN, generator=g)
    return {k: v.to(dtype) for k, v in sd.items()}


def _write(directory: Path, sd: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in sd.items()}, directory / "model.safetensors", metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"], "model_type": "llama"}))
    return directory


def _low_rank(out_f: int, in_f: int, r: int, seed: int, scale: float = 0.1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return scale * torch.randn(out_f, r, generator=g, dtype=torch.float64) @ torch.randn(r, in_f, generator=g, dtype=torch.float64)


def _pair(tmp_path: Path, change: dict[str, torch.Tensor] | None = None, dtype: torch.dtype = torch.float32) -> tuple[Path, Path]:
    """A base and a fine-tune that changes every q_proj / down_proj (rank 3) and nothing else unless ``change``."""
    base = _base_sd(dtype=dtype)
    ft = dict(base)
    for i, n in enumerate(k for k in base if k.endswith(("q_proj.weight", "down_proj.weight"))):
        ft[n] = (base[n].double() + _low_rank(*base[n].shape, 3, seed=10 + i)).to(dtype)
    ft.update(change or {})
    return _write(tmp_path / "base", base), _write(tmp_path / "ft", ft)


def _valid(doc: dict) -> dict:
    """The document is valid against the published schema of ``split`` (``additionalProperties: false``)."""
    from importlib import resources

    from jsonschema import Draft202012Validator

    schema = json.loads((resources.files("ckpt_tool.schemas") / "output.schema.json").read_text())
    Draft202012Validator({"$schema": schema["$schema"], "$defs": schema["$defs"], "$ref": "#/$defs/split"}).validate(doc)
    return doc


def _optimum(d: torch.Tensor, r: int) -> tuple[float, float]:
    """(optimal ||D - D_r||_F, retained energy) from an independent fp64 SVD."""
    s = torch.linalg.svdvals(d.double())
    return float(s[r:].square().sum().sqrt()), float(s[:r].square().sum() / s.square().sum())


# --- the math --------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(48, 20), (20, 48), (32, 32)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("spectrum", ["full", "decaying", "exact"])
def test_factor_reaches_the_eckart_young_optimum(shape, dtype, spectrum):
    g = torch.Generator().manual_seed(hash((shape, spectrum)) % 2**31)
    base = torch.randn(*shape, generator=g).to(dtype)
    r = 5
    if spectrum == "full":
        delta = 0.02 * torch.randn(*shape, generator=g, dtype=torch.float64)
    elif spectrum == "decaying":  # singular values 1, 1/2, 1/4, ...: the tail the error is measured against is small
        u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape), generator=g, dtype=torch.float64))
        v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape), generator=g, dtype=torch.float64))
        delta = u @ torch.diag(0.5 ** torch.arange(min(shape), dtype=torch.float64)) @ v.T
    else:
        delta = _low_rank(*shape, r, seed=3)
    ft = (base.double() + delta).to(dtype)
    a, b, stats = factor(ft, base, r)
    assert a.dtype == b.dtype == torch.float32 and a.shape == (r, shape[1]) and b.shape == (shape[0], r)
    d = ft.double() - base.double()  # what the fine-tune's stored weights really differ by
    err = float(torch.linalg.vector_norm(d - b.double() @ a.double()))
    opt, energy = _optimum(d, r)
    norm = float(torch.linalg.vector_norm(d))
    assert err <= 1.01 * opt + 1e-6 * norm, (err, opt, norm)
    assert err >= opt * (1 - 1e-6) - 1e-6 * norm  # nothing beats the optimum: the oracle is right
    assert stats["energy"] == pytest.approx(energy, abs=1e-9)
    assert stats["optimum"] == pytest.approx(opt / norm, abs=1e-7)
    assert stats["error"] == pytest.approx(err / norm, abs=1e-7)
    torch.testing.assert_close(a.double() @ a.double().T, torch.eye(r, dtype=torch.float64), atol=1e-5, rtol=0)


def test_factor_of_a_rank_deficient_delta_is_exact_and_finite():
    base = torch.zeros(8, 30)
    ft = _low_rank(8, 30, 2, seed=1).float()
    a, b, stats = factor(ft, base, 6)  # rank 6 asked, the delta has rank 2: no division by a zero singular value
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    assert float(torch.linalg.vector_norm(ft.double() - b.double() @ a.double())) <= 1e-6 * float(ft.norm())
    assert stats["energy"] == pytest.approx(1.0)


# --- the command -----------------------------------------------------------------------------------


def test_extracts_changed_linears_only(tmp_path, cli):
    base, ft = _pair(tmp_path, {"model.norm.weight": torch.full((HIDDEN,), 1.5)})
    out = tmp_path / "out"
    res = cli("split", ft, "--extract-lora", "--base", base, "--rank", "3", "--out", out, "--json")
    assert res.code == 0, res.stderr
    s = _valid(json.loads(res.stdout))
    assert names(out) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    sd = load_file(out / "adapter_model.safetensors")
    changed = [f"model.layers.{i}.{m}" for i in range(2) for m in ("mlp.down_proj", "self_attn.q_proj")]
    assert sorted(sd) == sorted(f"base_model.model.{m}.lora_{p}.weight" for m in changed for p in "AB")
    assert all(t.dtype == torch.float32 for t in sd.values())
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert (cfg["peft_type"], cfg["r"], cfg["lora_alpha"], cfg["use_rslora"]) == ("LORA", 3, 3, False)
    assert cfg["target_modules"] == sorted(changed)
    assert cfg["base_model_name_or_path"] == str(base.resolve())
    assert cfg["task_type"] == "CAUSAL_LM"
    assert [m["module"] for m in s["modules"]] == sorted(changed)
    assert s["not_represented"] == [{"name": "model.norm.weight", "shape": [HIDDEN], "kind": "other",
                                     "relative_change": pytest.approx(0.5)}]
    assert "model.norm.weight" in s["warnings"][0]
    b_sd, f_sd = load_file(base / "model.safetensors"), load_file(ft / "model.safetensors")
    for row in s["modules"]:  # the deltas are exactly rank 3: the adapter reproduces them
        m = row["module"]
        d = f_sd[m + ".weight"].double() - b_sd[m + ".weight"].double()
        ba = sd[f"base_model.model.{m}.lora_B.weight"].double() @ sd[f"base_model.model.{m}.lora_A.weight"].double()
        assert float((d - ba).norm()) <= 1e-6 * float(d.norm())
        assert row["energy"] == pytest.approx(1.0) and row["error"] < 1e-6
    with safe_open(out / "adapter_model.safetensors", "pt") as f:
        prov = json.loads(f.metadata()[PROVENANCE_KEY])
    assert prov["operation"] == "split" and prov["split"]["mode"] == "extract-lora" and prov["split"]["rank"] == 3


def test_table_on_stdout(tmp_path, cli):
    base, ft = _pair(tmp_path)
    res = cli("split", ft, "--extract-lora", "--base", base, "--rank", "2", "--out", tmp_path / "out")
    assert res.code == 0, res.stderr
    head = [ln for ln in res.stdout.splitlines() if ln.startswith("module")]
    assert head and head[0].split() == ["module", "shape", "rank", "energy", "kept", "rel.", "error", "optimum"]
    assert "model.layers.1.mlp.down_proj" in res.stdout and "16x40" in res.stdout


def test_full_rank_delta_error_is_the_optimum(tmp_path, cli):
    g = torch.Generator().manual_seed(5)
    base = _base_sd()
    name = "model.layers.0.mlp.up_proj.weight"
    ft = dict(base, **{name: base[name] + 0.01 * torch.randn(INTER, HIDDEN, generator=g)})
    b, f = _write(tmp_path / "b", base), _write(tmp_path / "f", ft)
    res = cli("split", f, "--extract-lora", "--base", b, "--rank", "4", "--out", tmp_path / "o", "--json")
    assert res.code == 0, res.stderr
    (row,) = json.loads(res.stdout)["modules"]
    sd = load_file(tmp_path / "o" / "adapter_model.safetensors")
    d = ft[name].double() - base[name].double()
    ba = sd["base_model.model.model.layers.0.mlp.up_proj.lora_B.weight"].double() @ \
        sd["base_model.model.model.layers.0.mlp.up_proj.lora_A.weight"].double()
    opt, energy = _optimum(d, 4)
    err = float((d - ba).norm())
    assert opt > 0.5 * float(d.norm())  # really full rank: most of the energy is in the tail
    assert opt <= err <= 1.01 * opt
    assert row["energy"] == pytest.approx(energy, rel=1e-9)
    assert row["error"] == pytest.approx(err / float(d.norm()), rel=1e-6)


def test_rank_larger_than_a_module_is_clamped_exactly(tmp_path, cli):
    k = "model.layers.0.self_attn.k_proj.weight"
    base, ft = _pair(tmp_path, {k: _base_sd()[k] + 0.5 * torch.randn(KV, HIDDEN)})
    out = tmp_path / "out"
    res = cli("split", ft, "--extract-lora", "--base", base, "--rank", "12", "--out", out, "--json")
    assert res.code == 0, res.stderr
    cfg = json.loads((out / "adapter_config.json").read_text())
    assert cfg["r"] == 12 and cfg["rank_pattern"] == {"k_proj": KV} and cfg["alpha_pattern"] == {"k_proj": KV}
    sd = load_file(out / "adapter_model.safetensors")
    a = sd["base_model.model.model.layers.0.self_attn.k_proj.lora_A.weight"].double()
    b = sd["base_model.model.model.layers.0.self_attn.k_proj.lora_B.weight"].double()
    assert a.shape == (KV, HIDDEN)
    d = load_file(ft / "model.safetensors")[k].double() - load_file(base / "model.safetensors")[k].double()
    assert float((d - b @ a).norm()) <= 1e-6 * float(d.norm())  # full rank: exact
    assert sd["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape == (12, INTER)
    doc = _valid(json.loads(res.stdout))
    assert any("full rank" in n for n in doc["notes"]) and doc["adapter_config"]["rank_pattern"] == {"k_proj": KV}


def test_targets_and_dry_run(tmp_path, cli):
    base, ft = _pair(tmp_path, {"lm_head.weight": _base_sd()["lm_head.weight"] + 1.0})
    out = tmp_path / "out"
    res = cli("split", ft, "--extract-lora", "--base", base, "--rank", "2", "--out", out, "--targets", "q_proj",
              "--targets", "lm_head", "--dry-run", "--json")
    assert res.code == 0, res.stderr
    s = _valid(json.loads(res.stdout))
    assert not out.exists() and s["dry_run"]
    assert [m["module"] for m in s["modules"]] == ["lm_head", "model.layers.0.self_attn.q_proj", "model.layers.1.self_attn.q_proj"]
    assert "energy" not in s["modules"][0]  # nothing computed in a dry run
    assert {x["name"] for x in s["not_represented"]} == {"model.layers.0.mlp.down_proj.weight", "model.layers.1.mlp.down_proj.weight"}
    res = cli("split", ft, "--extract-lora", "--base", base, "--rank", "2", "--out", out, "--targets", "k_proj")
    assert res.code == 6 and "nothing to extract" in res.stderr and not out.exists()


def _leaves_nothing(res, out: Path, code: int, text: str) -> None:
    assert res.code == code, (res.code, res.stderr)
    assert res.stderr.startswith("error:") and text in res.stderr and "Traceback" not in res.stderr
    assert not out.exists() or names(out, provenance=True) == []


def test_refusals_write_nothing(tmp_path, cli):
    base, ft = _pair(tmp_path)
    out = tmp_path / "out"
    run = lambda *extra, src=ft, b=base: cli("split", src, "--extract-lora", "--base", b, "--out", out, *extra)  # noqa: E731
    _leaves_nothing(run("--rank", "0"), out, 2, "--rank")
    _leaves_nothing(run("--rank", "two"), out, 2, "--rank")
    _leaves_nothing(cli("split", ft, "--extract-lora", "--base", base, "--out", out), out, 2, "--rank")
    _leaves_nothing(run("--rank", "2", "--targets", "nope_proj"), out, 6, "matches no module")
    _leaves_nothing(run("--rank", "2", "--targets", "input_layernorm"), out, 6, "cannot carry")
    _leaves_nothing(run("--rank", "2", "--targets", "embed_tokens"), out, 6, "cannot carry")
    _leaves_nothing(run("--rank", "2", src=base), out, 6, "nothing to extract")

    sd = _base_sd()
    grown = _write(tmp_path / "grown", dict(sd, **{"lm_head.weight": torch.randn(51, HIDDEN)}))
    _leaves_nothing(run("--rank", "2", src=grown), out, 6, "shape(s) differ")
    fewer = _write(tmp_path / "fewer", {k: v for k, v in sd.items() if k != "model.norm.weight"})
    _leaves_nothing(run("--rank", "2", src=fewer), out, 6, "only in the base: model.norm.weight")
    bad = dict(sd)
    bad["model.layers.1.mlp.up_proj.weight"] = bad["model.layers.1.mlp.up_proj.weight"].clone()
    bad["model.layers.1.mlp.up_proj.weight"][3, 4] = float("nan")
    nan = _write(tmp_path / "nan", bad)
    _leaves_nothing(run("--rank", "2", src=nan), out, 6, "not finite")  # found while computing: still nothing

    assert cli("split", ft, "--extract-lora", "--base", base, "--rank", "2", "--out", out).code == 0
    before = (out / "adapter_model.safetensors").read_bytes()
    res = run("--rank", "3")
    assert res.code == 6 and "already exists" in res.stderr
    assert (out / "adapter_model.safetensors").read_bytes() == before
    assert run("--rank", "3", "--force").code == 0
    assert load_file(out / "adapter_model.safetensors")["base_model.model.model.layers.0.mlp.down_proj.lora_A.weight"].shape[0] == 3


def test_options_belong_to_extract_lora(tmp_path, cli):
    base, ft = _pair(tmp_path)
    res = cli("split", ft, "--base", base, "--rank", "2", "--out", tmp_path / "o")
    assert res.code == 2 and "--extract-lora" in res.stderr
    res = cli("split", ft, "--extract-lora", "--base", base, "--rank", "2", "--out", tmp_path / "o", "--max-shard-size", "1GB")
    assert res.code == 2
    res = cli("split", ft, "--extract-lora", "--base", tmp_path / "missing", "--rank", "2", "--out", tmp_path / "o")
    assert res.code == 3


def test_bin_and_sharded_inputs(tmp_path, cli):
    base, ft = _pair(tmp_path, dtype=torch.bfloat16)
    binned = tmp_path / "bin"
    binned.mkdir()
    torch.save(load_file(ft / "model.safetensors"), binned / "pytorch_model.bin")
    (binned / "config.json").write_text((ft / "config.json").read_text())
    res = cli("split", binned, "--extract-lora", "--base", base, "--rank", "3", "--out", tmp_path / "o", "--json")
    assert res.code == 0, res.stderr
    rows = json.loads(res.stdout)["modules"]
    assert rows and all(m["error"] <= 1.01 * m["optimum"] + 1e-6 for m in rows)  # bf16 rounding: not exactly rank 3
    assert cli("split", ft, "--extract-lora", "--base", base, "--rank", "3", "--out", tmp_path / "s").code == 0
    a, b = load_file(tmp_path / "o" / "adapter_model.safetensors"), load_file(tmp_path / "s" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)  # the container does not matter
    assert cli("split", ft, "--max-shard-size", "4KB", "--out", tmp_path / "shards").code == 0
    assert len(list((tmp_path / "shards").glob("model-*.safetensors"))) > 1
    res = cli("split", tmp_path / "shards", "--extract-lora", "--base", base, "--rank", "3", "--out", tmp_path / "h")
    assert res.code == 0, res.stderr
    c = load_file(tmp_path / "h" / "adapter_model.safetensors")
    assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in c)


# --- interop: PEFT loads it -------------------------------------------------------------------------


def _llama(tmp_path: Path) -> tuple[object, Path]:
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "base")
    return model, tmp_path / "base"


def _finetune(model, path: Path, rank: int | None, seed: int = 1):
    import copy

    ft = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for n, p in ft.named_parameters():
            if p.ndim == 2 and n.endswith("proj.weight"):
                o, i = p.shape
                if rank is None:
                    p += 0.02 * torch.randn(o, i, generator=g)
                else:
                    p += 0.05 * torch.randn(o, rank, generator=g) @ torch.randn(rank, i, generator=g)
    ft.save_pretrained(path)
    return ft


def _load_peft(base_dir: Path, adapter: Path):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    base = LlamaForCausalLM.from_pretrained(base_dir).eval()
    peft_model = PeftModel.from_pretrained(base, adapter).eval()
    from peft.utils import get_peft_model_state_dict

    saved = load_file(adapter / "adapter_model.safetensors")
    mine = get_peft_model_state_dict(peft_model)
    assert sorted("base_model.model." + k.removeprefix("base_model.model.") for k in mine) == sorted(saved)
    for k, v in saved.items():  # every stored tensor landed in the model (no missing / unexpected key)
        assert torch.equal(mine[k].float(), v), k
    return peft_model


@pytest.mark.interop
def test_peft_reproduces_an_exact_low_rank_finetune(tmp_path, cli):
    from peft import PeftModel
    from transformers import LlamaForCausalLM

    model, base_dir = _llama(tmp_path)
    ft = _finetune(model, tmp_path / "ft", rank=4)
    out = tmp_path / "adapter"
    res = cli("split", tmp_path / "ft", "--extract-lora", "--base", base_dir, "--rank", "4", "--out", out, "--json")
    assert res.code == 0, res.stderr
    assert "warnings" not in json.loads(res.stdout)
    peft_model = _load_peft(base_dir, out)
    ids = torch.randint(0, 64, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = ft(ids).logits
        got = peft_model(ids).logits
    assert float((got - want).abs().max()) <= 1e-4
    # and the loading itself reports nothing missing or unexpected
    base = LlamaForCausalLM.from_pretrained(base_dir)
    pm = PeftModel.from_pretrained(base, out)
    result = pm.load_adapter(out, adapter_name="again")
    assert not result.unexpected_keys
    assert not [k for k in result.missing_keys if "lora_" in k]


@pytest.mark.interop
def test_full_rank_finetune_is_the_optimum_through_peft(tmp_path, cli):
    model, base_dir = _llama(tmp_path)
    ft = _finetune(model, tmp_path / "ft", rank=None)
    out = tmp_path / "adapter"
    res = cli("split", tmp_path / "ft", "--extract-lora", "--base", base_dir, "--rank", "6", "--out", out, "--json")
    assert res.code == 0, res.stderr
    peft_model = _load_peft(base_dir, out)
    base_sd = model.state_dict()
    for n, p in ft.state_dict().items():
        if not n.endswith("proj.weight"):
            continue
        d = p.double() - base_sd[n].double()
        layer = peft_model.get_submodule("base_model.model." + n.removesuffix(".weight"))
        assert layer.scaling["default"] == 1.0
        ba = layer.lora_B["default"].weight.double() @ layer.lora_A["default"].weight.double()
        opt, _ = _optimum(d, 6)
        assert opt <= float((d - ba).norm()) <= 1.01 * opt, n


@pytest.mark.interop
def test_litgpt_inputs_are_refused_with_the_way_out(tmp_path, cli):
    from lit_helpers import build_base

    lit = build_base(tmp_path / "lit")
    _, base_dir = _llama(tmp_path)
    res = cli("split", lit, "--extract-lora", "--base", base_dir, "--rank", "2", "--out", tmp_path / "o")
    assert res.code == 5 and "convert --to hf" in res.stderr.replace("'", "").replace("MODEL ", "")
    assert not (tmp_path / "o").exists()
