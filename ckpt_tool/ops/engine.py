"""The streaming transform engine: executes a ``TransformPlan`` one step at a time.

Every tensor-rewriting command (merge, convert, split, rename) builds a plan
(``ops/transform.py``); this module owns all I/O:

* inputs are read through private memory maps (``TensorReader``): reading a
  tensor costs page cache, not anonymous memory, and nothing can write back;
* a step without compute whose output keeps the stored dtype is copied file
  to file (``copy_file_range``): its bytes never pass through Python; a segment
  step (a row permutation: qkv split or fused) is the same, range by range, so a
  conversion that keeps dtypes never imports torch;
* computed tensors go to a bounded write-behind thread, so writing (page-cache
  copies, CRC-32) overlaps the next step's compute while memory stays at about
  two steps' tensors;
* every output file is a temp file in its destination directory until the last
  tensor is written; then the weights files are published (fsync, rename), then
  the layout's index, then the side files (configs, tokenizer). A failure
  anywhere — bad input, a full disk, Ctrl-C — publishes nothing. The exception is
  ``write_into``: one file into a descriptor the caller owns and publishes itself
  (``migrate --upgrade-attn``, whose journal records the temp file's sha256).

Peak memory is the interpreter plus a few times the largest step's tensors,
whatever the model size.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import os
import shutil
import stat
import sys
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from ckpt_tool.errors import Refused, Unsupported, from_os_error
from ckpt_tool.io import provenance
from ckpt_tool.io.atomic import atomic_write, clean_stale_temps
from ckpt_tool.io.malloc import release_large_blocks
from ckpt_tool.io.tensors import TensorReader, torch_dtype
from ckpt_tool.model import DTYPE_NAMES, TensorInfo
from ckpt_tool.ops.layouts import FilePlan, LayoutFiles, get_layout
from ckpt_tool.ops.transform import Out, SideFile, Step, TransformPlan, check_unique, run_step

if TYPE_CHECKING:
    import torch

#: Computed tensors waiting for the writer thread, at most (bytes); at least one tensor always fits.
WRITE_BEHIND_BYTES = 64 * 2**20


# --- what a plan will write ---------------------------------------------------------------------------


@dataclass
class Target:
    """The files a plan writes, resolved through each sink's layout (no byte written yet)."""

    sinks: dict[str, LayoutFiles]
    place: dict[tuple[str, str], int]  # (sink, tensor name) -> index into ``files``
    files: list[FilePlan]
    file_sinks: list[str]  # the sink each file belongs to
    outs: dict[tuple[str, str], Out]
    #: the provenance file of each output directory of a directory layout (its data is filled by ``execute``)
    prov: dict[Path, SideFile] = field(default_factory=dict)

    def weights(self) -> list[Path]:
        return [f.path for f in self.files]

    def side(self, plan: TransformPlan) -> list[tuple[Path, SideFile]]:
        """Index files and side files with their destination paths, in publishing order."""
        out: list[tuple[Path, SideFile]] = []
        for name, lf in self.sinks.items():
            root = _sink_dir(plan, name)
            out.extend((root / s.name, s) for s in lf.index)
        for name, sink in plan.sinks.items():
            root = _sink_dir(plan, name)
            out.extend(
                (root / s.name, s)
                for s in sink.side_files
                if not _same_file(s.src, root / s.name) and not (s.name == provenance.FILE and root in self.prov)
            )
        out.extend((d / provenance.FILE, s) for d, s in self.prov.items())  # last: it describes everything above
        return out

    def stale(self) -> list[Path]:
        return [p for lf in self.sinks.values() for p in lf.stale]

    def all_paths(self, plan: TransformPlan) -> list[Path]:
        return self.weights() + [p for p, _ in self.side(plan)]


def _sink_dir(plan: TransformPlan, name: str) -> Path:
    sink = plan.sinks[name]
    layout = get_layout(sink.layout)
    return sink.path if layout.target == "dir" else sink.path.parent


def _same_file(src: Path | None, dst: Path) -> bool:
    if src is None:
        return False
    try:
        return os.path.samefile(src, dst)
    except OSError:
        return False


def resolve(plan: TransformPlan) -> Target:
    """Check the plan as a whole and place every output tensor in a file (layouts decide the files)."""
    outs = plan.outs()
    check_unique(outs)
    unknown = sorted({o.sink for o in outs} - set(plan.sinks))
    if unknown:
        raise Unsupported(f"plan writes to undeclared sink(s) {', '.join(unknown)} (plugin bug)")
    known = {(role, t.name) for role, info in plan.inputs.items() for t in info.tensors}
    missing = [f"{r.input}:{r.name}" for s in plan.steps for r in s.reads if (r.input, r.name) not in known]
    if missing:
        raise Refused(
            f"the plan reads {len(missing)} tensor(s) its inputs do not hold (e.g. {missing[0]!r})",
            "the input is incomplete or not what its name says; check it with 'ckpt-tool inspect'",
        )
    sinks: dict[str, LayoutFiles] = {}
    files: list[FilePlan] = []
    file_sinks: list[str] = []
    place: dict[tuple[str, str], int] = {}
    by_sink: dict[str, list[Out]] = {name: [] for name in plan.sinks}
    for o in outs:
        by_sink[o.sink].append(o)
    for name, sink in plan.sinks.items():
        lf = get_layout(sink.layout).files(sink, by_sink[name])
        sinks[name] = lf
        for fp in lf.weights:
            for tname in fp.names:
                if (name, tname) in place:
                    raise Unsupported(f"layout {sink.layout!r} places {tname!r} twice (plugin bug)")
                place[(name, tname)] = len(files)
            files.append(fp)
            file_sinks.append(name)
        unplaced = [o.name for o in by_sink[name] if (name, o.name) not in place]
        if unplaced:
            raise Unsupported(f"layout {sink.layout!r} gives no file to {unplaced[0]!r} (plugin bug)")
    prov = {sink.path: SideFile(provenance.FILE) for sink in plan.sinks.values() if get_layout(sink.layout).target == "dir"}
    return Target(sinks, place, files, file_sinks, {(o.sink, o.name): o for o in outs}, prov)


def input_files(plan: TransformPlan) -> set[str]:
    """Real paths of every file the plan reads (weights, and the side files it copies)."""
    paths = {os.path.realpath(f) for info in plan.inputs.values() for f in info.files}
    paths |= {os.path.realpath(t.file) for info in plan.inputs.values() for t in info.tensors}
    return paths


def check_outputs(
    plan: TransformPlan, target: Target, force: bool, replace: Collection[str | os.PathLike[str]] = ()
) -> list[Path]:
    """Refuse outputs that would replace an input, land on a directory, or overwrite without ``force``.

    ``replace`` (``rename --in-place``): the exact files the caller means to replace
    (input weights files and their index). Outputs at those paths replace them by
    rename once every tensor is written; each must be a regular file, not a symlink.
    That is safe while the engine still maps the input: the input is read through
    private maps and open descriptors of its inode, and a rename over a name never
    touches the old inode's bytes (it lives on until the last map and descriptor are
    gone); only writing *into* the mapped file would be unsafe.

    Returns the stale files (removed after publishing, only with ``force``).
    """
    inputs = input_files(plan)
    paths = target.all_paths(plan)
    stale = target.stale()
    replaced = {os.path.abspath(p) for p in replace}
    for r in replaced:
        if os.path.islink(r) or not os.path.isfile(r):
            raise Refused(
                f"{r} is a symlink or not a regular file: replacing it in place would replace the link, not its target",
                "write the result elsewhere with --out",
            )
    clash = [str(p) for p in paths + stale if os.path.realpath(p) in inputs and os.path.abspath(p) not in replaced]
    if clash:
        raise Refused(
            f"the output would replace an input file ({', '.join(clash[:3])})",
            "write somewhere else with --out DIR",
        )
    not_files = [str(p) for p in paths if _not_a_file(p)]
    if not_files:
        raise Refused(
            f"output path {not_files[0]} exists and is not a regular file (a directory?)",
            "remove it or choose another --out; --force only replaces files",
        )
    mine = {str(d / provenance.FILE) for d in target.prov}
    existing = [
        str(p)
        for p in paths
        if os.path.lexists(p) and (str(p) not in mine or _foreign(p)) and os.path.abspath(p) not in replaced
    ]
    existing += [str(p) for p in stale]
    if existing and not force:
        raise Refused(
            f"output already exists: {', '.join(existing[:4])}" + (" …" if len(existing) > 4 else ""),
            "pass --force to overwrite, or choose another --out",
        )
    return stale


def _foreign(path: Path) -> bool:
    """An existing provenance file that is not ours to update (unreadable as one): only ``--force`` replaces it.
    A readable one is updated in place: the entries of the directory's other checkpoints are kept."""
    return provenance.entries_to_keep(path.parent, set()) is None


def fill_provenance(plan: TransformPlan, target: Target, label: str) -> dict[str, Any]:
    """Build the plan's provenance record (fingerprints the inputs) and put it where the layouts keep it:
    every safetensors file's ``__metadata__`` and the provenance file of each output directory."""
    spec = dict(plan.provenance or {})
    operation = str(spec.pop("operation", "") or label)
    try:
        record = provenance.build(operation, plan.inputs, spec)
    except OSError as exc:
        raise from_os_error(exc, "reading an input to record its provenance") from None
    text = provenance.header_text(record)
    for fp in target.files:
        if fp.container == "safetensors":
            fp.metadata = {**(fp.metadata or {}), provenance.KEY: text}
    for d, side in target.prov.items():
        outputs = []
        for fp, sink in zip(target.files, target.file_sinks):
            if fp.path.parent == d:
                outs = [target.outs[(sink, n)] for n in fp.names]
                outputs.append(provenance.output_entry(fp.path.name, ((o.name, o.dtype, o.shape, o.nbytes) for o in outs)))
        keep = provenance.entries_to_keep(d, {o["file"] for o in outputs}) or []
        side.data = provenance.file_bytes(record, outputs, keep)
    return record


def _not_a_file(path: Path) -> bool:
    """An existing output path that a rename cannot replace (a directory, a socket, a FIFO...)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return not stat.S_ISREG(st.st_mode)


# --- progress and write-behind ---------------------------------------------------------------------------


def _terminal_console() -> Any:
    """stderr as a rich Console when it is a terminal; None otherwise (no bar in logs, pipes or --json captures)."""
    if not sys.stderr.isatty():
        return None
    from rich.console import Console

    return Console(stderr=True)


class Progress:
    """The one progress bar (merge, convert, split, rename, diff): rich, on stderr, only on a terminal.

    Bytes are shown with ``render.human_bytes`` (binary units: KiB, MiB, GiB), as every summary shows them.
    """

    def __init__(self, total: int, label: str, enabled: bool) -> None:
        self.bar = None
        console = _terminal_console() if enabled and total else None
        if console is not None:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            from ckpt_tool.render import human_bytes

            class _Bytes(TextColumn):
                def render(self, task: Any) -> Any:
                    from rich.text import Text

                    return Text(f"{human_bytes(int(task.completed))} / {human_bytes(int(task.total or 0))}")

            self.bar = Progress(
                TextColumn(label), BarColumn(), _Bytes(""), TimeRemainingColumn(),
                console=console, transient=True,
            )
            self.task = self.bar.add_task(label, total=total)
            self.bar.start()

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.task, n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class WriteBehind:
    """Performs the writes, in order, on one background thread while the next step is computed.

    Writing and computing overlap (torch and zlib release the GIL for both).
    Bytes of computed tensors waiting to be written are bounded by ``limit``, so
    memory stays at about two steps, not a queue of them. An error on the writer
    thread is re-raised in the caller at the next ``submit`` or at ``finish``.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.queue: collections.deque[tuple[int, Callable[[], None]]] = collections.deque()
        self.cv = threading.Condition()
        self.inflight = 0
        self.error: BaseException | None = None
        self.closed = False
        self.thread = threading.Thread(target=self._run, name="ckpt-tool-writer", daemon=True)
        self.thread.start()

    def submit(self, nbytes: int, fn: Callable[[], None]) -> None:
        with self.cv:
            while self.error is None and self.inflight and self.inflight + nbytes > self.limit:
                self.cv.wait()
            if self.error is not None:
                raise self.error
            self.queue.append((nbytes, fn))
            self.inflight += nbytes
            self.cv.notify_all()

    def _run(self) -> None:
        while True:
            with self.cv:
                while not self.queue and not self.closed:
                    self.cv.wait()
                if not self.queue:
                    return
                nbytes, fn = self.queue[0]
                skip = self.error is not None
            try:
                if not skip:
                    fn()
            except BaseException as exc:  # noqa: BLE001 - handed to the caller
                with self.cv:
                    self.error = exc
            with self.cv:
                self.queue.popleft()
                self.inflight -= nbytes
                self.cv.notify_all()

    def finish(self) -> None:
        """Wait until everything is written; re-raise a writer error."""
        with self.cv:
            self.closed = True
            self.cv.notify_all()
        self.thread.join()
        if self.error is not None:
            raise self.error

    def abort(self) -> None:
        """Stop after the write in progress (the caller is unwinding an exception)."""
        with self.cv:
            self.error = self.error or RuntimeError("aborted")
            self.closed = True
            self.cv.notify_all()
        self.thread.join()


# --- execution --------------------------------------------------------------------------------------------


@dataclass
class Report:
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    removed_temps: list[str] = field(default_factory=list)  # stale temp files of killed earlier runs

    def to_json(self) -> dict[str, Any]:
        return {"files": self.files, **self.counts}


def _open_writer(stack: contextlib.ExitStack, fp: FilePlan, sink: str, outs: dict[tuple[str, str], Out]) -> Any:
    from ckpt_tool.io.writers import TensorSpec, open_safetensors, open_torch

    specs = [TensorSpec(n, outs[(sink, n)].dtype, outs[(sink, n)].shape) for n in fp.names]
    if fp.container == "safetensors":
        return stack.enter_context(open_safetensors(fp.path, specs, fp.metadata))
    if fp.container == "torch":
        return stack.enter_context(open_torch(fp.path, specs, wrapper=fp.wrapper, extras=fp.extras))
    raise Unsupported(f"unknown container {fp.container!r} for {fp.path} (plugin bug)")


def _write_side(stack: contextlib.ExitStack, dst: Path, side: SideFile) -> None:
    fh = stack.enter_context(atomic_write(dst))
    if side.data is not None:
        fh.write(side.data)
    elif side.src is not None:
        from ckpt_tool.io.regular import open_regular
        from ckpt_tool.limits import MAX_SIDE_FILE_BYTES

        with open_regular(side.src) as fin:  # never a FIFO or /dev/zero where a tokenizer file should be
            if os.fstat(fin.fileno()).st_size > MAX_SIDE_FILE_BYTES:
                raise Refused(
                    f"{side.src}: {os.fstat(fin.fileno()).st_size} bytes is too large for a side file "
                    f"(limit {MAX_SIDE_FILE_BYTES})",
                    "remove it from the source directory or copy it by hand",
                )
            shutil.copyfileobj(fin, fh, 1 << 20)


def _fresh_counts(plan: TransformPlan, target: Target) -> dict[str, int]:
    """The report's counters before the first step: what the plan writes, and how it was written (filled by ``_run``)."""
    total = sum(o.nbytes for o in target.outs.values())
    return {"steps": len(plan.steps), "tensors": len(target.outs), "bytes": total, "copied": 0, "cast": 0, "computed": 0}


def execute(
    plan: TransformPlan,
    *,
    force: bool = False,
    dry_run: bool = False,
    progress: bool = False,
    label: str = "writing",
    target: Target | None = None,
    replace: Collection[str | os.PathLike[str]] = (),
) -> Report:
    """Run ``plan``; nothing is visible at the output paths until every tensor was written and fsynced.

    ``replace``: files that outputs of the same path may replace (``rename --in-place``; see ``check_outputs``).
    """
    target = target or resolve(plan)
    stale = check_outputs(plan, target, force, replace)
    side = target.side(plan)
    report = Report(files=[str(p) for p in target.weights()] + [str(p) for p, _ in side])
    counts = _fresh_counts(plan, target)
    report.counts = counts
    if dry_run:
        return report

    cleaned = [p for d in sorted({p.parent for p in target.all_paths(plan)}) if d.is_dir() for p in clean_stale_temps(d)]
    report.removed_temps = [str(p) for p in cleaned]
    fill_provenance(plan, target, label)
    bar = Progress(counts["bytes"], label, progress)
    try:
        with contextlib.ExitStack() as stack:
            # Entered in reverse publishing order: the stack publishes LIFO, so weights first, then
            # the index, then side files; an exception anywhere discards every temp file.
            for dst, s in reversed(side):
                _write_side(stack, dst, s)
            writers = [_open_writer(stack, fp, sk, target.outs) for fp, sk in zip(target.files, target.file_sinks)]
            _stream(plan, target, writers, counts, bar)
    finally:
        bar.close()
    for f in stale:  # only reached with --force: files a loader could pick instead of the new output
        f.unlink(missing_ok=True)
    if stale:
        report.counts["removed_stale"] = len(stale)
        report.files += [f"removed {p}" for p in stale]
    return report


def _stream(plan: TransformPlan, target: Target, writers: Sequence[Any], counts: dict[str, int], bar: Progress) -> None:
    """Run every step of ``plan`` into the open ``writers`` (the engine's one writer loop).

    Inputs are read through private maps, unchanged tensors copied file to file, computed ones handed to
    the bounded write-behind thread; an exception stops the writer thread before it propagates.
    """
    release_large_blocks()
    index = {(role, t.name): t for role, info in plan.inputs.items() for t in info.tensors}
    reader = TensorReader()
    fds: dict[str, int] = {}

    def load(role: str, name: str) -> torch.Tensor:
        info = index.get((role, name))
        if info is None:
            raise Refused(f"the plan needs {role} tensor {name!r}, which is not in that input")
        return reader.tensor(info)

    def fd_for(path: str) -> int:
        if path not in fds:
            fds[path] = os.open(path, os.O_RDONLY)
        return fds[path]

    largest = max((max((o.nbytes for o in s.outs), default=0) for s in plan.steps), default=0)
    behind = WriteBehind(limit=max(1, min(largest, WRITE_BEHIND_BYTES)))
    try:
        try:
            for step in plan.steps:
                _run(step, target, writers, behind, reader, index, load, fd_for, counts)
                bar.advance(sum(o.nbytes for o in step.outs))
            behind.finish()
        except BaseException:
            behind.abort()
            raise
    finally:
        for fd in fds.values():
            os.close(fd)
        reader.close()


def write_into(plan: TransformPlan, fh: IO[bytes]) -> Report:
    """Run a plan of exactly one torch weights file into ``fh``, an open file the caller owns and publishes.

    For callers that manage the output's whole life themselves: ``migrate``'s converters write into the
    temp file migrate created, whose sha256 it journals, fsyncs and ``link()``s into place. So there is
    no temp file, rename, output check, provenance record or side file of the engine's own here, and
    nothing is fsynced; the steps run exactly as in ``execute``. A torch zip gets the top folder
    ``torch.save`` gives an open file object ("archive"): the path the caller hands out (a
    ``/proc/self/fd`` link, a temp name) is not the name the file is published under.

    Raises:
        Unsupported: the plan writes another container, more than one file, or an index or side file
            (a plugin bug).
    """
    from ckpt_tool.io.writers import TensorSpec, TorchZipWriter

    target = resolve(plan)
    if len(target.files) != 1 or target.files[0].container != "torch" or target.side(plan):
        raise Unsupported("write_into writes one torch file and nothing beside it (plugin bug)")
    fp, sink = target.files[0], target.file_sinks[0]
    specs = [TensorSpec(n, target.outs[(sink, n)].dtype, target.outs[(sink, n)].shape) for n in fp.names]
    writer = TorchZipWriter(fh, specs, wrapper=fp.wrapper, extras=fp.extras)
    counts = _fresh_counts(plan, target)
    _stream(plan, target, [writer], counts, Progress(0, "", False))
    writer.check_complete()
    return Report(files=[str(fp.path)], counts=counts)


def _run(
    step: Step,
    target: Target,
    writers: Sequence[Any],
    behind: WriteBehind,
    reader: TensorReader,
    index: dict[tuple[str, str], TensorInfo],
    load: Callable[[str, str], torch.Tensor],
    fd_for: Callable[[str], int],
    counts: dict[str, int],
) -> None:
    if not step.outs:
        return  # a step that only declares tensors as consumed (e.g. rotary buffers a converter drops)
    reads = [index[(r.input, r.name)] for r in step.reads]
    if step.segments is not None:
        if _check_segments(step, reads):  # the dtype is kept: byte ranges file to file, no torch
            for check in step.same:
                if not _same_bytes(reader, reads[check.a], reads[check.b]):
                    raise check.refuse()
            for out, segs in zip(step.outs, step.segments):
                pieces = []
                for seg in segs:
                    info = reads[seg.read]
                    begin, size = info.byte_range[0] + seg.start * info.itemsize, seg.count * info.itemsize
                    view = reader.buffer(info)[seg.start * info.itemsize :][:size]
                    pieces.append((fd_for(info.file), begin, size, view))
                writer = writers[target.place[(out.sink, out.name)]]
                behind.submit(0, functools.partial(writer.copy_ranges, out.name, pieces))
            counts["copied"] += len(step.outs)
            return
        counts["cast" if any(o.dtype != i.dtype for o in step.outs for i in reads) else "copied"] += len(step.outs)
    elif step.compute is None:
        (info,), (out,) = reads, step.outs
        writer = writers[target.place[(out.sink, out.name)]]
        if out.dtype == info.dtype and info.is_contiguous and tuple(info.shape) == out.shape:
            begin, end = info.byte_range
            view = reader.buffer(info)  # stdlib mmap: a copy-only plan never imports torch
            # file-to-file: no anonymous memory, so it does not count against the write-behind bound
            behind.submit(0, functools.partial(writer.copy, out.name, fd_for(info.file), begin, end - begin, view))
            counts["copied"] += 1
            return
        counts["cast" if out.dtype != info.dtype else "copied"] += 1  # a strided view re-laid out is still a copy
    else:
        counts["computed"] += 1
    tensors = [reader.tensor(i) for i in reads]
    for out, t in zip(step.outs, run_step(step, tensors, load)):
        writer = writers[target.place[(out.sink, out.name)]]
        behind.submit(out.nbytes, functools.partial(writer.write, out.name, t))
    del tensors


def tensor_counts(report: Report) -> dict[str, int]:
    """The ``tensors`` object of every write command's JSON: written, and how (copied, cast, computed), and bytes."""
    c = report.counts
    return {"written": c["tensors"], "copied": c["copied"], "cast": c["cast"], "computed": c["computed"], "bytes": c["bytes"]}


def _check_segments(step: Step, reads: Sequence[TensorInfo]) -> bool:
    """Whether a segment step can be copied byte for byte (contiguous reads, every dtype kept); refuses
    ranges outside their read (a plugin bug, not user input: plans are built from checked shapes)."""
    for segs in step.segments or ():
        for seg in segs:
            if seg.start + seg.count > reads[seg.read].numel:
                raise Unsupported(f"step {step.why!r} reads past the end of {reads[seg.read].name!r} (plugin bug)")
    return all(i.is_contiguous for i in reads) and all(o.dtype == i.dtype for o in step.outs for i in reads)


def _same_bytes(reader: TensorReader, a: TensorInfo, b: TensorInfo) -> bool:
    """``same_bits`` of two contiguous tensors through their memory maps, 4 MiB at a time (no torch)."""
    if a.dtype != b.dtype or tuple(a.shape) != tuple(b.shape):
        return False
    va, vb = reader.buffer(a), reader.buffer(b)
    step = 1 << 22
    return all(va[i : i + step].tobytes() == vb[i : i + step].tobytes() for i in range(0, len(va), step))


def dtype_summary(outs: Sequence[Out]) -> dict[str, int]:
    """Tensors per output dtype, by torch's names (for summaries)."""
    out: dict[str, int] = {}
    for o in outs:
        key = DTYPE_NAMES.get(o.dtype, o.dtype)
        out[key] = out.get(key, 0) + 1
    return out


def cast_to(dtype: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """A cast to a safetensors dtype name (for plan builders that wrap a peer's math)."""
    want = torch_dtype(dtype)

    def cast(t: torch.Tensor) -> torch.Tensor:
        return t if t.dtype == want else t.to(want)

    return cast
