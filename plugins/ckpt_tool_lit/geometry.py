"""LitGPT's attention geometry, coded once: head counts, the fused qkv row layout and its permutations.

Every place that needs q/k/v sizes (detection, merge, migrate's legacy
upgrade, conversion to and from Hugging Face) asks ``Geometry``; a config with
unusable values (``n_query_groups: "abc"``, a group count that does not divide
the heads) is refused here with one message instead of being read three ways.

Facts (formats.md §2.3, §2.4):

* ``hs = head_size`` or ``n_embd // n_head``; ``q = n_head·hs``, ``k = v = n_query_groups·hs``.
* today's ``attn.qkv`` rows are grouped ``[Q | K | V]``;
* the legacy ``attn.attn`` (LitGPT < 0.5.5) and GPT-NeoX's ``query_key_value``
  interleave per query group: ``[q·(n_head/n_query_groups), k, v]`` for each group.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ckpt_tool.errors import InvalidFile
from ckpt_tool.limits import MAX_HEAD_SIZE, MAX_HEADS

if TYPE_CHECKING:
    import torch


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


@dataclass(frozen=True)
class Geometry:
    n_head: int
    n_query_groups: int
    head_size: int

    # -- construction ------------------------------------------------------------------------------

    @classmethod
    def from_config(cls, config: Mapping[str, Any] | None, source: str = "the model config") -> Geometry:
        """Read and check the head geometry of a LitGPT model config.

        Raises:
            InvalidFile: a field is missing, not a positive integer, or inconsistent, naming it and ``source``.
        """
        if not config:
            raise InvalidFile(f"{source}: no model config (n_head, n_embd) to size the attention", "restore model_config.yaml")

        def field(name: str, required: bool) -> int | None:
            raw = config.get(name)
            if raw is None:
                if required:
                    raise InvalidFile(f"{source}: {name} is missing", "restore model_config.yaml from the checkpoint")
                return None
            value = _int(raw)
            if value is None or value <= 0:
                raise InvalidFile(f"{source}: {name} = {raw!r:.40} is not a positive integer", "fix model_config.yaml")
            return value

        n_head = field("n_head", True)
        assert n_head is not None
        groups = field("n_query_groups", False) or n_head
        head_size = field("head_size", False)
        if head_size is None:
            n_embd = field("n_embd", True)
            assert n_embd is not None
            head_size = n_embd // n_head
            if head_size == 0:
                raise InvalidFile(f"{source}: n_embd {n_embd} is smaller than n_head {n_head}")
        if n_head > MAX_HEADS or groups > MAX_HEADS or head_size > MAX_HEAD_SIZE:
            raise InvalidFile(f"{source}: implausible attention geometry ({n_head} heads, {groups} groups, head size {head_size})")
        if groups > n_head or n_head % groups:
            raise InvalidFile(
                f"{source}: n_query_groups {groups} does not divide n_head {n_head}", "fix model_config.yaml"
            )
        return cls(n_head, groups, head_size)

    @classmethod
    def maybe(cls, config: Mapping[str, Any] | None) -> Geometry | None:
        """``from_config`` for callers that only describe (inspect): None instead of an error."""
        try:
            return cls.from_config(config)
        except InvalidFile:
            return None

    @classmethod
    def problem(cls, config: Mapping[str, Any] | None, source: str = "model_config.yaml") -> str | None:
        """Why ``config`` gives no geometry (for callers that collect problems), or None when it does."""
        try:
            cls.from_config(config, source)
        except InvalidFile as exc:
            return exc.message
        return None

    # -- sizes -------------------------------------------------------------------------------------

    @property
    def q_per_kv(self) -> int:
        return self.n_head // self.n_query_groups

    @property
    def qkv_sizes(self) -> tuple[int, int, int]:
        """Rows of q, k and v in the fused weight."""
        kv = self.n_query_groups * self.head_size
        return self.n_head * self.head_size, kv, kv

    @property
    def qkv_rows(self) -> int:
        return sum(self.qkv_sizes)

    # -- row layouts -------------------------------------------------------------------------------

    def grouped_runs(self) -> list[tuple[int, int]]:
        """The grouped ``[Q|K|V]`` rows as runs ``(first row, rows)`` of the per-group interleaved layout, in order."""
        hs, per = self.head_size, self.q_per_kv
        block = (per + 2) * hs
        groups = range(self.n_query_groups)
        q = [(g * block, per * hs) for g in groups]
        k = [(g * block + per * hs, hs) for g in groups]
        v = [(g * block + (per + 1) * hs, hs) for g in groups]
        return q + k + v

    def interleaved_runs(self) -> list[tuple[int, int]]:
        """The inverse: the per-group interleaved rows as runs ``(first row, rows)`` of the grouped layout."""
        hs, per = self.head_size, self.q_per_kv
        q, k, _ = self.qkv_sizes
        out: list[tuple[int, int]] = []
        for g in range(self.n_query_groups):
            out += [(g * per * hs, per * hs), (q + g * hs, hs), (q + k + g * hs, hs)]
        return out

    def interleaved_rows(self) -> list[int]:
        """For each row of the grouped ``[Q|K|V]`` layout, the row of the per-group interleaved layout it comes from.

        ``grouped = interleaved[perm]`` with ``perm = interleaved_rows()``.
        """
        return [r for first, n in self.grouped_runs() for r in range(first, first + n)]

    def grouped_rows(self) -> list[int]:
        """The inverse permutation: ``interleaved = grouped[grouped_rows()]``."""
        return [r for first, n in self.interleaved_runs() for r in range(first, first + n)]

    def split_qkv(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """q, k, v row blocks of a grouped fused tensor (weight or bias), as views."""
        q, k, v = self.qkv_sizes
        if t.shape[0] != q + k + v:
            raise InvalidFile(f"fused qkv has {t.shape[0]} rows, the config gives q+k+v = {q + k + v}")
        return t[:q], t[q : q + k], t[q + k :]

    def to_grouped(self, t: torch.Tensor) -> torch.Tensor:
        """Per-group interleaved rows → grouped ``[Q|K|V]`` (a new contiguous tensor; values unchanged)."""
        import torch

        if t.shape[0] != self.qkv_rows:
            raise InvalidFile(f"fused attention has {t.shape[0]} rows, the config gives {self.qkv_rows}")
        return t.index_select(0, torch.tensor(self.interleaved_rows()))

    def to_interleaved(self, t: torch.Tensor) -> torch.Tensor:
        """Grouped ``[Q|K|V]`` rows → per-group interleaved (a new contiguous tensor; values unchanged)."""
        import torch

        if t.shape[0] != self.qkv_rows:
            raise InvalidFile(f"fused qkv has {t.shape[0]} rows, the config gives {self.qkv_rows}")
        return t.index_select(0, torch.tensor(self.grouped_rows()))
