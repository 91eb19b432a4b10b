"""Merge output as the peers load it (interop: real transformers / peft / litgpt).

* the tokenizer of a PEFT merge's ``--out``: ``AutoTokenizer.from_pretrained(out)`` is the adapter's
  tokenizer (added token, chat template), also when the adapter's tokenizer was saved the transformers-4
  way (template inside tokenizer_config.json) and the base the transformers-5 way (chat_template.jinja):
  copying file by file would have let the base's template win;
* a base found in a fake Hugging Face cache: transformers itself loads the same tree (``cache_dir=``,
  offline), and our merge without ``--base`` equals ``PeftModel.from_pretrained(...).merge_and_unload()``
  on it, bit for bit;
* ``--lora-alpha`` / ``--lora-targets`` equal ``litgpt merge_lora`` run with the same values written into
  hyperparameters.yaml, bit for bit.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from lit_merge_helpers import assert_bit_equal, litgpt_merge, make_run
from safetensors.torch import load_file
from test_merge_serve import fake_cache

pytestmark = pytest.mark.interop

TEMPLATE_BASE = "{% for m in messages %}BASE {{ m['content'] }}{% endfor %}"
TEMPLATE_TUNED = "{% for m in messages %}<|assistant|> {{ m['content'] }}{% endfor %}"


def _tokenizer(extra: list[str] | None = None, template: str = TEMPLATE_BASE):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "hello": 3, "world": 4}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>")
    if extra:
        fast.add_special_tokens({"additional_special_tokens": extra})
    fast.chat_template = template
    return fast


def _llama(tmp: Path):
    from peft import LoraConfig, get_peft_model
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, vocab_size=96, max_position_embeddings=64, tie_word_embeddings=False)
    model = LlamaForCausalLM(cfg).to(torch.bfloat16)
    base = tmp / "base"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.save_pretrained(base)
        pm = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in pm.named_parameters():
                if "lora_" in name:
                    p.copy_((0.2 * torch.randn(p.shape, generator=gen)).to(p.dtype))
        pm.save_pretrained(tmp / "adapter")
    return base, tmp / "adapter"


def test_merged_out_loads_the_adapters_tokenizer(tmp_path, cli):
    from transformers import AutoTokenizer

    base, adapter = _llama(tmp_path)
    _tokenizer().save_pretrained(base)  # transformers 5: chat_template.jinja
    tuned = _tokenizer(["<|assistant|>"], TEMPLATE_TUNED)
    tuned.save_pretrained(adapter, save_jinja_files=False)  # the template inside tokenizer_config.json
    assert (base / "chat_template.jinja").is_file() and not (adapter / "chat_template.jinja").exists()
    out = tmp_path / "merged"
    res = cli("merge", adapter, "--base", base, "--out", out)
    assert res.code == 0, res.stderr
    got = AutoTokenizer.from_pretrained(out)
    want = AutoTokenizer.from_pretrained(adapter)
    assert got.chat_template == want.chat_template == TEMPLATE_TUNED
    assert "<|assistant|>" in got.get_vocab() and len(got) == len(want) == 6
    msgs = [{"role": "user", "content": "hello"}]
    assert got.apply_chat_template(msgs, tokenize=False) == want.apply_chat_template(msgs, tokenize=False)
    # the base alone would have given another template: the choice matters
    assert AutoTokenizer.from_pretrained(base).chat_template == TEMPLATE_BASE


def test_base_from_a_fake_hub_cache_is_the_one_transformers_loads(tmp_path, cli, monkeypatch):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base, adapter = _llama(tmp_path)
    cache = tmp_path / "hub"
    snap = fake_cache(cache, "tiny-org/tiny-llama", base)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    (adapter / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": "tiny-org/tiny-llama"}))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    out = tmp_path / "merged"
    res = cli("merge", adapter, "--out", out, "--json")
    assert res.code == 0, res.stderr
    assert json.loads(res.stdout)["base"] == str(snap)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = AutoModelForCausalLM.from_pretrained("tiny-org/tiny-llama", cache_dir=str(cache), local_files_only=True)
        merged = PeftModel.from_pretrained(model, adapter).merge_and_unload()
        merged.save_pretrained(tmp_path / "reference")
    want, got = load_file(tmp_path / "reference" / "model.safetensors"), load_file(out / "model.safetensors")
    assert sorted(got) == sorted(want)
    for k in want:
        assert got[k].dtype == want[k].dtype and torch.equal(got[k].view(torch.int16), want[k].view(torch.int16)), k


@pytest.mark.parametrize("hp_state", ["lost", "wrong"])
def test_overrides_equal_litgpt_with_the_values_in_hyperparameters(tmp_path, cli, hp_state):
    base, final = make_run(tmp_path, ("query", "value", "mlp"), r=2, alpha=4)
    # the reference: litgpt merge_lora with alpha 12 and q,v,mlp written into hyperparameters.yaml
    ref_dir = tmp_path / "ref-src"
    shutil.copytree(final, ref_dir)
    hp = yaml.safe_load((ref_dir / "hyperparameters.yaml").read_text())
    hp["lora_alpha"] = 12
    (ref_dir / "hyperparameters.yaml").write_text(yaml.safe_dump(hp))
    want = litgpt_merge(ref_dir, base, tmp_path / "work")
    hp_now = yaml.safe_load((final / "hyperparameters.yaml").read_text())
    if hp_state == "lost":
        hp_now = {k: v for k, v in hp_now.items() if not k.startswith("lora_")}
    else:
        hp_now.update(lora_alpha=99, lora_mlp=False, lora_key=True)
    (final / "hyperparameters.yaml").write_text(yaml.safe_dump(hp_now))
    out = tmp_path / "merged"
    res = cli("merge", final, "--base", base, "--out", out, "--lora-alpha", "12", "--lora-targets", "query,value,mlp")
    assert res.code == 0, res.stderr
    assert_bit_equal(torch.load(out / "lit_model.pth", weights_only=True), want)
    if hp_state == "wrong":
        assert "replaces lora_alpha=99" in res.stderr and "lora_key=true" in res.stderr
