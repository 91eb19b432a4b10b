"""``rename`` against the real libraries: PEFT <= 0.17's damaged saves repaired and loaded by peft 0.21.2 with the
same logits, adapter renames equal to what ``save_pretrained`` writes for the renamed adapters, and a transformers
sharded model renamed and renamed back loading exactly."""

from __future__ import annotations

import json
import struct
import warnings
from pathlib import Path

import pytest
import torch
from peft_helpers import lora_config, peft_model, save_base, tiny_llama
from safetensors.torch import load_file, save_file

from ckpt_tool.ops.inspect import detect

pytestmark = pytest.mark.interop

IDS = torch.tensor([[1, 5, 9, 17, 33, 65, 100, 127]])


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


def load_peft(path: Path, adapter_name: str = "default", seed: int = 0):
    """``PeftModel.from_pretrained`` on a fresh base; returns (model, warnings about missing keys)."""
    from peft import PeftModel

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = PeftModel.from_pretrained(tiny_llama(seed=seed), str(path), adapter_name=adapter_name)
    missing = [str(w.message) for w in caught if "missing adapter keys" in str(w.message)]
    return model.eval(), missing


def old_peft_save(pm, saved: dict[str, torch.Tensor], name: str) -> dict[str, torch.Tensor]:
    """The keys PEFT <= 0.17 wrote for the tensors PEFT 0.21.2 saved (``saved``) of adapter ``name``.

    PEFT <= 0.17 (``get_peft_model_state_dict``): take the live keys, strip the DoRA ``.weight``
    (``lora_magnitude_vector.<name>.weight`` -> ``….lora_magnitude_vector.<name>``), then
    ``key.replace(f".{name}", "")``. The live key of each saved tensor is found with 0.21.2's own
    (careful) name removal, so every tensor of the real save gets exactly the old key.
    """
    from peft.tuners.tuners_utils import _remove_adapter_name_from_state_dict_key

    out: dict[str, torch.Tensor] = {}
    for live in pm.state_dict():
        key = live[: -len(".weight")] if live.endswith(f"lora_magnitude_vector.{name}.weight") else live
        new = _remove_adapter_name_from_state_dict_key(key, name)
        if new in saved:
            old = key.replace(f".{name}", "")
            assert old not in out
            out[old] = saved[new]
    assert len(out) == len(saved)
    return out


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"use_dora": True},
        {"target_modules": ["q_proj", "v_proj", "embed_tokens"], "rank_pattern": {"v_proj": 2}},
    ],
    ids=["lora", "dora", "embedding+rank_pattern"],
)
def test_repaired_old_save_loads_with_the_same_logits(cli, tmp_path, kw):
    name = "lora"
    pm = peft_model(tiny_llama(), lora_config(**kw), adapter_name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(tmp_path / "good"))
    good = tmp_path / "good" / name
    saved = load_file(str(good / "adapter_model.safetensors"))
    want = logits(pm.eval())

    # the same adapter as PEFT <= 0.17 saved it: same folder layout, same config, damaged keys
    root = tmp_path / "old"
    (root / name).mkdir(parents=True)
    (root / "README.md").write_bytes((tmp_path / "good" / "README.md").read_bytes())
    (root / name / "adapter_config.json").write_bytes((good / "adapter_config.json").read_bytes())
    damaged = old_peft_save(pm, saved, name)
    save_file(damaged, str(root / name / "adapter_model.safetensors"), metadata={"format": "pt"})
    keys = set(damaged)
    assert any(k.endswith("self_attn.q_proj_A.weight") for k in keys)  # formats.md §3
    assert any(k.endswith("self_attn.v_proj_B.weight") for k in keys)
    if kw.get("use_dora"):
        assert any(k.endswith("q_proj_magnitude_vector") for k in keys)
    if "embed_tokens" in kw.get("target_modules", []):
        assert "base_model.model.model.embed_tokens_embedding_A" in keys
    assert not any(".lora_" in k for k in keys)

    # what the damage does: PEFT loads it with every adapter key missing
    _, missing = load_peft(root / name)
    assert missing

    info = detect(root)
    assert info.details["adapters"][name]["repairs"]
    res = cli("rename", root, "--repair", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["adapter"] == name and s["tensors"]["renamed"] == len([k for k in keys if ".base_layer." not in k])
    fixed = load_file(str(root / name / "adapter_model.safetensors"))
    assert fixed.keys() == saved.keys() and all(torch.equal(fixed[k], saved[k]) for k in saved)
    model, missing = load_peft(root / name)
    assert missing == []
    assert torch.equal(logits(model), want)
    assert not detect(root / name).details["repairs"]


def test_adapter_renames_equal_what_save_pretrained_writes(cli, tmp_path):
    """default -> chat leaves exactly the files PEFT writes for a model whose adapters are 'chat' and 'other'."""
    base = tiny_llama()
    pm = peft_model(base, lora_config())
    pm.add_adapter("other", lora_config(r=2, target_modules=["k_proj"]))
    from peft_helpers import randomize_lora

    randomize_lora(pm, seed=3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(tmp_path / "a"))
    pm.set_adapter("default")
    want_default = logits(pm.eval())
    pm.set_adapter("other")
    want_other = logits(pm)

    res = cli("rename", tmp_path / "a", "--adapter", "default", "--to", "chat")
    assert res.code == 0, res.stderr

    # the same weights under the new names, saved by PEFT itself
    pm2 = peft_model(tiny_llama(), lora_config(), adapter_name="chat", randomize=False)
    pm2.add_adapter("other", lora_config(r=2, target_modules=["k_proj"]))
    state = {k.replace(".default.", ".chat."): v for k, v in pm.state_dict().items()}
    pm2.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm2.save_pretrained(str(tmp_path / "b"))

    def files(root: Path) -> dict[str, bytes]:
        return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}

    a, b = files(tmp_path / "a"), files(tmp_path / "b")
    assert set(a) == set(b) == {"README.md", "chat/adapter_config.json", "chat/adapter_model.safetensors",
                                "other/adapter_config.json", "other/adapter_model.safetensors"}  # fmt: skip
    assert {k: v for k, v in a.items() if k != "README.md"} == {k: v for k, v in b.items() if k != "README.md"}

    model, missing = load_peft(tmp_path / "a" / "chat", adapter_name="chat")
    assert missing == [] and torch.equal(logits(model), want_default)
    # and back to the root; then a named -> named rename: PEFT loads each where the layout says
    assert cli("rename", tmp_path / "a", "--adapter", "chat", "--to", "default").code == 0
    model, missing = load_peft(tmp_path / "a")
    assert missing == [] and torch.equal(logits(model), want_default)
    assert cli("rename", tmp_path / "a", "--adapter", "other", "--to", "style").code == 0
    model.load_adapter(str(tmp_path / "a" / "style"), adapter_name="style")
    model.set_adapter("style")
    assert torch.equal(logits(model), want_other)


def test_names_peft_mishandles_are_refused_on_a_real_save(cli, tmp_path):
    pm = peft_model(tiny_llama(), lora_config(target_modules=["q_proj", "down_proj"]))
    pm.add_adapter("other", lora_config(r=2, target_modules=["q_proj"]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pm.save_pretrained(str(tmp_path / "a"))
    res = cli("rename", tmp_path / "a", "--adapter", "other", "--to", "mlp")
    assert res.code == 6 and "'mlp' equals a module path segment" in res.stderr and "#3584" in res.stderr
    res = cli("rename", tmp_path / "a", "--adapter", "other", "--to", "lora")
    assert res.code == 6 and "#2252" in res.stderr


def _data(path: Path) -> bytes:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8 + n :]


def test_sharded_transformers_model_round_trip(cli, tmp_path):
    """Rename every key of a real sharded save in place and back: the index equals transformers' own, every
    shard holds the same bytes, and from_pretrained gives the same logits."""
    from transformers import LlamaForCausalLM

    model = tiny_llama().eval()
    d = save_base(model, tmp_path / "hf", max_shard_size="20KB")
    index0 = json.loads((d / "model.safetensors.index.json").read_text())
    shards = sorted(set(index0["weight_map"].values()))
    assert len(shards) > 2
    data0 = {s: _data(d / s) for s in shards}
    want = logits(model)

    res = cli("rename", d, "--regex", r"model\.(.*)=backbone.\1", "--in-place", "--json")
    assert res.code == 0, res.stderr
    index1 = json.loads((d / "model.safetensors.index.json").read_text())
    assert index1["metadata"] == index0["metadata"] and sorted(set(index1["weight_map"].values())) == shards
    assert all(k.startswith(("backbone.", "lm_head.")) for k in index1["weight_map"])
    assert not detect(d).warnings

    res = cli("rename", d, "--regex", r"backbone\.(.*)=model.\1", "--in-place")
    assert res.code == 0, res.stderr
    assert json.loads((d / "model.safetensors.index.json").read_text()) == index0
    assert {s: _data(d / s) for s in shards} == data0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = LlamaForCausalLM.from_pretrained(str(d)).eval()
    assert torch.equal(logits(again), want)
