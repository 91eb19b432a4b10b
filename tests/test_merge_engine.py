"""The streaming merge engine, driven by hand-made plans (independent of any plugin)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from cli_helpers import anon_growth

from ckpt_tool.io.container import read_container
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops.merge import run_plan
from ckpt_tool.ops.merge_plan import MergePlan
from ckpt_tool.ops.transform import Sink


def _info(path: Path, kind: str = "model") -> CheckpointInfo:
    cont = read_container(path)
    return CheckpointInfo(str(path), "test", kind, files=[str(path)], tensors=list(cont.tensors.values()))


def _raw(path: Path, name: str) -> bytes:
    t = read_container(path).tensors[name]
    begin, end = t.byte_range
    with open(path, "rb") as fh:
        fh.seek(begin)
        return fh.read(end - begin)


def _base_sd() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    w = torch.randn(16, 8, generator=g).to(torch.bfloat16)
    w[0, :4] = torch.tensor([float("nan"), -0.0, float("inf"), -float("inf")])
    return {
        "embed": w,
        "layer.weight": torch.randn(8, 8, generator=g).to(torch.bfloat16),
        "layer.bias": torch.randn(8, generator=g).to(torch.bfloat16),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
        "head": torch.randn(8, 16, generator=g).to(torch.bfloat16),
    }


def _plan(base_path: Path, sd: dict[str, torch.Tensor], out_dtype: str = "BF16", **kw) -> MergePlan:
    base = _info(base_path)
    adapter = CheckpointInfo("adapter", "test", "adapter")

    def add_one(w, load):
        return w.to(torch.float32, copy=True).add_(1.0).to(torch.bfloat16)

    dtypes = {n: (out_dtype if v.is_floating_point() else "I64") for n, v in sd.items()}
    return MergePlan(base=base, adapter=adapter, changes={"layer.weight": add_one}, out_dtype=dtypes, **kw)


@pytest.mark.parametrize("src_fmt", ["torch", "safetensors"])
@pytest.mark.parametrize("out_fmt", ["lit", "safetensors"])
def test_unchanged_tensors_copied_byte_for_byte(tmp_path, src_fmt, out_fmt):
    from safetensors.torch import load_file, save_file

    sd = _base_sd()
    base_path = tmp_path / ("base.pth" if src_fmt == "torch" else "base.safetensors")
    torch.save(sd, base_path) if src_fmt == "torch" else save_file(sd, base_path)
    plan = _plan(base_path, sd)
    counts, _ = run_plan(plan, Sink("lit" if out_fmt == "lit" else "hf", tmp_path / "out"))
    assert counts["changed"] == 1 and counts["copied"] == 4 and counts["cast"] == 0
    out_file = tmp_path / "out" / ("lit_model.pth" if out_fmt == "lit" else "model.safetensors")
    for name in ("embed", "layer.bias", "steps", "head"):
        assert _raw(out_file, name) == _raw(base_path, name), name  # NaN, -0.0, inf bits intact
    got = torch.load(out_file, weights_only=True) if out_fmt == "lit" else load_file(out_file)
    assert torch.equal(got["layer.weight"], (sd["layer.weight"].float() + 1).to(torch.bfloat16))


def test_convert_rename_drop_and_noncontiguous(tmp_path):
    sd = _base_sd()
    sd["transposed"] = torch.randn(6, 4).t()  # saved as a strided view by torch.save
    base_path = tmp_path / "base.pth"
    torch.save(sd, base_path)
    assert not read_container(base_path).tensors["transposed"].is_contiguous
    plan = _plan(base_path, sd, out_dtype="F32", drop={"head"}, rename={"embed": "tok_embeddings"})
    counts, _ = run_plan(plan, Sink("lit", tmp_path, {"weights_name": "o.pth"}))
    assert counts["dropped"] == 1 and counts["cast"] == 2 and counts["copied"] == 2  # steps + transposed
    got = torch.load(tmp_path / "o.pth", weights_only=True, mmap=True)
    assert list(got) == ["tok_embeddings", "layer.weight", "layer.bias", "steps", "transposed"]
    assert got["tok_embeddings"].dtype == torch.float32
    assert torch.equal(got["tok_embeddings"][1:], sd["embed"][1:].float())
    assert torch.equal(got["transposed"], sd["transposed"])
    assert got["steps"].dtype == torch.int64


def test_failure_mid_merge_leaves_nothing(tmp_path):
    sd = _base_sd()
    base_path = tmp_path / "base.pth"
    torch.save(sd, base_path)
    plan = _plan(base_path, sd)

    def boom(w, load):
        raise KeyboardInterrupt

    plan.changes["head"] = boom
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, Sink("hf", out_dir, {"max_shard_size": 300}))
    with pytest.raises(KeyboardInterrupt):
        run_plan(plan, Sink("lit", out_dir))
    assert list(out_dir.iterdir()) == []


def test_sharded_output_and_loader(tmp_path):
    from safetensors.torch import load_file

    sd = _base_sd()
    base_path = tmp_path / "base.pth"
    torch.save(sd, base_path)
    lora = tmp_path / "lora.pth"
    torch.save({"delta": torch.ones(8, 8)}, lora)
    plan = _plan(base_path, sd)
    plan.adapter_tensors = read_container(lora).tensors
    plan.changes["layer.weight"] = lambda w, load: (w.float() + load("delta")).to(torch.bfloat16)
    run_plan(plan, Sink("hf", tmp_path / "out", {"max_shard_size": 200}))
    index = json.loads((tmp_path / "out" / "model.safetensors.index.json").read_text())
    merged = {}
    for f in sorted(set(index["weight_map"].values())):
        merged.update(load_file(tmp_path / "out" / f))
    assert set(merged) == set(sd)
    assert torch.equal(merged["layer.weight"], (sd["layer.weight"].float() + 1).to(torch.bfloat16))


_MEM_SETUP = """
import torch
from ckpt_tool.io.container import read_container
from ckpt_tool.model import CheckpointInfo
from ckpt_tool.ops.merge import run_plan
from ckpt_tool.ops.transform import Sink
from ckpt_tool.ops.merge_plan import MergePlan

base_path, out = Path(sys.argv[1]), Path(sys.argv[2])
cont = read_container(base_path)
info = CheckpointInfo(str(base_path), "test", "model", files=[str(base_path)], tensors=list(cont.tensors.values()))
changes = {"w0": lambda w, load: w + 1}
plan = MergePlan(base=info, adapter=info, changes=changes, out_dtype={t: "F32" for t in cont.tensors})
"""


def test_peak_memory_is_bounded_by_the_changed_tensor(tmp_path):
    """Not a timing test: a 160 MB model with one 8 MB changed tensor must not be materialised."""
    sd = {f"w{i}": torch.randn(2048, 1024) for i in range(20)}  # 20 x 8 MiB fp32
    base_path = tmp_path / "base.pth"
    torch.save(sd, base_path)
    del sd
    call = 'run_plan(plan, Sink("lit", out.parent, {"weights_name": out.name}))'
    grown = anon_growth(_MEM_SETUP, call, base_path, tmp_path / "o.pth")
    assert grown < 64 * 2**20, f"anonymous memory grew by {grown / 2**20:.0f} MiB for a 160 MiB model"
    got = torch.load(tmp_path / "o.pth", weights_only=True, mmap=True)
    assert len(got) == 20


_SIGINT_SCRIPT = textwrap.dedent(
    """
    import signal, sys, time
    # a shell starts background jobs with SIGINT ignored, and Python keeps an inherited SIG_IGN:
    # Ctrl-C at a terminal is what this test is about, so take the terminal's default back
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from pathlib import Path
    from ckpt_tool.io.container import read_container
    from ckpt_tool.model import CheckpointInfo
    from ckpt_tool.ops.merge import run_plan
    from ckpt_tool.ops.transform import Sink
    from ckpt_tool.ops.merge_plan import MergePlan

    base_path, out = Path(sys.argv[1]), Path(sys.argv[2])
    cont = read_container(base_path)
    info = CheckpointInfo(str(base_path), "test", "model", files=[str(base_path)], tensors=list(cont.tensors.values()))

    done = []

    def slow(w, load):
        print("tensor", flush=True)
        done.append(1)
        # after the third tensor, stall: on a loaded machine the parent may read our lines late, and
        # SIGINT must still land in the middle of the merge rather than after it finished
        time.sleep(0.2 if len(done) < 3 else 600)
        return w + 1

    plan = MergePlan(base=info, adapter=info, changes={n: slow for n in cont.tensors},
                     out_dtype={t: "F32" for t in cont.tensors})
    layout = "lit" if sys.argv[3] == "lit" else "hf"
    run_plan(plan, Sink(layout, out.parent if layout == "lit" else out, {"weights_name": out.name} if layout == "lit" else {}))
    """
)


@pytest.mark.parametrize("fmt", ["lit", "safetensors"])
def test_real_ctrl_c_leaves_no_file(tmp_path, fmt):
    """SIGINT in the middle of a merge (write-behind thread busy): no output, no temp file."""
    import signal
    import time

    torch.save({f"w{i}": torch.randn(256, 256) for i in range(20)}, tmp_path / "base.pth")
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    target = out_dir / "lit_model.pth" if fmt == "lit" else out_dir
    proc = subprocess.Popen([sys.executable, "-c", _SIGINT_SCRIPT, str(tmp_path / "base.pth"), str(target), fmt],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen = 0
    assert proc.stdout is not None
    while seen < 3:  # a few tensors computed and handed to the writer
        assert proc.stdout.readline() == "tensor\n"
        seen += 1
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    time.sleep(0.1)
    assert list(out_dir.iterdir()) == []


_FRAGMENTS = textwrap.dedent(
    """
    import sys, torch
    from ckpt_tool.io.malloc import release_large_blocks
    def anon():
        with open("/proc/self/status") as fh:
            return next(int(l.split()[1]) for l in fh if l.startswith("RssAnon:")) * 1024
    if sys.argv[1] == "1":
        assert release_large_blocks()
    t = torch.ones(8 * 2**20); del t   # a freed 32 MiB block raises glibc's mmap threshold
    before = anon()
    keep = []
    for i in range(20):
        big = torch.ones(3 * 2**20)    # 12 MiB, like one merged weight
        keep.append(torch.ones(1000))  # a small long-lived allocation lands after it
        del big
    print(anon() - before)
    """
)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt")
def test_freed_tensors_do_not_stay_resident() -> None:
    """Streaming frees one weight per step; with the fixed threshold none of them stays as a heap fragment."""

    def retained(fix: bool) -> int:
        out = subprocess.run([sys.executable, "-c", _FRAGMENTS, "1" if fix else "0"], capture_output=True, text=True, check=True)
        return int(out.stdout)

    # the problem is real on this C library: glibc keeps the freed blocks in most runs (heap layout varies
    # between processes, and about one run in three happens to trim them), so look at up to five runs ...
    assert any(retained(fix=False) > 100 * 2**20 for _ in range(5))
    # ... and release_large_blocks() removes it, every time
    assert all(retained(fix=True) < 8 * 2**20 for _ in range(2))
