"""Identify a container by its leading bytes, never by its extension.

``zipfile.is_zipfile`` is not used: it searches for an end-of-central-directory
record anywhere near the end of the file, so a valid safetensors file whose last
U8 tensor happens to hold a zip would be taken for a torch archive.
"""

from __future__ import annotations

import os
import struct

from ckpt_tool.errors import InvalidFile
from ckpt_tool.io.regular import open_regular

SAFETENSORS = "safetensors"
TORCH_ZIP = "torch"
TORCH_LEGACY = "torch-legacy"
PICKLE = "pickle"
UNKNOWN = "unknown"

# torch's pre-1.6 serialization starts with a pickled magic number (a long int).
_LEGACY_MAGIC = (0x1950A86A20F9469CFC6C).to_bytes(10, "little")


def sniff(path: str | os.PathLike[str]) -> str:
    """Return the container kind of ``path`` from its first bytes."""
    with open_regular(path) as fh:  # a FIFO or device would block or never end
        head = fh.read(16)
    if not head:
        raise InvalidFile(f"{path}: empty file (0 bytes)", "the save was interrupted; re-save or delete it")
    if head.startswith(b"PK\x03\x04"):
        return TORCH_ZIP
    if len(head) >= 9:
        (n,) = struct.unpack("<Q", head[:8])
        if 2 <= n < (1 << 40) and head[8:9] in (b"{", b" "):
            return SAFETENSORS
    if head[:2] in (b"\x80\x02", b"\x80\x03", b"\x80\x04", b"\x80\x05"):
        # A pickle stream: either torch's legacy format (magic number first) or a
        # bare pickle. Neither can be read without executing arbitrary code paths.
        if _LEGACY_MAGIC in head or head[2:3] == b"\x8a":
            return TORCH_LEGACY
        return PICKLE
    return UNKNOWN
