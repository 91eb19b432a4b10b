"""PEFT adapter detection against adapters written by the real peft library, plus damaged ones."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from peft_helpers import (
    lora_config,
    peft_model,
    read_adapter,
    save_adapter,
    tiny_gpt2,
    tiny_llama,
    write_adapter,
)
from safetensors import safe_open

from ckpt_tool.errors import InvalidFile
from ckpt_tool.io.container import Probe
from ckpt_tool.ops.inspect import detect

# builds its checkpoints with transformers / peft (peft_helpers)
pytestmark = pytest.mark.interop


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> dict[str, Path]:
    """Real adapters, built once per module (peft + transformers are slow to drive)."""
    root = tmp_path_factory.mktemp("peft")
    out: dict[str, Path] = {}
    out["plain"] = save_adapter(tiny_llama(), root / "plain", lora_config())
    out["fancy"] = save_adapter(
        tiny_llama(),
        root / "fancy",
        lora_config(
            r=4,
            lora_alpha=16,
            target_modules=["q_proj", "v_proj", "down_proj"],
            use_rslora=True,
            use_dora=True,
            rank_pattern={"v_proj": 2, r"layers\.1\.mlp\.down_proj": 6},
            alpha_pattern={"down_proj": 3},
            modules_to_save=["lm_head"],
        ),
    )
    pm = peft_model(tiny_llama(), lora_config(r=4))
    pm.add_adapter("other", lora_config(r=2, target_modules=["k_proj"]))
    out["multi"] = save_adapter(pm, root / "multi")
    pm = peft_model(tiny_llama(), lora_config(r=4, target_modules=["q_proj", "down_proj"]))
    pm.add_adapter("mlp", lora_config(r=2, target_modules=["q_proj", "down_proj"]))
    out["mlp"] = save_adapter(pm, root / "mlp")
    from peft import IA3Config

    out["ia3"] = save_adapter(
        tiny_llama(),
        root / "ia3",
        IA3Config(target_modules=["k_proj", "down_proj"], feedforward_modules=["down_proj"]),
    )
    out["bin"] = save_adapter(tiny_llama(), root / "bin", lora_config(), safe_serialization=False)
    out["gpt2"] = save_adapter(
        tiny_gpt2(),
        root / "gpt2",
        lora_config(target_modules=["c_attn"], fan_in_fan_out=True, lora_bias=True),
    )
    out["named_lora"] = save_adapter(
        tiny_llama(), root / "named_lora", lora_config(), adapter_name="lora"
    ).parent
    from peft import AdaLoraConfig, LoHaConfig, LoKrConfig, PromptTuningConfig

    out["adalora"] = save_adapter(
        tiny_llama(),
        root / "adalora",
        AdaLoraConfig(init_r=6, target_r=4, total_step=10, target_modules=["q_proj", "v_proj"]),
    )
    out["loha"] = save_adapter(tiny_llama(), root / "loha", LoHaConfig(r=4, target_modules=["q_proj"]))
    out["lokr"] = save_adapter(tiny_llama(), root / "lokr", LoKrConfig(r=4, target_modules=["q_proj"]))
    out["prompt"] = save_adapter(
        tiny_llama(), root / "prompt", PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4)
    )
    out["embed_regex"] = save_adapter(
        tiny_llama(),
        root / "embed_regex",
        lora_config(target_modules=r".*\.(embed_tokens|q_proj)"),
    )
    return out


def _keys(file: Path) -> list[str]:
    with safe_open(str(file), "pt") as fh:
        return list(fh.keys())


def test_plain_lora(built) -> None:
    d = built["plain"]
    info = detect(d)
    assert (info.format, info.kind, info.adapter_type, info.container) == (
        "peft",
        "adapter",
        "lora",
        "safetensors",
    )
    assert info.files == [str((d / "adapter_model.safetensors").absolute())]
    assert [t.name for t in info.tensors] == sorted(_keys(d / "adapter_model.safetensors"))
    assert info.lora["r"] == 4 and info.lora["alpha"] == 8
    assert sorted(info.lora["targets"]) == ["q_proj", "v_proj"]
    assert info.lora["use_rslora"] is False and info.lora["use_dora"] is False and info.lora["bias"] == "none"
    assert info.metadata["peft_version"] and "base_model_name_or_path" in info.metadata
    assert info.warnings == []
    assert [a.name for a in info.adapters] == ["default"]
    assert info.details["adapter_name"] == "default" and info.details["config"]["peft_type"] == "LORA"
    assert info.details["weights"] == info.files[0] and info.details["dir"] == str(d.absolute())
    # 2 layers x (q, v) modules, each with an A and a B of the right rank
    assert len(info.details["modules"]) == 4
    a = next(t for t in info.tensors if t.name.endswith("layers.0.self_attn.v_proj.lora_A.weight"))
    b = next(t for t in info.tensors if t.name.endswith("layers.0.self_attn.v_proj.lora_B.weight"))
    assert a.shape == (4, 32) and b.shape == (16, 4)  # GQA: v_proj out = 2 KV heads x 8


def test_rslora_dora_patterns_modules_to_save(built) -> None:
    info = detect(built["fancy"])
    lora = info.lora
    assert lora["use_rslora"] and lora["use_dora"] and lora["alpha"] == 16
    assert lora["rank_pattern"] == {"v_proj": 2, r"layers\.1\.mlp\.down_proj": 6}
    assert lora["alpha_pattern"] == {"down_proj": 3}
    assert lora["modules_to_save"] == ["lm_head"]
    assert info.warnings == []  # shapes agree with the per-module ranks
    mods = info.details["modules"]
    assert mods["model.layers.0.self_attn.v_proj"]["r"] == 2
    assert mods["model.layers.1.mlp.down_proj"]["r"] == 6 and mods["model.layers.0.mlp.down_proj"]["r"] == 4
    assert (
        mods["model.layers.0.mlp.down_proj"]["alpha"] == 3
        and mods["model.layers.0.self_attn.q_proj"]["alpha"] == 16
    )
    assert all("magnitude" in m for m in mods.values())
    assert "base_model.model.lm_head.weight" in info.details["full_tensors"]


def test_rank_pattern_mismatch_warns(built, tmp_path) -> None:
    config, tensors = read_adapter(built["fancy"])
    config["rank_pattern"] = {"v_proj": 3}
    d = write_adapter(tmp_path / "a", config, tensors)
    info = detect(d)
    msg = " ".join(info.warnings)
    assert "rank_pattern['v_proj'] says r=3" in msg and "size mismatch" in msg
    config["rank_pattern"] = {}
    info = detect(write_adapter(tmp_path / "b", config, tensors))
    assert any("says r=4" in w and "layers.1.mlp.down_proj" in w for w in info.warnings)


def test_multi_adapter(built, tmp_path) -> None:
    d = tmp_path / "multi"
    shutil.copytree(built["multi"], d)
    assert (d / "other" / "adapter_config.json").is_file()
    info = detect(d)
    assert [a.name for a in info.adapters] == ["default", "other"]
    default, other = info.adapters
    assert default.lora["r"] == 4 and other.lora["r"] == 2 and other.lora["targets"] == ["k_proj"]
    assert other.path == str((d / "other").absolute()) and other.config["r"] == 2
    assert other.tensors == 4 and other.parameters == 2 * (2 * 32 + 16 * 2)
    assert info.details["adapter_name"] == "default" and len(info.tensors) == default.tensors
    assert info.warnings == []
    sub = detect(d / "other")
    assert sub.details["adapter_name"] == "other" and sub.lora["r"] == 2
    # without the root adapter, the subfolder adapters still make the dir a PEFT save
    (d / "adapter_config.json").unlink()
    only = detect(d)
    assert [a.name for a in only.adapters] == ["other"] and only.details["adapter_name"] == "other"


def test_ia3(built) -> None:
    info = detect(built["ia3"])
    assert info.adapter_type == "ia3" and info.lora is None and info.warnings == []
    assert all("ia3_l" in t.name for t in info.tensors)


def test_bin_and_preference(built, tmp_path) -> None:
    info = detect(built["bin"])
    assert info.container == "torch" and info.files[0].endswith("adapter_model.bin")
    assert len(info.tensors) == 8 and info.warnings == []
    both = tmp_path / "both"
    shutil.copytree(built["plain"], both)
    shutil.copy(built["bin"] / "adapter_model.bin", both)
    assert detect(both).files == [str((both / "adapter_model.safetensors").absolute())]
    # pointing at a weights file describes its adapter through that file
    assert detect(both / "adapter_model.bin").container == "torch"
    assert detect(both / "adapter_config.json").container == "safetensors"


def test_gpt2_fan_in_fan_out(built) -> None:
    info = detect(built["gpt2"])
    assert info.lora["fan_in_fan_out"] and info.lora["lora_bias"] and info.warnings == []
    a = next(t for t in info.tensors if t.name.endswith("h.0.attn.c_attn.lora_A.weight"))
    b = next(t for t in info.tensors if t.name.endswith("h.0.attn.c_attn.lora_B.weight"))
    assert a.shape == (4, 32) and b.shape == (96, 4)
    assert "B_bias" in info.details["modules"]["transformer.h.0.attn.c_attn"]


def test_adapter_named_like_prefix(built) -> None:
    d = built["named_lora"]
    assert (d / "lora" / "adapter_model.safetensors").is_file()
    info = detect(d)
    assert info.details["adapter_name"] == "lora"
    (w,) = info.warnings
    assert "'lora'" in w and "prefix 'lora_'" in w and "re-initialise" in w and "rename" in w.lower()
    assert detect(d / "lora").details["adapter_name"] == "lora"


def test_damaged_keys_from_old_name_stripping(built, tmp_path) -> None:
    config, tensors = read_adapter(built["fancy"])
    damaged = {k.replace(".lora_", "_"): v for k, v in tensors.items()}
    assert any(k.endswith("q_proj_A.weight") for k in damaged) and any(
        k.endswith("_magnitude_vector") for k in damaged
    )
    root = tmp_path / "run"
    write_adapter(root / "lora", config, damaged)
    info = detect(root)
    text = " ".join(info.warnings)
    assert "PEFT <= 0.17" in text and "restoring '.lora_'" in text
    assert "prefix 'lora_'" in text  # the name that caused it
    assert info.details["repairs"] == {k.replace(".lora_", "_"): k for k in tensors if ".lora_" in k}
    assert not any("lack half" in w for w in info.warnings)  # repaired names pair up


def test_zero3_empty_and_1d(built, tmp_path) -> None:
    config, tensors = read_adapter(built["plain"])
    ka = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.lora_A.weight"))
    kb = next(k for k in tensors if k.endswith("layers.1.self_attn.v_proj.lora_B.weight"))
    tensors[ka] = torch.empty(0)
    tensors[kb] = tensors[kb].flatten()
    info = detect(write_adapter(tmp_path / "z", config, tensors))
    (w,) = info.warnings
    assert "2 LoRA tensor pair(s) are empty or 1-D" in w and "ZeRO-3" in w and "GatheredParameters" in w


def test_missing_half(built, tmp_path) -> None:
    config, tensors = read_adapter(built["plain"])
    kb = next(k for k in tensors if k.endswith("layers.0.self_attn.q_proj.lora_B.weight"))
    del tensors[kb]
    info = detect(write_adapter(tmp_path / "m", config, tensors))
    (w,) = info.warnings
    assert "model.layers.0.self_attn.q_proj has lora_A but no lora_B" in w and "strict=False" in w


def test_module_segment_name_drops_tensors(built) -> None:
    info = detect(built["mlp"])
    assert [a.name for a in info.adapters] == ["default", "mlp"]
    text = "\n".join(info.warnings)
    assert "'mlp' equals a module path segment" in text and "#3584" in text
    # the real PEFT save really dropped default's down_proj tensors; say so
    assert "'default' targets 2 module(s) it holds no tensors for" in text
    assert not any("down_proj" in t.name for t in info.tensors)


def test_dora_flag_mismatch(built, tmp_path) -> None:
    config, tensors = read_adapter(built["fancy"])
    config["use_dora"] = False
    info = detect(write_adapter(tmp_path / "d", config, tensors))
    assert any("use_dora is false" in w for w in info.warnings)


HOSTILE = [
    ("{not json", "not valid JSON"),
    ("[1, 2]", "expected a JSON object, found a JSON list"),
    ('{"r": 8}', "'peft_type' is missing"),
    ('{"peft_type": 3}', "'peft_type' must be"),
    ('{"peft_type": "LORA", "r": "x"}', "'r' must be a positive integer"),
    ('{"peft_type": "LORA", "r": 0}', "'r' must be a positive integer"),
    ('{"peft_type": "LORA", "r": true}', "'r' must be a positive integer"),
    ('{"peft_type": "LORA", "lora_alpha": "16"}', "'lora_alpha' must be a number"),
    ('{"peft_type": "LORA", "target_modules": 5}', "'target_modules' must be"),
    (
        '{"peft_type": "LORA", "target_modules": "q_proj("}',
        "'target_modules' is not a valid regular expression",
    ),
    ('{"peft_type": "LORA", "rank_pattern": {"q_proj": "4"}}', "'rank_pattern' entry 'q_proj'"),
    ('{"peft_type": "LORA", "rank_pattern": {"(": 4}}', "'rank_pattern' entry '('"),
    ('{"peft_type": "LORA", "use_dora": "yes"}', "'use_dora' must be true or false"),
    ('{"peft_type": "LORA", "modules_to_save": "lm_head"}', "'modules_to_save' must be a list"),
    ('"' + "[" * 100000 + '"', "expected a JSON object"),
    ("[" * 100000, "not valid JSON"),
]


@pytest.mark.parametrize("text,needle", HOSTILE)
def test_hostile_config(built, tmp_path, cli, text, needle) -> None:
    _, tensors = read_adapter(built["plain"])
    d = write_adapter(tmp_path / "h", text, tensors)
    with pytest.raises(InvalidFile) as exc:
        detect(d)
    assert needle in exc.value.message and "adapter_config.json" in exc.value.message
    res = cli("inspect", "--json", d)
    assert res.code == 4 and json.loads(res.stdout)["error"]["exit_code"] == 4  # the one --json document
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in res.stderr


def test_unknown_keys_ignored_and_missing_weights(built, tmp_path) -> None:
    config, tensors = read_adapter(built["plain"])
    config["some_future_option"] = {"x": [1, 2]}
    assert detect(write_adapter(tmp_path / "u", config, tensors)).warnings == []
    (tmp_path / "u" / "adapter_model.safetensors").unlink()
    with pytest.raises(InvalidFile, match="without adapter_model.safetensors"):
        detect(tmp_path / "u")


def test_cli_json(built, cli) -> None:
    res = cli("inspect", "--json", built["multi"])
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert data["format"] == "peft" and data["kind"] == "adapter" and data["adapter_type"] == "lora"
    assert [a["name"] for a in data["adapters"]] == ["default", "other"]
    assert (
        data["lora"]["r"] == 4
        and data["lora"]["alpha"] == 8
        and set(data["lora"]["targets"]) == {"q_proj", "v_proj"}
    )
    assert data["tensors"] == 8 and data["warnings"] == []
    res = cli("inspect", built["mlp"])
    assert res.code == 0 and "#3584" in res.stdout


def test_prefix_table_matches_peft() -> None:
    from ckpt_tool_peft.detect import TUNER_PREFIXES, known_prefix
    from peft.mapping import PEFT_TYPE_TO_PREFIX_MAPPING

    real = {str(getattr(k, "value", k)): v for k, v in PEFT_TYPE_TO_PREFIX_MAPPING.items()}
    for peft_type, prefix in TUNER_PREFIXES.items():
        assert real[peft_type] == prefix
    for peft_type, prefix in real.items():
        assert known_prefix(peft_type) == prefix, peft_type


def test_not_peft_dirs(tmp_path) -> None:
    from ckpt_tool_peft.detect import detect as peft_detect

    (tmp_path / "x.txt").write_text("hi")
    assert peft_detect(tmp_path, Probe()) is None
    assert peft_detect(tmp_path / "x.txt", Probe()) is None


def test_detect_never_imports_torch(built) -> None:
    code = (
        "import sys; from ckpt_tool.ops.inspect import detect; "
        f"i = detect({str(built['multi'])!r}); assert i.format == 'peft'; "
        "assert 'torch' not in sys.modules and 'peft' not in sys.modules, 'heavy import'"
    )
    env = None
    try:
        import ckpt_tool_lit.detect  # noqa: F401
    except ImportError:
        import os

        env = {**os.environ, "CKPT_TOOL_PLUGINS": "peft,safetensors"}
    proc = subprocess.run(
        [sys.executable, "-c", code], check=False, capture_output=True, text=True, env=env, timeout=60
    )
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "which,adapter_type,marker",
    [
        ("adalora", "adalora", "lora_E"),
        ("loha", "loha", "hada_w1_a"),
        ("lokr", "lokr", "lokr_w1"),
        ("prompt", "prompt_tuning", "prompt_embeddings"),
    ],
)
def test_other_tuners(built, which, adapter_type, marker) -> None:
    info = detect(built[which])
    assert info.format == "peft" and info.adapter_type == adapter_type
    assert info.warnings == []
    assert any(marker in t.name for t in info.tensors)
    assert (info.lora is not None) == (adapter_type == "adalora")


def test_embedding_lora_and_regex_targets(built, cli) -> None:
    info = detect(built["embed_regex"])
    assert info.lora["targets"] == r".*\.(embed_tokens|q_proj)" and info.warnings == []
    emb = info.details["modules"]["model.embed_tokens"]
    assert emb["type"] == "embedding" and emb["A"].endswith("lora_embedding_A") and emb["r"] == 4
    res = cli("inspect", "--json", built["embed_regex"])
    assert json.loads(res.stdout)["lora"]["targets"] == r".*\.(embed_tokens|q_proj)"


def test_unprefixed_keys_warn(built, tmp_path) -> None:
    config, tensors = read_adapter(built["plain"])
    raw = {k.removeprefix("base_model.model."): v for k, v in tensors.items()}
    info = detect(write_adapter(tmp_path / "raw", config, raw))
    (w,) = info.warnings
    assert "do not start with 'base_model.model.'" in w and "would not be loaded" in w


def test_trainer_checkpoints_are_not_named_adapters(built, tmp_path) -> None:
    root = tmp_path / "output"
    shutil.copytree(built["plain"], root)
    for step in (10, 20):
        shutil.copytree(built["plain"], root / f"checkpoint-{step}")
        (root / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    info = detect(root)
    assert [a.name for a in info.adapters] == ["default"]
    assert info.metadata["trainer_checkpoints"] == ["checkpoint-10", "checkpoint-20"]
    # a snapshot itself is an ordinary (default) adapter
    assert detect(root / "checkpoint-10").details["adapter_name"] == "default"
