"""LitGPT detection: today's layouts, every legacy layout, and inputs it must leave to other plugins.

Checkpoints are built with the real litgpt 0.5.13 model classes and side-file writers
(tests/lit_helpers.py); legacy layouts are assembled from those state dicts the way the
old lit-gpt scripts saved them (formats.md §2.2, §2.4).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import lit_helpers as lh
import pytest
import torch
from ckpt_tool_lit import detect as lit_detect

from ckpt_tool.errors import InvalidFile, NotFound
from ckpt_tool.io.container import Probe
from ckpt_tool.ops.inspect import detect

pytestmark = pytest.mark.interop


# ---------------------------------------------------------------------------
# fixtures (built once per module: litgpt model construction is the slow part)


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("lit")


@pytest.fixture(scope="module")
def base_dir(root) -> Path:
    return lh.build_base(root / "checkpoints" / "org" / "tiny")


@pytest.fixture(scope="module")
def lora_final(root, base_dir) -> Path:
    return lh.build_lora_final(root / "lora" / "final", base_dir)


@pytest.fixture(scope="module")
def merged_final(root, base_dir) -> Path:
    final = lh.build_lora_final(root / "merged" / "final", base_dir, mlp=True)
    lh.merge_with_litgpt(final, base_dir)
    return final


def _lit(path: Path):
    """The lit plugin's own answer (None when it passes)."""
    return lit_detect.detect(Path(path), Probe())


def _copy_lora_alone(src: Path, dest_dir: Path, name: str = "lit_model.pth.lora", with_config: bool = False) -> Path:
    dest_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(src / "lit_model.pth.lora", dest_dir / name)
    if with_config:
        shutil.copy(src / "model_config.yaml", dest_dir / "model_config.yaml")
    return dest_dir / name


# ---------------------------------------------------------------------------
# today's layouts


def test_base_dir_and_bare_file(base_dir):
    info = detect(base_dir)
    assert (info.format, info.kind, info.adapter_type) == ("lit", "model", None)
    assert info.container == "torch" and info.wrapper == "bare" and not info.training_state
    assert info.files == [str((base_dir / "lit_model.pth").absolute())]
    sd = torch.load(base_dir / "lit_model.pth", weights_only=True)
    assert [t.name for t in info.tensors] == list(sd)
    assert [tuple(t.shape) for t in info.tensors] == [tuple(v.shape) for v in sd.values()]
    assert info.metadata["model"] == "tiny-llama"
    assert info.details["model_config"]["n_query_groups"] == 2
    assert info.details["hyperparameters"] is None
    assert info.details["weights"] == str((base_dir / "lit_model.pth").absolute())
    assert info.details["dir"] == str(base_dir.absolute())
    assert info.warnings == [] and info.companions == []

    bare = detect(base_dir / "lit_model.pth")
    assert (bare.format, bare.kind) == ("lit", "model")
    assert len(bare.tensors) == len(info.tensors)


def test_lora_final_with_hyperparameters(lora_final, base_dir):
    info = detect(lora_final)
    assert (info.format, info.kind, info.adapter_type) == ("lit", "adapter", "lora")
    assert info.wrapper == "model"
    assert info.description == "LitGPT LoRA adapter (final/)"
    lora = info.lora
    assert (lora["r"], lora["alpha"], lora["dropout"]) == (4, 8, 0.05)
    assert lora["scales"] == [2.0]
    assert lora["targets"] == ["query", "value"]
    assert {f: lora[f] for f in lh.LORA_FLAG_NAMES} == {
        "query": True, "key": False, "value": True, "projection": False, "mlp": False, "head": False,
    }
    assert lora["source"] == "hyperparameters.yaml"
    assert info.metadata["checkpoint_dir"] == str(base_dir)
    assert info.metadata["precision"] == "32-true"
    assert info.details["hyperparameters"]["lora_r"] == 4
    assert info.details["weights"] == str((lora_final / "lit_model.pth.lora").absolute())
    assert all("lora_" in t.name for t in info.tensors) and len(info.tensors) == 4
    assert info.warnings == []


def test_lora_all_targets(root, base_dir):
    final = lh.build_lora_final(root / "all" / "final", base_dir, key=True, projection=True, mlp=True, head=True, r=2, alpha=4)
    info = detect(final)
    assert info.lora["targets"] == ["query", "key", "value", "projection", "mlp", "head"]
    assert info.lora["r"] == 2 and info.warnings == []
    # without hyperparameters.yaml every flag is still readable from shapes (all three qkv parts)
    alone = _lit(_copy_lora_alone(final, root / "all-alone"))
    assert alone.lora["targets"] == ["query", "key", "value", "projection", "mlp", "head"]
    assert alone.lora["r"] == 2 and alone.lora["alpha"] is None


def test_lora_file_alone_has_no_alpha(lora_final, tmp_path):
    info = detect(_copy_lora_alone(lora_final, tmp_path / "x"))
    assert (info.kind, info.adapter_type) == ("adapter", "lora")
    assert info.lora["r"] == 4
    assert info.lora["alpha"] is None and info.lora["scales"] == []
    assert info.lora["source"] == "tensors"
    assert info.details["hyperparameters"] is None and info.details["model_config"] is None
    text = " ".join(info.warnings)
    assert "alpha" in text and "16" in text
    # no config: q/k/v sizes unknown, two of three parts enabled
    assert info.lora["query"] is None and info.lora["value"] is None
    assert "qkv" in info.lora["targets"]


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ((True, False, False), (True, False, False)),
        ((False, True, True), (False, True, True)),
        ((True, True, True), (True, True, True)),
        # GQA: k and v have the same size, so q+v and q+k fit the same shapes; q is certain
        ((True, False, True), (True, None, None)),
    ],
)
def test_qkv_parts_from_model_config(root, base_dir, flags, expected):
    q, k, v = flags
    name = "".join("qkv"[i] for i in range(3) if flags[i])
    final = lh.build_lora_final(root / f"parts-{name}", base_dir, query=q, key=k, value=v, hyperparameters=False)
    info = _lit(final)
    assert (info.lora["query"], info.lora["key"], info.lora["value"]) == expected
    ambiguous = None in expected
    assert any("cannot tell which parts" in w for w in info.warnings) == ambiguous
    if not ambiguous:
        assert info.lora["targets"] == [n for n, on in zip(("query", "key", "value"), expected) if on]


def test_qkv_parts_unknowable_with_multi_head_attention(root, base_dir):
    final = lh.build_lora_final(root / "mha", base_dir, lh.TINY_MHA, hyperparameters=False)
    info = _lit(final)
    assert (info.lora["query"], info.lora["key"], info.lora["value"]) == (None, None, None)
    assert info.lora["targets"] == ["qkv"]
    assert "query+value" in " ".join(info.warnings)


def test_recorded_qkv_flags_that_do_not_fit_the_tensors(root, base_dir):
    final = lh.build_lora_final(root / "qkv-lie", base_dir, query=True, key=False, value=False)
    flags = {"query": False, "key": True, "value": True, "projection": False, "mlp": False, "head": False}
    lh.write_hyperparameters(final, "lora", lh.lora_args(base_dir, 4, 8, flags, "32-true"))
    info = detect(final)
    assert (info.lora["query"], info.lora["key"], info.lora["value"]) == (False, True, True)
    assert any("enables key+value on attn.qkv but the LoRA tensors cover query" in w for w in info.warnings)


def test_qkv_candidates_for_merge_helpers(root, base_dir):
    final = lh.build_lora_final(root / "cand", base_dir, hyperparameters=False)
    info = _lit(final)
    assert sorted(map(tuple, info.details["qkv_candidates"])) == [(True, False, True), (True, True, False)]


def test_rank_mismatch_warns(root, base_dir):
    final = lh.build_lora_final(root / "mismatch", base_dir)
    lh.write_hyperparameters(final, "lora", lh.lora_args(base_dir, 8, 16, {
        "query": True, "key": False, "value": True, "projection": False, "mlp": True, "head": False}, "32-true"))
    info = detect(final)
    assert info.lora["r"] == 8 and info.lora["alpha"] == 16
    text = " | ".join(info.warnings)
    assert "rank mismatch" in text and "lora_r = 8" in text and "rank 4" in text
    assert "lora_mlp = true" in text
    assert info.details["rank_mismatch"] == (8, 4)


def test_old_hyperparameter_names(lora_final, tmp_path):
    path = _copy_lora_alone(lora_final, tmp_path / "old")
    (path.parent / "hyperparameters.yaml").write_text(
        "checkpoint_dir: checkpoints/org/tiny\nr: 4\nalpha: 16\ndropout: 0.1\nto_query: true\nto_key: false\n"
        "to_value: true\nto_projection: false\nto_mlp: false\nto_head: false\n"
    )
    info = detect(path.parent)
    assert (info.lora["r"], info.lora["alpha"], info.lora["dropout"]) == (4, 16, 0.1)
    assert info.lora["targets"] == ["query", "value"]
    assert info.warnings == []


def test_adapter_finals(root, base_dir):
    v1 = detect(lh.build_adapter_final(root / "a1" / "final", 1, base_dir))
    v2 = detect(lh.build_adapter_final(root / "a2" / "final", 2, base_dir))
    assert (v1.kind, v1.adapter_type, v1.lora) == ("adapter", "adapter", None)
    assert (v2.kind, v2.adapter_type) == ("adapter", "adapter_v2")
    assert v1.metadata["adapter_prompt_length"] == 5
    assert v1.files[0].endswith("lit_model.pth.adapter") and v2.files[0].endswith("lit_model.pth.adapter_v2")
    assert v1.warnings == [] and v2.warnings == []
    # the adapter file alone
    alone = detect(root / "a2" / "final" / "lit_model.pth.adapter_v2")
    assert alone.adapter_type == "adapter_v2"


def test_merged_final_reports_model_and_adapter(merged_final):
    info = detect(merged_final)
    assert (info.kind, info.adapter_type) == ("model", None)
    assert info.wrapper == "bare"
    assert info.files == [str((merged_final / "lit_model.pth").absolute())]
    assert info.metadata["merged"] is True
    assert "merged" in info.description
    assert not any("lora_" in t.name for t in info.tensors)
    [comp] = info.companions
    assert (comp.kind, comp.adapter_type) == ("adapter", "lora")
    assert comp.lora["targets"] == ["query", "value", "mlp"]
    assert comp.details["weights"].endswith("lit_model.pth.lora")
    assert info.warnings == []


def test_merged_final_that_does_not_fit_the_adapter(lora_final, tmp_path):
    final = tmp_path / "final"
    shutil.copytree(lora_final, final)
    lh.build_base(final, {**lh.TINY, "n_embd": 48}, tokenizer=False, model_config=False)
    info = detect(final)
    assert info.kind == "model" and info.companions[0].adapter_type == "lora"
    assert any("does not fit the LoRA adapter" in w for w in info.warnings)


def test_full_finetune_and_training_state(root, base_dir):
    full = detect(lh.build_full_final(root / "full" / "final", base_dir))
    assert (full.kind, full.wrapper, full.training_state) == ("model", "model", False)
    assert "full fine-tune" in full.description

    step_dir = lh.build_full_step(root / "full" / "step-000010", base_dir, iter_num=40, step_count=10)
    st = detect(step_dir)
    assert (st.kind, st.training_state) == ("model", True)
    assert st.metadata["iter_num"] == 40 and st.metadata["step_count"] == 10
    assert "optimizer" in st.description and "optimizer" in st.metadata["state_keys"]
    # only the model weights are listed, not the optimizer moments
    assert [t.name for t in st.tensors] == [t.name for t in full.tensors]


# ---------------------------------------------------------------------------
# legacy layouts (formats.md §2.2)


def _legacy_warning(info) -> str:
    return " | ".join(info.warnings)


def test_legacy_lora_finetuned_out_dir(root):
    out = root / "legacy-lora"
    out.mkdir()
    sd = lh.lora_state_dict()
    torch.save({"model": sd}, out / "lit_model_lora_finetuned.pth")
    torch.save(sd, out / "iter-000100-ckpt.pth")  # a May-2023-style bare lora dict
    info = detect(out)
    assert (info.kind, info.adapter_type) == ("adapter", "lora")
    assert info.files[0].endswith("lit_model_lora_finetuned.pth")
    w = _legacy_warning(info)
    assert "lit_model_lora_finetuned.pth" in w and "final/lit_model.pth.lora" in w and "ckpt-tool migrate" in w
    assert info.metadata["legacy_era"] and info.metadata["intermediate_checkpoints"] == 1
    assert info.lora["r"] == 4 and info.lora["alpha"] is None

    it = detect(out / "iter-000100-ckpt.pth")
    assert (it.kind, it.adapter_type, it.wrapper) == ("adapter", "lora", "bare")
    assert "iter-000100-ckpt.pth" in _legacy_warning(it) and "micro-batch" in _legacy_warning(it)


@pytest.mark.parametrize("version", [1, 2])
def test_legacy_adapter_finetuned_tells_v1_from_v2(tmp_path, version):
    path = tmp_path / "lit_model_adapter_finetuned.pth"
    torch.save({"model": lh.adapter_state_dict(version=version)}, path)
    info = detect(path)
    expected = "adapter" if version == 1 else "adapter_v2"
    assert (info.kind, info.adapter_type) == ("adapter", expected)
    assert f"final/lit_model.pth.{expected}" in _legacy_warning(info)


def test_legacy_full_finetuned_and_step_file(tmp_path):
    torch.save({"model": lh.base_state_dict()}, tmp_path / "lit_model_finetuned.pth")
    torch.save(lh.training_state(step_count=7, iter_num=28), tmp_path / "step-000007.pth")
    info = detect(tmp_path)
    assert info.files[0].endswith("lit_model_finetuned.pth")
    assert info.kind == "model" and "final/lit_model.pth" in _legacy_warning(info)
    step = detect(tmp_path / "step-000007.pth")
    assert step.training_state and step.metadata["step_count"] == 7
    assert "step-000007.pth" in _legacy_warning(step) and "optimizer steps" in _legacy_warning(step)


def test_legacy_iter_file_only_dir_shows_latest(tmp_path):
    sd = lh.lora_state_dict()
    for n in (100, 200):
        torch.save(sd, tmp_path / f"iter-{n:06d}.pth")
    info = detect(tmp_path)
    assert info.files[0].endswith("iter-000200.pth") and info.adapter_type == "lora"
    assert info.metadata["intermediate_checkpoints"] == 2
    assert "May – Jun 2023" in info.metadata["legacy_era"]


def test_legacy_iter_dir(tmp_path):
    d = tmp_path / "iter-000100"
    d.mkdir()
    torch.save({"model": lh.base_state_dict()}, d / "lit_model.pth")
    info = detect(d)
    assert info.kind == "model"
    assert "iter-000100/lit_model.pth" in _legacy_warning(info) and "ckpt-tool migrate" in _legacy_warning(info)


@pytest.mark.parametrize(
    ("content", "adapter_type", "modern"),
    [("lora", "lora", "lit_model.pth.lora"), ("adapter", "adapter", "lit_model.pth.adapter"),
     ("adapter_v2", "adapter_v2", "lit_model.pth.adapter_v2")],
)
def test_adapter_only_lit_model_pth(tmp_path, content, adapter_type, modern):
    final = tmp_path / "final"
    final.mkdir()
    if content == "lora":
        sd = lh.lora_state_dict()
    else:
        sd = lh.adapter_state_dict(version=1 if content == "adapter" else 2)
    torch.save({"model": sd}, final / "lit_model.pth")
    lh.write_model_config(final)
    info = detect(final)
    assert (info.kind, info.adapter_type) == ("adapter", adapter_type)
    w = _legacy_warning(info)
    fix = f"ckpt-tool rename {final} --repair"
    assert f"'{fix}' renames it to {modern}" in w and "not a model" in w
    assert info.metadata["modern_name"] == modern and info.metadata["repair_command"] == fix


def test_legacy_lit_config_json(lora_final, tmp_path):
    path = _copy_lora_alone(lora_final, tmp_path / "old")
    lh.write_lit_config_json(path.parent)
    info = detect(path.parent)
    assert info.details["model_config"]["_norm_class"] == "RMSNorm"
    assert info.metadata["model"] == "tiny-llama"
    assert "lit_config.json" in _legacy_warning(info) and "model_config.yaml" in _legacy_warning(info)
    # the legacy config still sizes q/k/v (grouped-query: q is told apart from k/v)
    assert info.lora["query"] is True


def test_legacy_fused_attention_base(tmp_path):
    torch.save(lh.legacy_fused_state_dict(lh.base_state_dict()), tmp_path / "lit_model.pth")
    lh.write_model_config(tmp_path)
    info = detect(tmp_path)
    assert info.kind == "model"
    assert any(t.name == "transformer.h.0.attn.attn.weight" for t in info.tensors)
    assert "legacy layout" in _legacy_warning(info) and "attn.attn" in _legacy_warning(info)


def test_legacy_fused_attention_lora(tmp_path):
    torch.save({"model": lh.legacy_fused_state_dict(lh.lora_state_dict())}, tmp_path / "lit_model_lora_finetuned.pth")
    info = detect(tmp_path / "lit_model_lora_finetuned.pth")
    assert info.adapter_type == "lora" and info.lora["r"] == 4
    w = _legacy_warning(info)
    assert "legacy layout" in w and "era" in w


def test_legacy_fused_rows_roundtrip_with_litgpt():
    """The legacy builder's interleaving is undone exactly by LitGPT's own loader-side conversion."""
    from litgpt.scripts.convert_hf_checkpoint import qkv_reassemble

    sd = lh.base_state_dict()
    legacy = lh.legacy_fused_state_dict(sd)
    back = qkv_reassemble(legacy["transformer.h.1.attn.attn.weight"], lh.tiny_config())
    assert torch.equal(back, sd["transformer.h.1.attn.qkv.weight"])
    assert not torch.equal(legacy["transformer.h.1.attn.attn.weight"], sd["transformer.h.1.attn.qkv.weight"])


def test_unknown_name_with_lora_content(lora_final, tmp_path):
    info = detect(_copy_lora_alone(lora_final, tmp_path, name="my_adapter.pth"))
    assert (info.format, info.adapter_type) == ("lit", "lora")
    assert not any("legacy" in w for w in info.warnings)


# ---------------------------------------------------------------------------
# bad side files


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("lora_r: [4\n", "invalid YAML"),
        ("- 1\n- 2\n", "expected a mapping"),
        ("!!python/object/apply:os.system ['echo pwned']\n", "refusing YAML tag"),
        ("lora_r: !!python/name:os.system\n", "refusing YAML tag"),
    ],
)
def test_bad_hyperparameters_yaml(lora_final, tmp_path, cli, text, needle):
    path = _copy_lora_alone(lora_final, tmp_path / "bad")
    (path.parent / "hyperparameters.yaml").write_text(text)
    with pytest.raises(InvalidFile, match=needle):
        detect(path.parent)
    res = cli("inspect", path.parent, "--json")
    assert res.code == 4 and json.loads(res.stdout)["error"]["exit_code"] == 4  # the one --json document
    assert res.stderr.startswith("error:") and needle in res.stderr and "Traceback" not in res.stderr


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("{oops", "not valid JSON"),
        ('{"n_embd": ' + "1" * 5000 + "}", "not valid JSON"),  # int() digit limit: a ValueError, not a JSONDecodeError
        ("[" * 100000, "not valid JSON"),
        ('["not", "a", "mapping"]', "expected a mapping"),
    ],
    ids=["syntax", "huge-int", "deep-nesting", "not-a-mapping"],
)
def test_bad_lit_config_json(lora_final, tmp_path, cli, text, needle):
    path = _copy_lora_alone(lora_final, tmp_path / "bad")
    (path.parent / "lit_config.json").write_text(text)
    with pytest.raises(InvalidFile, match=needle):
        detect(path.parent)
    res = cli("inspect", path.parent)
    assert res.code == 4 and res.stderr.startswith("error:") and "Traceback" not in res.stderr


def test_bad_model_config_yaml(base_dir, tmp_path):
    d = tmp_path / "b"
    shutil.copytree(base_dir, d)
    (d / "model_config.yaml").write_text("name: [unclosed\n")
    with pytest.raises(InvalidFile, match="model_config.yaml"):
        detect(d)


# ---------------------------------------------------------------------------
# what the LitGPT plugin must leave alone, and folders without weights


def test_leaves_peft_and_hf_dirs_and_foreign_torch_files(tmp_path):
    import peft_helpers as ph

    peft_dir = ph.save_adapter(ph.tiny_llama(), tmp_path / "peft", ph.lora_config())
    hf_dir = ph.save_base(ph.tiny_llama(), tmp_path / "hf")
    gpt2 = ph.tiny_gpt2()
    gpt2_dir = ph.save_base(gpt2, tmp_path / "gpt2")
    # HF GPT-2 keys also start with "transformer." — still not LitGPT, even as a torch file
    sd = gpt2.state_dict()
    assert any(k.startswith("transformer.h.0.attn.") for k in sd)
    torch.save(sd, gpt2_dir / "pytorch_model.bin")
    for p in (peft_dir, hf_dir, gpt2_dir, *gpt2_dir.iterdir(), *hf_dir.iterdir(), *peft_dir.iterdir()):
        assert _lit(p) is None, p
    # ... and not even under a LitGPT file name
    torch.save(sd, tmp_path / "lit_model.pth")
    torch.save({"encoder.weight": torch.zeros(2, 2)}, tmp_path / "random.pth")
    assert _lit(tmp_path / "lit_model.pth") is None
    assert _lit(tmp_path / "random.pth") is None
    assert detect(peft_dir).format == "peft"


def test_config_without_weights_and_run_dir(lora_final, tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    shutil.copy(lora_final / "model_config.yaml", d)
    with pytest.raises(NotFound, match="without weights"):
        detect(d)
    run = tmp_path / "run"
    shutil.copytree(lora_final, run / "final")
    (run / "step-000010").mkdir()
    with pytest.raises(NotFound, match="run directory") as exc:
        detect(run)
    assert "final" in exc.value.hint


# ---------------------------------------------------------------------------
# CLI and import hygiene


def test_cli_inspect_json(merged_final, lora_final, cli):
    res = cli("inspect", merged_final, "--json")
    assert res.code == 0, res.stderr
    data = json.loads(res.stdout)
    assert (data["format"], data["kind"]) == ("lit", "model")
    assert data["companions"][0]["adapter_type"] == "lora"
    assert data["companions"][0]["lora"]["r"] == 4

    res = cli("inspect", lora_final / "lit_model.pth.lora", "--json")
    data = json.loads(res.stdout)
    assert (data["kind"], data["adapter_type"], data["lora"]["alpha"]) == ("adapter", "lora", 8)
    assert "details" not in data

    human = cli("inspect", lora_final)
    assert human.code == 0 and "LoRA" in human.stdout


def test_detect_does_not_import_torch(merged_final):
    code = (
        "import sys; from ckpt_tool.ops.inspect import detect; "
        f"info = detect({str(merged_final)!r}); "
        "assert info.format == 'lit' and info.companions, info; "
        "assert 'torch' not in sys.modules, 'torch imported'; "
        "assert 'litgpt' not in sys.modules; print('ok')"
    )
    proc = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "ok"


def test_cli_json_matches_detect_for_every_layout(root, base_dir, lora_final, merged_final, cli):
    """``ckpt-tool inspect --json`` prints exactly what ``detect`` found, for each kind of LitGPT input."""
    zoo = root / "zoo"
    legacy = zoo / "legacy"
    legacy.mkdir(parents=True)
    torch.save({"model": lh.adapter_state_dict(version=2)}, legacy / "lit_model_adapter_finetuned.pth")
    torch.save(lh.training_state(), legacy / "step-000010.pth")
    lh.write_lit_config_json(legacy)
    paths = [
        base_dir,
        base_dir / "lit_model.pth",
        lora_final,
        lora_final / "lit_model.pth.lora",
        merged_final,
        lh.build_adapter_final(zoo / "a1", 1, base_dir),
        lh.build_full_step(zoo / "step-000020", base_dir, step_count=20),
        legacy,
        legacy / "step-000010.pth",
    ]
    for p in paths:
        res = cli("inspect", p, "--json", "--tensors")
        assert res.code == 0, (p, res.stderr)
        data = json.loads(res.stdout)
        assert data == json.loads(json.dumps(detect(p).to_json(with_tensors=True))), p
        assert data["format"] == "lit"
    legacy_json = json.loads(cli("inspect", legacy, "--json").stdout)
    assert legacy_json["adapter_type"] == "adapter_v2"
    assert any("lit_config.json" in w for w in legacy_json["warnings"])
    step_json = json.loads(cli("inspect", zoo / "step-000020", "--json").stdout)
    assert step_json["training_state"] is True and step_json["metadata"]["step_count"] == 20
