"""``rename``: tensor names change, bytes do not; layouts kept; refusals leave nothing behind; adapter folder
renames are crash-safe; damaged PEFT keys are repaired only when they match the config.

Fast lane (torch and safetensors only): PEFT directories here are hand-written in PEFT's layout; the
tests against the real peft library are in ``test_rename_peft.py``.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import pytest
import torch
from cli_helpers import PROVENANCE_FILE
from safetensors.torch import load_file, save_file

from ckpt_tool.errors import Refused, UsageError
from ckpt_tool.io.atomic import TEMP_PREFIX
from ckpt_tool.ops.inspect import detect

P = "base_model.model.model.layers"


# --- builders -----------------------------------------------------------------------------------------


def st_file(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata=metadata or {"format": "pt"})
    return path


def model_tensors(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out: dict[str, torch.Tensor] = {"model.embed_tokens.weight": torch.randn(16, 8, generator=g)}
    for i in range(3):
        out[f"model.layers.{i}.self_attn.q_proj.weight"] = torch.randn(8, 8, generator=g).to(torch.bfloat16)
        out[f"model.layers.{i}.mlp.up_proj.weight"] = torch.randn(12, 8, generator=g).half()
        out[f"model.layers.{i}.input_layernorm.weight"] = torch.randn(8, generator=g)
    out["model.norm.weight"] = torch.ones(8)
    out["model.step"] = torch.tensor([7], dtype=torch.int64)
    return out


def sharded_dir(d: Path, total_size: int | None = None) -> Path:
    """A Hugging Face-style sharded directory: 2 shards, index, config.json, tokenizer file, a stray .bin."""
    t = model_tensors()
    names = list(t)
    groups = [names[:5], names[5:]]
    wmap = {}
    for i, g in enumerate(groups, 1):
        shard = f"model-{i:05d}-of-00002.safetensors"
        st_file(d / shard, {n: t[n] for n in g})
        wmap.update({n: shard for n in g})
    size = sum(v.numel() * v.element_size() for v in t.values())
    index = {"metadata": {"total_size": size if total_size is None else total_size}, "weight_map": dict(sorted(wmap.items()))}
    (d / "model.safetensors.index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (d / "config.json").write_text(json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]}))
    (d / "tokenizer.json").write_text("{}")
    (d / "training_args.bin").write_bytes(b"not copied")
    torch.save({"x": torch.ones(1)}, d / "extra.pth.lora")  # weights by content and by name: not copied either
    (d / "notes").write_bytes(b"PK\x03\x04 a zip, whatever its name")
    return d


def lora_tensors(r: int = 4, layers: int = 2, dora: bool = False, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in range(layers):
        for proj in ("q_proj", "v_proj"):
            out[f"{P}.{i}.self_attn.{proj}.lora_A.weight"] = torch.randn(r, 8, generator=g)
            out[f"{P}.{i}.self_attn.{proj}.lora_B.weight"] = torch.randn(8, r, generator=g)
            if dora:
                out[f"{P}.{i}.self_attn.{proj}.lora_magnitude_vector"] = torch.rand(8, generator=g)
    return out


def adapter_dir(d: Path, r: int = 4, dora: bool = False, damaged: bool = False, seed: int = 0, **config) -> Path:
    """An adapter directory in PEFT's layout; ``damaged``: keys as PEFT <= 0.17 saved an adapter named 'lora'."""
    tensors = lora_tensors(r, dora=dora, seed=seed)
    if damaged:
        tensors = {k.replace(".lora", ""): v for k, v in tensors.items()}
    d.mkdir(parents=True, exist_ok=True)
    cfg = {"peft_type": "LORA", "r": r, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj"], "use_dora": dora}
    cfg.update(config)
    (d / "adapter_config.json").write_text(json.dumps(cfg, indent=2))
    st_file(d / "adapter_model.safetensors", tensors)
    return d


def peft_root(d: Path, named: tuple[str, ...] = ("other",), default: bool = True) -> Path:
    """A multi-adapter save: 'default' at the root (if asked), each named adapter in <root>/<name>/, a model card."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "README.md").write_text("---\nlibrary_name: peft\n---\n")
    if default:
        adapter_dir(d, seed=1)
    for i, name in enumerate(named):
        adapter_dir(d / name, r=2, seed=10 + i)
    return d


def snapshot(root: Path) -> dict[str, str]:
    """Every file under ``root`` -> sha256 (to prove a refusal changed nothing)."""
    out = {}
    for p in sorted(root.rglob("*")):
        if p.is_file():
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
        elif p.is_dir():
            out[str(p.relative_to(root)) + "/"] = "dir"
    return out


def temps(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)]


def data_section(path: Path) -> bytes:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return raw[8 + n :]


def header(path: Path) -> dict:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


# --- keys: safetensors and torch files ------------------------------------------------------------------


def test_map_keeps_every_byte_and_the_metadata(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors(), {"format": "pt", "note": "kept"})
    out = tmp_path / "o.safetensors"
    res = cli("rename", src, "--map", "model.norm.weight=model.final_norm.weight", "--out", out, "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["tensors"]["renamed"] == 1 and s["tensors"]["copied"] == s["tensors"]["written"] == 12
    assert s["tensors"]["computed"] == 0 and s["tensors"]["cast"] == 0
    # the data buffer is byte-identical (same order, same bytes); only the header changed
    assert data_section(out) == data_section(src)
    h_in, h_out = header(src), header(out)
    meta = dict(h_out["__metadata__"])
    assert json.loads(meta.pop("ckpt_tool.provenance"))["operation"] == "rename"
    assert meta == {"format": "pt", "note": "kept"}
    assert h_out["model.final_norm.weight"] == h_in["model.norm.weight"]
    a, b = load_file(str(src)), load_file(str(out))
    b["model.norm.weight"] = b.pop("model.final_norm.weight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and a[k].dtype == b[k].dtype for k in a)


def test_regex_matches_the_whole_name(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    out = tmp_path / "o.safetensors"
    # 'layers' alone would be found by re.search, but a pattern must describe the whole name
    res = cli("rename", src, "--regex", r"layers=blocks", "--out", out)
    assert res.code == 6 and "match no tensor name" in res.stderr and "--regex layers=blocks" in res.stderr
    assert not out.exists()
    res = cli("rename", src, "--regex", r"model\.layers\.(\d+)\.(?P<rest>.*)=transformer.h.\1.\g<rest>", "--out", out)
    assert res.code == 0, res.stderr
    names = set(load_file(str(out)))
    assert "transformer.h.2.mlp.up_proj.weight" in names and "model.embed_tokens.weight" in names


def test_rules_apply_in_documented_order_and_swaps_work(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    out = tmp_path / "o.safetensors"
    res = cli(
        "rename", src,
        "--map", "model.layers.0.mlp.up_proj.weight=model.layers.1.mlp.up_proj.weight",
        "--map", "model.layers.1.mlp.up_proj.weight=model.layers.0.mlp.up_proj.weight",  # a swap
        "--strip-prefix", "model.",
        "--regex", r"layers\.(\d+)\.(.*)=h.\1.\2",
        "--add-prefix", "transformer.",
        "--out", out, "--json",
    )  # fmt: skip
    assert res.code == 0, res.stderr
    a, b = load_file(str(src)), load_file(str(out))
    assert torch.equal(b["transformer.h.1.mlp.up_proj.weight"], a["model.layers.0.mlp.up_proj.weight"])
    assert torch.equal(b["transformer.h.0.mlp.up_proj.weight"], a["model.layers.1.mlp.up_proj.weight"])
    assert "transformer.embed_tokens.weight" in b and len(b) == len(a)


def test_collision_is_refused_with_the_names_and_nothing_is_written(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    before = snapshot(tmp_path)
    res = cli("rename", src, "--regex", r"model\.layers\.\d+\.(.*)=model.\1", "--out", tmp_path / "o.safetensors")
    assert res.code == 6
    assert "would be given to several tensors" in res.stderr
    assert "'model.self_attn.q_proj.weight' <- 'model.layers.0.self_attn.q_proj.weight'" in res.stderr
    res = cli("rename", src, "--map", "model.norm.weight=model.embed_tokens.weight", "--in-place")
    assert res.code == 6 and "'model.embed_tokens.weight' <-" in res.stderr
    assert snapshot(tmp_path) == before and not temps(tmp_path)


def test_rules_that_match_nothing_or_change_nothing_are_refused(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    before = snapshot(tmp_path)
    res = cli("rename", src, "--map", "nope=x", "--strip-prefix", "transformer.", "--map", "model.norm.weight=n", "--in-place")
    assert res.code == 6
    assert "2 rule(s) match no tensor name" in res.stderr and "--map nope=x" in res.stderr
    assert "--strip-prefix transformer." in res.stderr
    res = cli("rename", src, "--map", "model.norm.weight=model.norm.weight", "--in-place")
    assert res.code == 6 and "change no tensor name" in res.stderr
    res = cli("rename", src, "--map", "model.norm.weight=", "--in-place")
    assert res.code == 6 and "is empty" in res.stderr
    res = cli("rename", src, "--map", "model.norm.weight=__metadata__", "--in-place")
    assert res.code == 6 and "reserved by safetensors" in res.stderr
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("wrapper", [None, "model", "state_dict"])
def test_torch_file_keeps_its_wrapper(cli, tmp_path, wrapper):
    sd = {"transformer.wte.weight": torch.randn(4, 3), "transformer.h.0.attn.qkv.weight": torch.randn(6, 3).half()}
    src = tmp_path / "lit_model.pth"
    torch.save(sd if wrapper is None else {wrapper: sd}, src)
    res = cli("rename", src, "--regex", r"transformer\.h\.(.*)=transformer.blocks.\1", "--in-place", "--json")
    assert res.code == 0, res.stderr
    got = torch.load(src, weights_only=True)
    if wrapper is not None:
        assert list(got) == [wrapper]
        got = got[wrapper]
    assert list(got) == ["transformer.wte.weight", "transformer.blocks.0.attn.qkv.weight"]
    assert torch.equal(got["transformer.blocks.0.attn.qkv.weight"], sd["transformer.h.0.attn.qkv.weight"])
    assert got["transformer.blocks.0.attn.qkv.weight"].dtype == torch.float16
    assert not temps(tmp_path)


def test_torch_training_state_is_refused(cli, tmp_path):
    src = tmp_path / "step.pth"
    torch.save({"model": {"w": torch.ones(2)}, "optimizer": {"state": {}}, "iter_num": 3}, src)
    before = snapshot(tmp_path)
    res = cli("rename", src, "--map", "w=v", "--in-place")
    assert res.code == 5 and "optimizer" in res.stderr and "Traceback" not in res.stderr
    assert snapshot(tmp_path) == before


def test_torch_shared_storage_is_written_untied_and_said(cli, tmp_path):
    w = torch.randn(4, 3)
    src = tmp_path / "tied.pth"
    torch.save({"wte.weight": w, "lm_head.weight": w}, src)
    res = cli("rename", src, "--map", "wte.weight=embed.weight", "--out", tmp_path / "o.pth", "--json")
    assert res.code == 0, res.stderr
    assert any("shared a storage" in n for n in json.loads(res.stdout)["notes"])
    got = torch.load(tmp_path / "o.pth", weights_only=True)
    assert torch.equal(got["embed.weight"], w) and torch.equal(got["lm_head.weight"], w)


# --- keys: sharded directories ---------------------------------------------------------------------------


def test_sharded_out_keeps_shards_and_renames_the_index(cli, tmp_path):
    src = sharded_dir(tmp_path / "hf", total_size=123456)  # a stale total_size stays as it was
    out = tmp_path / "out"
    res = cli("rename", src, "--regex", r"model\.(.*)=backbone.\1", "--out", out, "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    old_index = json.loads((src / "model.safetensors.index.json").read_text())
    new_index = json.loads((out / "model.safetensors.index.json").read_text())
    assert new_index["metadata"] == old_index["metadata"] == {"total_size": 123456}
    assert new_index["weight_map"] == {
        "backbone." + k.removeprefix("model."): v for k, v in old_index["weight_map"].items()
    }
    assert list(new_index["weight_map"]) == sorted(new_index["weight_map"])
    for shard in ("model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"):
        assert data_section(out / shard) == data_section(src / shard)
        assert {"backbone." + k.removeprefix("model.") for k in load_file(str(src / shard))} == set(
            load_file(str(out / shard))
        )
    assert (out / "config.json").read_bytes() == (src / "config.json").read_bytes()
    assert (out / "tokenizer.json").is_file() and not (out / "training_args.bin").exists()
    assert not (out / "extra.pth.lora").exists() and not (out / "notes").exists()
    assert any("training_args.bin" in n for n in s["notes"])
    assert detect(out).warnings == detect(src).warnings  # only the stale total_size warning, as before


def test_sharded_in_place_replaces_shards_and_index_last(cli, tmp_path, monkeypatch):
    src = sharded_dir(tmp_path / "hf")
    published: list[str] = []
    real_replace = os.replace

    def spy(a, b, *args, **kw):
        published.append(Path(b).name)
        return real_replace(a, b, *args, **kw)

    monkeypatch.setattr(os, "replace", spy)
    inode = os.stat(src / "model-00001-of-00002.safetensors").st_ino
    res = cli("rename", src, "--strip-prefix", "model.", "--in-place")
    assert res.code == 0, res.stderr
    # shards first, then the index, then the provenance record that describes them
    assert published[2:] == ["model.safetensors.index.json", "ckpt-tool-provenance.json"] and len(published) == 4
    assert os.stat(src / "model-00001-of-00002.safetensors").st_ino != inode  # replaced by rename, not rewritten
    info = detect(src)
    assert not info.warnings and {t.name for t in info.tensors} == {k.removeprefix("model.") for k in model_tensors()}
    assert not temps(tmp_path)


def test_in_place_is_safe_while_the_input_is_mapped(tmp_path):
    """The engine reads inputs through private maps; renaming over the file keeps the mapped inode intact."""
    from ckpt_tool.io.container import read_container
    from ckpt_tool.io.tensors import TensorReader
    from ckpt_tool.ops.rename import rename

    t = model_tensors()
    src = st_file(tmp_path / "m.safetensors", t)
    reader = TensorReader()
    mapped = {info.name: reader.tensor(info) for info in read_container(src).tensors.values()}
    rename(src, strip_prefix="model.", in_place=True)
    for name, tensor in mapped.items():  # the old mapping still sees the old bytes
        assert torch.equal(tensor, t[name])
    assert set(load_file(str(src))) == {k.removeprefix("model.") for k in t}
    reader.close()


def test_in_place_failure_leaves_the_input_byte_identical(cli, tmp_path, monkeypatch):
    import errno

    from ckpt_tool.io import writers

    src = sharded_dir(tmp_path / "hf")
    before = snapshot(tmp_path)
    calls = []

    def full_disk(*args, **kw):
        calls.append(1)
        if len(calls) == 5:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(*args, **kw)

    real = writers.copy_range
    monkeypatch.setattr(writers, "copy_range", full_disk)
    res = cli("rename", src, "--strip-prefix", "model.", "--in-place")
    assert res.code == 9 and "No space left" in res.stderr
    assert snapshot(tmp_path) == before and not temps(tmp_path)


def test_failed_out_leaves_no_folder_behind(cli, tmp_path, monkeypatch):
    import errno

    from ckpt_tool.io import writers

    src = sharded_dir(tmp_path / "hf")

    def full_disk(*args, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writers, "copy_range", full_disk)
    res = cli("rename", src, "--strip-prefix", "model.", "--out", tmp_path / "new" / "out")
    assert res.code == 9
    assert not (tmp_path / "new").exists() and not temps(tmp_path)


def test_repair_of_a_bin_adapter(cli, tmp_path):
    d = adapter_dir(tmp_path / "lora", damaged=True)
    t = load_file(str(d / "adapter_model.safetensors"))
    (d / "adapter_model.safetensors").unlink()
    torch.save(t, d / "adapter_model.bin")
    res = cli("rename", d, "--repair")
    assert res.code == 0, res.stderr
    got = torch.load(d / "adapter_model.bin", weights_only=True)
    good = lora_tensors()
    assert got.keys() == good.keys() and all(torch.equal(got[k], good[k]) for k in good)


def test_in_place_refuses_a_symlinked_input(cli, tmp_path):
    real = st_file(tmp_path / "blobs" / "abc", model_tensors())
    (tmp_path / "snap").mkdir()
    link = tmp_path / "snap" / "model.safetensors"
    link.symlink_to(real)
    before = snapshot(tmp_path)
    res = cli("rename", link, "--strip-prefix", "model.", "--in-place")
    assert res.code == 6 and "symlink" in res.stderr
    assert snapshot(tmp_path) == before


def test_out_must_not_be_the_input(cli, tmp_path):
    src = sharded_dir(tmp_path / "hf")
    res = cli("rename", src, "--strip-prefix", "model.", "--out", src)
    assert res.code == 6 and "--in-place" in res.stderr
    f = st_file(tmp_path / "m.safetensors", model_tensors())
    res = cli("rename", f, "--strip-prefix", "model.", "--out", tmp_path)
    assert res.code == 6 and "--in-place" in res.stderr


def test_existing_out_needs_force(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    out = tmp_path / "o.safetensors"
    out.write_bytes(b"old")
    res = cli("rename", src, "--strip-prefix", "model.", "--out", out)
    assert res.code == 6 and "--force" in res.stderr and out.read_bytes() == b"old"
    res = cli("rename", src, "--strip-prefix", "model.", "--out", out, "--force")
    assert res.code == 0 and "embed_tokens.weight" in load_file(str(out))


# --- map files, options, output -----------------------------------------------------------------------------


def test_map_file_json_and_lines(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    (tmp_path / "map.json").write_text(json.dumps({"model.norm.weight": "norm.weight", "model.step": "step"}))
    (tmp_path / "map.txt").write_text("# comment\n\nmodel.norm.weight=norm.weight\nmodel.step = step\n")
    for f in ("map.json", "map.txt"):
        out = tmp_path / f"o-{f}.safetensors"
        res = cli("rename", src, "--map-file", tmp_path / f, "--out", out)
        assert res.code == 0, res.stderr
        assert {"norm.weight", "step"} <= set(load_file(str(out)))
    res = cli("rename", src, "--map-file", tmp_path / "map.json", "--map", "model.step=other", "--dry-run")
    assert res.code == 2 and "conflicts" in res.stderr


@pytest.mark.parametrize(
    "content, needle",
    [
        (b'{"a": "b", "a": "c"}', "mapped twice"),
        (b'{"model.step": 3}', "must be a string"),
        (b'["a", "b"]', "must be a JSON object"),
        (b'{"a": ' + b"[" * 100000 + b"]" * 100000 + b"}", "not valid JSON"),
        (b"model.step\n", "expected OLD=NEW"),
        (b"a=b\na=c\n", "mapped twice"),
        (b"\xff\xfe=x", "not UTF-8"),
    ],
)
def test_hostile_map_files(cli, tmp_path, content, needle):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    f = tmp_path / "map"
    f.write_bytes(content)
    res = cli("rename", src, "--map-file", f, "--in-place")
    assert res.code == 4 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_map_file_size_is_capped(cli, tmp_path, monkeypatch):
    from ckpt_tool.ops import rename_rules

    monkeypatch.setattr(rename_rules, "MAX_MAP_FILE_BYTES", 100)
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    (tmp_path / "big").write_text("a=b\n" * 100)
    res = cli("rename", src, "--map-file", tmp_path / "big", "--in-place")
    assert res.code == 4 and "implausibly large" in res.stderr
    res = cli("rename", src, "--map-file", tmp_path / "missing", "--in-place")
    assert res.code == 3


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--map", "a=b", "--out", "X", "--in-place"], "cannot be combined"),
        (["--map", "model.step=b"], "say where to write"),
        ([], "nothing to do"),
        (["--to", "x"], "needs --adapter"),
        (["--map", "a=b", "--repair"], "cannot be combined"),
        (["--map", "ab"], "expected OLD=NEW"),
        (["--regex", "(unclosed=x", "--in-place"], "not a valid regular expression"),
        (["--regex", r"(a)=\2", "--in-place"], "not valid for"),
        (["--regex", "a" * 2000 + "=b", "--in-place"], "longer than"),
        (["--strip-prefix", "", "--in-place"], "non-empty"),
    ],
)
def test_bad_option_values_exit_2(cli, tmp_path, args, needle):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    before = snapshot(tmp_path)
    res = cli("rename", src, *[a.replace("X", str(tmp_path / "x")) for a in args])
    assert res.code == 2 and needle in res.stderr and res.stderr.startswith("error: "), res.stderr
    assert snapshot(tmp_path) == before


def test_regex_never_runs_on_huge_names(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", {"x" * 2000: torch.ones(1), "a": torch.ones(1)})
    res = cli("rename", src, "--regex", "a=b", "--in-place")
    assert res.code == 6 and "longer than the 1024 characters" in res.stderr


def test_dry_run_table_fits_80_columns_and_writes_nothing(cli, tmp_path):
    long = {f"base_model.model.model.layers.{i}.self_attn.q_proj.lora_A.weight": torch.ones(1) for i in range(3)}
    src = st_file(tmp_path / "m.safetensors", {**long, "short": torch.ones(1)})
    before = snapshot(tmp_path)
    res = cli("rename", src, "--regex", r"base_model\.model\.(.*)=the.renamed.and.much.longer.prefix.of.\1", "--dry-run")
    assert res.code == 0, res.stderr
    lines = [line for line in res.stdout.splitlines() if str(tmp_path) not in line]  # paths are never cut
    assert all(len(line) <= 80 for line in lines), max(lines, key=len)
    assert "dry run: nothing written" in res.stdout and "\u2192" in res.stdout
    assert sum("\u2192" in line for line in lines) == 3  # one row per change
    assert snapshot(tmp_path) == before


def test_json_is_one_snake_case_document(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    res = cli("rename", src, "--strip-prefix", "model.", "--dry-run", "--json")
    assert res.code == 0, res.stderr
    doc = json.loads(res.stdout)  # raises if there were two documents or stray text

    def keys(x):
        if isinstance(x, dict):
            for k, v in x.items():
                yield k
                yield from keys(v)
        elif isinstance(x, list):
            for v in x:
                yield from keys(v)

    assert all(k == k.lower() and " " not in k and "-" not in k for k in keys(doc) if k not in ("old", "new"))
    assert doc["operation"] == "keys" and doc["dry_run"] is True and len(doc["changes"]) == 12


# --- keys: PEFT adapter directories (hand-written in PEFT's layout) -------------------------------------------


def test_peft_adapter_keys_out_copies_the_config(cli, tmp_path):
    root = peft_root(tmp_path / "run")
    out = tmp_path / "renamed"
    res = cli("rename", root, "--adapter", "other", "--regex", r"(.*)\.v_proj\.(.*)=\1.value.\2", "--out", out, "--json")
    assert res.code == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["adapter_config.json", "adapter_model.safetensors", PROVENANCE_FILE]
    assert (out / "adapter_config.json").read_bytes() == (root / "other" / "adapter_config.json").read_bytes()
    assert any(".value." in k for k in load_file(str(out / "adapter_model.safetensors")))
    res = cli("rename", root, "--adapter", "nope", "--map", "a=b", "--in-place")
    assert res.code == 3 and "choose one of: default, other" in res.stderr


def test_peft_adapter_keys_in_place_touch_only_the_weights(cli, tmp_path):
    root = peft_root(tmp_path / "run")
    before = snapshot(root)
    res = cli("rename", root, "--strip-prefix", "base_model.model.", "--in-place")
    assert res.code == 0, res.stderr
    after = snapshot(root)
    assert {k for k in after if after[k] != before.get(k)} == {"adapter_model.safetensors", PROVENANCE_FILE}
    assert any("do not start with 'base_model.model.'" in w for w in detect(root).warnings)


# --- adapter folder renames -------------------------------------------------------------------------------------


def names(root: Path) -> list[str]:
    return sorted(a.name for a in detect(root).adapters)


def test_named_adapter_rename_is_one_rename(cli, tmp_path):
    root = peft_root(tmp_path / "run")
    before = snapshot(root / "other")
    res = cli("rename", root, "--adapter", "other", "--to", "chat", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert [st["op"] for st in s["steps"]] == ["rename"] and s["resumed"] is False
    assert names(root) == ["chat", "default"] and snapshot(root / "chat") == before


def test_default_adapter_moves_into_a_subfolder(cli, tmp_path):
    root = peft_root(tmp_path / "run")
    files = {f: (root / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")}
    res = cli("rename", root, "--adapter", "default", "--to", "chat")
    assert res.code == 0, res.stderr
    assert names(root) == ["chat", "other"]
    assert {f: (root / "chat" / f).read_bytes() for f in files} == files
    assert not (root / "adapter_config.json").exists() and not (root / "adapter_model.safetensors").exists()
    assert (root / "README.md").is_file()  # the model card stays where PEFT writes it
    assert "from_pretrained" in res.stdout
    assert all(len(x) <= 80 for x in res.stdout.splitlines() if str(tmp_path) not in x)
    # and back: a named adapter becomes the root's 'default'
    res = cli("rename", root, "--adapter", "chat", "--to", "default")
    assert res.code == 0, res.stderr
    assert names(root) == ["default", "other"] and not (root / "chat").exists()
    assert {f: (root / f).read_bytes() for f in files} == files


@pytest.mark.parametrize(
    "new, code, needle",
    [
        ("lora", 6, "contained in the LORA tuner prefix 'lora_'"),
        ("ra", 6, "PEFT #2252"),
        ("self_attn", 6, "module path segment"),
        ("0", 6, "PEFT #3584"),
        ("lora_A", 6, "module path segment"),
        ("weight", 6, "module path segment"),
        ("a.b", 2, "contains '.'"),
        ("..", 2, "contains '.'"),
        ("a/b", 2, "path separator"),
        ("", 2, "is empty"),
        (" x", 2, "whitespace"),
        ("x" * 300, 2, "255 bytes"),
        ("other", 6, "already exists"),
    ],
)
def test_bad_adapter_names_are_refused_with_the_reason(cli, tmp_path, new, code, needle):
    root = peft_root(tmp_path / "run", named=("other", "third"))
    before = snapshot(root)
    res = cli("rename", root, "--adapter", "third", "--to", new)
    assert res.code == code and needle in res.stderr, res.stderr
    assert snapshot(root) == before


def test_names_of_the_base_models_modules_are_refused(cli, tmp_path):
    """'up_proj' is in no adapter key here, but the base model recorded in the config has it; 'mlp' is refused as
    a module name of most transformers models even when nothing here shows it."""
    base = tmp_path / "base"
    st_file(base / "model.safetensors", model_tensors())
    root = peft_root(tmp_path / "run", named=("other", "third"))
    cfg = json.loads((root / "adapter_config.json").read_text())
    (root / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": str(base)}))
    res = cli("rename", root, "--adapter", "third", "--to", "up_proj")
    assert res.code == 6 and "'model.layers.0.mlp.up_proj.weight', in the base model" in res.stderr, res.stderr
    assert cli("rename", root, "--adapter", "third", "--to", "style").code == 0
    bare = peft_root(tmp_path / "bare")  # no mlp in its keys, no base model to read
    res = cli("rename", bare, "--adapter", "other", "--to", "mlp")
    assert res.code == 6 and "most transformers models" in res.stderr


def test_fold_keeps_every_character_within_the_width():
    from ckpt_tool.commands.rename import change_table, fold

    name = "base_model.model.model.layers.10.self_attn.q_proj.lora_magnitude_vector_with_a_very_long_tail_x"
    for width in (8, 20, 37):
        lines = fold(name, width)
        assert all(len(line) <= width for line in lines)
        assert "".join(line.removeprefix("  ") if i else line for i, line in enumerate(lines)) == name
    table = change_table([{"old": name, "new": name + ".renamed"}, {"old": "a", "new": "b"}])
    assert all(len(line) <= 80 for line in table.splitlines())


def test_existing_targets_and_unknown_adapters(cli, tmp_path):
    root = peft_root(tmp_path / "run")
    (root / "taken").mkdir()
    before = snapshot(root)
    assert cli("rename", root, "--adapter", "other", "--to", "taken").code == 6
    assert cli("rename", root, "--adapter", "default", "--to", "taken").code == 6
    res = cli("rename", root, "--adapter", "other", "--to", "default")
    assert res.code == 6 and "already holds an adapter 'default'" in res.stderr
    res = cli("rename", root, "--adapter", "ghost", "--to", "x")
    assert res.code == 3 and "choose one of" in res.stderr
    assert cli("rename", root, "--adapter", "other", "--to", "x", "--out", tmp_path / "o").code == 2
    assert snapshot(root) == before


def test_trainer_checkpoint_root_adapter_is_not_moved(cli, tmp_path):
    ck = adapter_dir(tmp_path / "checkpoint-10")
    (ck / "trainer_state.json").write_text("{}")
    res = cli("rename", ck, "--adapter", "default", "--to", "chat")
    assert res.code == 6 and "resume_from_checkpoint" in res.stderr


def test_dry_run_lists_the_steps_and_changes_nothing(cli, tmp_path):
    root = peft_root(tmp_path / "run")
    before = snapshot(root)
    res = cli("rename", root, "--adapter", "default", "--to", "chat", "--dry-run", "--json")
    assert res.code == 0, res.stderr
    ops = [s["op"] for s in json.loads(res.stdout)["steps"]]
    assert ops == ["mkdir", "link", "link", "rename", "unlink", "unlink"]
    assert snapshot(root) == before


def _loadable(root: Path, old: str, new: str, original: dict[str, bytes]) -> None:
    """Every adapter detection finds is complete, and the renamed one is there under one name or both."""
    info = detect(root)
    found = {a.name: Path(a.path) for a in info.adapters}
    assert old in found or new in found, found
    assert not any(n.startswith(TEMP_PREFIX) for n in found)  # a rename's temp folder is no adapter of the save
    for name in (old, new):
        if name in found:
            d = found[name]
            assert {f: (d / f).read_bytes() for f in original} == original


RENAMES = [("default", "chat"), ("other", "default"), ("other", "chat")]


def _template(tmp_path: Path, old: str, new: str) -> tuple[Path, dict[str, bytes], int]:
    template = peft_root(tmp_path / "template", default=(old != "other" or new != "default"))
    src = template if old == "default" else template / old
    original = {f: (src / f).read_bytes() for f in ("adapter_config.json", "adapter_model.safetensors")}
    from ckpt_tool.ops.rename import rename

    steps = len(rename(template, adapter=old, to=new, dry_run=True)["steps"])
    return template, original, steps


def _finished(root: Path, template: Path, old: str, new: str, original: dict[str, bytes]) -> None:
    assert old not in names(root) and new in names(root)
    d = root if new == "default" else root / new
    assert {f: (d / f).read_bytes() for f in original} == original
    expect_default = new == "default" or (old != "default" and (template / "adapter_config.json").exists())
    top = sorted(p.name for p in root.iterdir() if p.is_file())
    assert top == sorted(["README.md", *(original if expect_default else [])]), top
    assert not temps(root)


@pytest.mark.parametrize("old, new", RENAMES)
def test_interrupted_adapter_renames_stay_loadable_and_finish_on_rerun(cli, tmp_path, monkeypatch, old, new):
    """Ctrl-C before each step: the directory loads, a temp folder is removed at once, a rerun finishes."""
    from ckpt_tool.ops import rename as op

    template, original, steps = _template(tmp_path, old, new)
    real_do = op._do
    for k in range(steps):
        root = tmp_path / f"run{k}"
        shutil.copytree(template, root)
        done: list[object] = []

        def crash(step, done=done, k=k):
            if len(done) == k:
                raise KeyboardInterrupt
            done.append(step)
            return real_do(step)

        monkeypatch.setattr(op, "_do", crash)
        res = cli("rename", root, "--adapter", old, "--to", new)
        assert res.code == 130
        monkeypatch.setattr(op, "_do", real_do)
        _loadable(root, old, new, original)
        assert not temps(root)
        res = cli("rename", root, "--adapter", old, "--to", new)
        assert res.code == 0, (k, res.stderr)
        _finished(root, template, old, new, original)


@pytest.mark.parametrize("old, new", RENAMES)
def test_killed_adapter_renames_stay_loadable_and_finish_on_rerun(cli, tmp_path, old, new):
    """kill -9 before each step (a real SIGKILL of a real process): loadable; the rerun resumes and cleans up."""
    import signal
    import subprocess
    import sys

    template, original, steps = _template(tmp_path, old, new)
    for k in range(steps):
        root = tmp_path / f"run{k}"
        shutil.copytree(template, root)
        code = (
            "import os, signal\n"
            "from ckpt_tool.ops import rename as op\n"
            "real, n = op._do, [0]\n"
            "def _do(step):\n"
            f"    if n[0] == {k}:\n"
            "        os.kill(os.getpid(), signal.SIGKILL)\n"
            "    n[0] += 1\n"
            "    return real(step)\n"
            "op._do = _do\n"
            "from ckpt_tool.cli import main\n"
            f"main(['rename', {str(root)!r}, '--adapter', {old!r}, '--to', {new!r}])\n"
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
        assert proc.returncode == -signal.SIGKILL, proc.stderr
        _loadable(root, old, new, original)
        res = cli("rename", root, "--adapter", old, "--to", new, "--json")
        assert res.code == 0, (k, res.stderr)
        assert json.loads(res.stdout)["resumed"] is (k > 0)
        _finished(root, template, old, new, original)


# --- repairs -------------------------------------------------------------------------------------------------


def test_repair_restores_damaged_keys_in_place(cli, tmp_path):
    root = peft_root(tmp_path / "run", named=())
    adapter_dir(root / "lora", dora=True, damaged=True, seed=5)
    good = lora_tensors(dora=True, seed=5)
    damaged_keys = set(load_file(str(root / "lora" / "adapter_model.safetensors")))
    assert f"{P}.0.self_attn.q_proj_A.weight" in damaged_keys and f"{P}.0.self_attn.q_proj_magnitude_vector" in damaged_keys
    before_default = snapshot(root)["adapter_model.safetensors"]
    res = cli("rename", root, "--repair", "--json")
    assert res.code == 0, res.stderr
    s = json.loads(res.stdout)
    assert s["operation"] == "repair" and s["adapter"] == "lora" and s["in_place"] is True
    assert s["tensors"]["renamed"] == 12 and len(s["checks"]) == 4
    assert any("--adapter lora --to lora_adapter" in n for n in s["notes"])
    fixed = load_file(str(root / "lora" / "adapter_model.safetensors"))
    assert fixed.keys() == good.keys() and all(torch.equal(fixed[k], good[k]) for k in good)
    assert snapshot(root)["adapter_model.safetensors"] == before_default  # the healthy adapter is untouched
    assert not detect(root / "lora").details["repairs"]
    res = cli("rename", root, "--repair")  # a second run finds nothing to do
    assert res.code == 0 and "nothing to repair" in res.stdout


def test_repair_to_out_leaves_the_input_alone(cli, tmp_path):
    d = adapter_dir(tmp_path / "lora", damaged=True)
    before = snapshot(d)
    res = cli("rename", d, "--repair", "--out", tmp_path / "fixed")
    assert res.code == 0, res.stderr
    assert snapshot(d) == before
    assert set(load_file(str(tmp_path / "fixed" / "adapter_model.safetensors"))) == set(lora_tensors())
    assert (tmp_path / "fixed" / "adapter_config.json").is_file()


@pytest.mark.parametrize(
    "config, needle",
    [
        ({"r": 8}, "adapter_config.json says r=8"),
        ({"rank_pattern": {"v_proj": 2}}, "says r=2"),
        ({"target_modules": ["q_proj"]}, "not selected by target_modules"),
        ({"use_dora": True}, "no lora_magnitude_vector"),
    ],
)
def test_repair_is_refused_when_the_result_disagrees_with_the_config(cli, tmp_path, config, needle):
    d = adapter_dir(tmp_path / "lora", damaged=True)
    cfg = json.loads((d / "adapter_config.json").read_text())
    cfg.update(config)
    (d / "adapter_config.json").write_text(json.dumps(cfg))
    before = snapshot(tmp_path)
    res = cli("rename", d, "--repair")
    assert res.code == 6 and needle in res.stderr, res.stderr
    assert snapshot(tmp_path) == before


def test_repair_of_a_half_pair_is_refused(cli, tmp_path):
    d = adapter_dir(tmp_path / "lora", damaged=True)
    t = load_file(str(d / "adapter_model.safetensors"))
    del t[f"{P}.1.self_attn.v_proj_B.weight"]
    st_file(d / "adapter_model.safetensors", t)
    res = cli("rename", d, "--repair")
    assert res.code == 6 and "v_proj: has lora_A but not both" in res.stderr


def test_repair_needs_a_choice_between_two_damaged_adapters(cli, tmp_path):
    root = peft_root(tmp_path / "run", named=())
    adapter_dir(root / "lora", damaged=True)
    adapter_dir(root / "l2", damaged=True)
    res = cli("rename", root, "--repair")
    assert res.code == 2 and "--adapter" in res.stderr
    assert cli("rename", root, "--repair", "--adapter", "l2").code == 0


def test_repair_of_something_else_is_unsupported(cli, tmp_path):
    src = st_file(tmp_path / "m.safetensors", model_tensors())
    res = cli("rename", src, "--repair")
    assert res.code == 5 and "PEFT" in res.stderr


def test_rename_functions_raise_the_tool_errors(tmp_path):
    from ckpt_tool.ops.rename import rename

    src = st_file(tmp_path / "m.safetensors", model_tensors())
    with pytest.raises(UsageError):
        rename(src)
    with pytest.raises(Refused):
        rename(src, maps=["nope=x"], in_place=True)
