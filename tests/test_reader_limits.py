"""Small hostile inputs must cost bounded time and memory, and fail with one ``error:`` line.

Every case here cost the pre-fix code gigabytes, minutes, a hang, an interpreter crash or an
"internal error". Cases that could hang or crash the test process on a broken build run in a
subprocess with a timeout and an address-space limit.
"""

from __future__ import annotations

import json
import os
import pickle
import resource
import subprocess
import sys
import textwrap
import time
import tracemalloc
import zipfile
from pathlib import Path

import pytest
import torch
from hostile_helpers import base_zip, rezip
from safetensors.torch import save_file

from ckpt_tool import limits
from ckpt_tool.errors import InvalidFile, Unsupported, UsageError
from ckpt_tool.io.container import read_container
from ckpt_tool.io.torchzip import read_torch_zip

ROOT = Path(__file__).resolve().parents[1]


def _run(code: str, timeout: float = 60, mem_gib: float = 2) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter with at most ``mem_gib`` of address space."""

    def limit() -> None:
        cap = int(mem_gib * (1 << 30))
        resource.setrlimit(resource.RLIMIT_AS, (cap, cap))

    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                          timeout=timeout, preexec_fn=limit, cwd=ROOT)


def _inspect_subprocess(path: Path, timeout: float = 60, *extra: str) -> subprocess.CompletedProcess[str]:
    return _run(f"import sys; from ckpt_tool.cli import main; main(['inspect', {str(path)!r}, *{list(extra)!r}])",
                timeout=timeout)


def _one_error_line(stderr: str) -> bool:
    return stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr


def _pickle_zip(tmp_path: Path, payload: bytes, name: str = "m.pth") -> Path:
    return rezip(base_zip(tmp_path / "base.pth"), tmp_path / name, payload)


# ---------------------------------------------------------------- pickle bombs


def test_huge_memo_index_is_refused_before_allocating(tmp_path: Path) -> None:
    """``LONG_BINPUT 2**25`` in a 40-byte pickle: the C unpickler allocates a 2**26-slot memo (512 MiB)."""
    path = _pickle_zip(tmp_path, b"\x80\x02}r" + (1 << 25).to_bytes(4, "little") + b".")
    tracemalloc.start()
    try:
        with pytest.raises(InvalidFile, match="memo index"):
            read_torch_zip(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20


def test_deep_tuple_key_does_not_crash_the_interpreter(tmp_path: Path) -> None:
    """A 1 MB pickle: a dict keyed by a 10**6-deep tuple. Hashing it recursed in C and segfaulted."""
    path = _pickle_zip(tmp_path, b"\x80\x02}" + b")" + b"\x85" * 1_000_000 + b"K\x01s.")
    proc = _inspect_subprocess(path)
    assert proc.returncode == 4, (proc.returncode, proc.stderr[-300:])
    assert "nested more than" in proc.stderr and _one_error_line(proc.stderr)


def test_deep_list_nesting_is_refused(tmp_path: Path) -> None:
    payload = b"\x80\x02" + b"]" * 200_000 + b"a" * 199_999 + b"."
    with pytest.raises(InvalidFile, match="nested more than"):
        read_torch_zip(_pickle_zip(tmp_path, payload))


def test_mark_with_millions_of_items(tmp_path: Path) -> None:
    """``MARK`` + 3 million ``NONE`` + ``TUPLE``: refused by the pre-scan before any object is built."""
    path = _pickle_zip(tmp_path, b"\x80\x02(" + b"N" * 3_000_000 + b"t.")
    t0 = time.perf_counter()
    with pytest.raises(InvalidFile, match="items"):
        read_torch_zip(path)
    assert time.perf_counter() - t0 < 5


@pytest.mark.parametrize(
    "payload, opcode",
    [
        (b"\x80\x02}p99999999999\n.", "PUT"),
        (b"\x80\x02\x8b\x00\x00\x00\x01" + b"\x01" * 16 + b".", "LONG4"),
        (b"\x80\x02I1\n.", "INT"),
        (b"\x80\x05\x96\x00\x00\x00\x00\x00\x00\x00\x10.", "BYTEARRAY8"),
        (b"\x80\x02\x8a\x20" + b"\x01" * 32 + b".", "256-bit integer"),
    ],
)
def test_opcodes_outside_torch_save_are_refused(tmp_path: Path, payload: bytes, opcode: str) -> None:
    with pytest.raises(InvalidFile, match=opcode):
        read_torch_zip(_pickle_zip(tmp_path, payload))


def test_stored_pickle_above_the_cap(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("ckpt_tool.io.torchzip.MAX_PICKLE_BYTES", 1000)
    path = _pickle_zip(tmp_path, pickle.dumps({"x": "y" * 2000}, protocol=2))
    with pytest.raises(InvalidFile, match=r"data\.pkl is \d+ bytes \(limit 1000\)"):
        read_torch_zip(path)


def test_zip_bomb_data_pkl_is_not_inflated(tmp_path: Path, cli) -> None:
    """A 260 KB archive whose deflated data.pkl inflates to 256 MiB: refused without inflating it."""
    path = tmp_path / "bomb.pth"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as zf:
        with zf.open("archive/data.pkl", "w", force_zip64=True) as fh:
            chunk = b"\x00" * (1 << 20)
            for _ in range(256):
                fh.write(chunk)
        zf.writestr("archive/version", "3\n")
    assert path.stat().st_size < 2 << 20
    tracemalloc.start()
    try:
        with pytest.raises(Unsupported, match="compressed"):
            read_torch_zip(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 32 << 20
    res = cli("inspect", path)
    assert res.code == 5 and _one_error_line(res.stderr), res


def test_zip_entry_count_cap(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("ckpt_tool.io.torchzip.MAX_ZIP_MEMBERS", 5)
    path = tmp_path / "m.pth"
    torch.save({f"t{i}": torch.zeros(1) for i in range(10)}, path)
    with pytest.raises(InvalidFile, match="records \\(limit 5\\)"):
        read_torch_zip(path)


def test_real_pickles_pass_the_scan_quickly(tmp_path: Path) -> None:
    """A 6,000-tensor state dict with Adam state (2 MB pickle) goes through in well under a second."""
    sd = {f"transformer.h.{i // 9}.mlp.w{i % 9}.weight": torch.zeros(1) for i in range(6000)}
    opt = {"state": {i: {"step": torch.zeros(()), "exp_avg": torch.zeros(1), "exp_avg_sq": torch.zeros(1)}
                     for i in range(6000)}, "param_groups": [{"lr": 1e-4, "params": list(range(6000))}]}
    path = tmp_path / "big.pth"
    torch.save({"model": sd, "optimizer": opt}, path)
    t0 = time.perf_counter()
    tz = read_torch_zip(path)
    assert len(tz.weights) == 6000 and tz.other_tensors == 18000
    assert time.perf_counter() - t0 < 10  # ~0.5 s here; generous for loaded CI machines


# ---------------------------------------------------------------- views larger than their storage


def test_stride_zero_view_is_refused(tmp_path: Path, cli) -> None:
    """torch.save of ``zeros(1).expand(60000, 60000)``: 4 bytes on disk, 14.4 GB once a consumer copies it."""
    path = tmp_path / "expanded.pth"
    torch.save({"w": torch.zeros(1).expand(60000, 60000)}, path)
    res = cli("inspect", path)
    assert res.code == 4 and "view of 14400000000 bytes" in res.stderr and _one_error_line(res.stderr), res
    other = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(2, 2)}, other)
    res = cli("diff", other, path)
    assert res.code == 4 and _one_error_line(res.stderr), res


def test_small_expanded_views_still_read(tmp_path: Path) -> None:
    """HF's ``position_ids`` (an expanded arange) and small broadcasts are fine."""
    path = tmp_path / "pos.pth"
    sd = {"position_ids": torch.arange(512).expand(1, -1), "b": torch.ones(1).expand(1000)}
    torch.save(sd, path)
    weights = read_torch_zip(path).weights
    assert weights["position_ids"].stride == sd["position_ids"].stride()
    assert weights["b"].shape == (1000,) and weights["b"].stride == (0,)


def test_diff_streams_non_contiguous_tensors(tmp_path: Path, monkeypatch) -> None:
    """A transposed tensor is compared in bounded chunks, with the same answer."""
    import ckpt_tool.ops.diff as diff

    monkeypatch.setattr(diff, "CHUNK_ELEMS", 64)
    base = torch.randn(40, 30)
    a, b = tmp_path / "a.pth", tmp_path / "b.pth"
    torch.save({"w": base.t()}, a)
    changed = base.clone()
    changed[7, 3] += 0.5
    torch.save({"w": changed.t().contiguous().to(torch.float64)}, b)
    result = diff.compare(a, b)
    assert abs(result.entries[0].max_abs_diff - 0.5) < 1e-6
    torch.save({"w": base.t().contiguous()}, b)
    assert diff.compare(a, b).entries[0].status == "bit-equal"


# ---------------------------------------------------------------- LitGPT YAML and configs


def _lit_dir(tmp_path: Path, yaml_text: str) -> Path:
    d = tmp_path / "lit"
    d.mkdir()
    torch.save({"transformer.wte.weight": torch.zeros(8, 4), "transformer.h.0.attn.qkv.weight": torch.zeros(12, 4),
                "lm_head.weight": torch.zeros(8, 4)}, d / "lit_model.pth")
    (d / "model_config.yaml").write_text(yaml_text)
    return d


def test_yaml_billion_laughs_is_refused(tmp_path: Path, cli) -> None:
    lol = "a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, 9):
        lol += f"{chr(97 + i)}: &{chr(97 + i)} [{', '.join(['*' + chr(96 + i)] * 9)}]\n"
    res = cli("inspect", _lit_dir(tmp_path, lol + "n_layer: 1\n"))
    assert res.code == 4 and "YAML alias" in res.stderr and _one_error_line(res.stderr), res


def test_yaml_node_and_size_caps(tmp_path: Path, monkeypatch, cli) -> None:
    from ckpt_tool_lit import config

    monkeypatch.setattr(config, "MAX_YAML_NODES", 50)
    res = cli("inspect", _lit_dir(tmp_path, "x: [" + ", ".join(["1"] * 60) + "]\n"))
    assert res.code == 4 and "50 YAML nodes" in res.stderr, res
    big = tmp_path / "big.yaml"
    big.write_text("x: " + "a" * (limits.MAX_YAML_BYTES + 1) + "\n")
    with pytest.raises(InvalidFile, match="implausibly large"):
        config.read_yaml_mapping(big)


def test_n_layer_is_bounded_in_convert_config() -> None:
    """``n_layer: 10**7`` with ``sliding_window_layer_placing`` built a 10-million-entry list."""
    from ckpt_tool_lit.migrate import convert_config

    with pytest.raises(ValueError, match="n_layer"):
        convert_config({"n_layer": 10**7, "sliding_window_layer_placing": "all"})
    with pytest.raises(ValueError, match="n_layer"):
        convert_config({"n_layer": True, "sliding_window_layer_placing": "all"})
    new, _ = convert_config({"n_layer": 4, "sliding_window_layer_placing": "interleaved"})
    assert new["sliding_window_indices"] == [1, 0, 1, 0]


# ---------------------------------------------------------------- PEFT user regexes


def _peft_dir(tmp_path: Path, config: dict, module: str) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    save_file({f"base_model.model.{module}.lora_A.weight": torch.zeros(2, 4),
               f"base_model.model.{module}.lora_B.weight": torch.zeros(4, 2)}, d / "adapter_model.safetensors")
    (d / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    return d


@pytest.mark.parametrize("field", ["rank_pattern", "alpha_pattern"])
def test_catastrophic_regex_is_refused_quickly(tmp_path: Path, field: str) -> None:
    """``(a|a)+`` against ``aaa…ab.q``: 2**30 backtracking steps with ``re`` (the old code hung)."""
    d = _peft_dir(tmp_path, {field: {"(a|a)+": 2}, "target_modules": ["q"]}, "a" * 30 + "b.q")
    t0 = time.perf_counter()
    proc = _inspect_subprocess(d, timeout=60)
    assert proc.returncode == 4, proc.stderr[-400:]
    assert "takes more than" in proc.stderr and "ms to match" in proc.stderr and _one_error_line(proc.stderr)
    assert field in proc.stderr
    assert time.perf_counter() - t0 < 30


def test_catastrophic_target_modules_regex() -> None:
    """``target_modules`` as a regex string (full match), as the multi-adapter check evaluates it."""
    proc = _run("""
        from ckpt_tool.errors import InvalidFile
        from ckpt_tool_peft.detect import targets_module
        assert targets_module("model\\..*\\.q_proj", "model.layers.0.q_proj")
        try:
            targets_module("(a|a)+", "a" * 32 + "b")
        except InvalidFile as exc:
            print(exc.message)
    """, timeout=60)
    assert proc.returncode == 0 and "target_modules takes more than" in proc.stdout, (proc.stdout, proc.stderr[-300:])


# ---------------------------------------------------------------- FIFOs, devices


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_model_card_does_not_block(tmp_path: Path) -> None:
    """A named adapter whose parent holds a FIFO named README.md: the model-card probe blocked forever."""
    root = tmp_path / "root"
    root.mkdir()
    os.mkfifo(root / "README.md")
    _peft_dir(root, {"target_modules": ["q"]}, "x.q").rename(root / "other")
    proc = _inspect_subprocess(root / "other", timeout=60)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_readers_refuse_fifos_and_devices(tmp_path: Path) -> None:
    fifo = tmp_path / "model.safetensors"
    os.mkfifo(fifo)
    zero = tmp_path / "config.json"
    zero.symlink_to("/dev/zero")
    code = f"""
        from pathlib import Path
        from ckpt_tool.errors import InvalidFile
        from ckpt_tool.io.container import read_container
        from ckpt_tool.io.safetensors_header import read_safetensors_header
        from ckpt_tool.io.sidefiles import read_json
        from ckpt_tool.io.torchzip import read_torch_zip
        for call in (lambda: read_container({str(fifo)!r}), lambda: read_safetensors_header({str(fifo)!r}),
                     lambda: read_torch_zip({str(fifo)!r}), lambda: read_json(Path({str(zero)!r}), "a config"),
                     lambda: read_container("/dev/zero")):
            try:
                call()
            except InvalidFile as exc:
                print("refused:", exc.message)
            else:
                print("ACCEPTED")
    """
    proc = _run(code, timeout=60, mem_gib=2)
    assert proc.returncode == 0, proc.stderr[-500:]
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and all(line.startswith("refused:") for line in lines), proc.stdout
    assert "FIFO" in lines[0] and "character device" in lines[3]


# ---------------------------------------------------------------- option values, JSON


@pytest.mark.parametrize("text", ["inf", "nan", "1e400", "-5GB", "1e-9", "lots", "", "99999999999999999999TB"])
def test_parse_size_refuses_with_a_usage_error(text: str) -> None:
    from ckpt_tool.io.writers import parse_size

    with pytest.raises(UsageError):
        parse_size(text)


def test_parse_size_zero_means_one_file() -> None:
    from ckpt_tool.io.writers import parse_size

    assert parse_size("0") == 0 and parse_size("0GB") == 0


def test_parse_size_is_exact() -> None:
    from ckpt_tool.io.writers import parse_size

    assert parse_size("1.1GB") == 1_100_000_000 and parse_size("2GiB") == 2 << 30 and parse_size("0.5 KB") == 500


def test_deep_json_config_is_invalid_file(tmp_path: Path) -> None:
    from ckpt_tool.io.sidefiles import read_json

    p = tmp_path / "config.json"
    p.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(InvalidFile):
        read_json(p, "the model config")


def test_container_of_a_directory(tmp_path: Path) -> None:
    with pytest.raises(InvalidFile, match="directory"):
        read_container(tmp_path)


def test_shape_torch_cannot_represent(tmp_path: Path, cli) -> None:
    """``[0, 2**63]`` is a legal safetensors shape (0 elements) but not a torch one: diff said "internal error"."""
    blob = json.dumps({"w": {"dtype": "F32", "shape": [0, 2**63], "data_offsets": [0, 0]}}).encode()
    a = tmp_path / "a.safetensors"
    a.write_bytes(len(blob).to_bytes(8, "little") + blob)
    blob = blob.replace(b"F32", b"F16")
    b = tmp_path / "b.safetensors"
    b.write_bytes(len(blob).to_bytes(8, "little") + blob)
    assert cli("inspect", a).code == 0
    res = cli("diff", a, b)
    assert res.code == 5 and _one_error_line(res.stderr) and "64-bit" in res.stderr, res
