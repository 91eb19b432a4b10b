"""A pre-scan of a pickle's opcodes that bounds what replaying it can cost, before CPython replays it.

The C unpickler (fast, used for the real work) trusts its input in ways a
few-hundred-byte file can exploit:

* ``LONG_BINPUT 2**31`` makes it allocate a memo *array* of 2**32 pointers
  (32 GiB); text ``PUT``/``GET`` take any decimal index.
* A 150,000-deep tuple used as a dict key makes C-level hashing recurse
  without a guard: the interpreter segfaults. Deep structures also break any
  later recursive code (``repr``, ``==``, ``json``).
* ``LONG4`` builds integers of billions of digits; ``BYTEARRAY8`` and
  out-of-band buffers allocate what their header claims.

:func:`scan` walks the opcodes once, simulating only the *nesting depth* of
each stack item and memo entry (an int each), and refuses: opcodes outside the
set ``torch.save`` and protocols 2-5 of plain containers produce (the same set
``torch.load(weights_only=True)`` handles, plus the protocol-4/5 framing
opcodes), memo indices beyond what a pickle of this size can hold, integers
wider than 64 bits, structures nested deeper than ``MAX_PICKLE_DEPTH``, and
truncated arguments. It is about as fast as the C unpickler itself (≈1 ms for
a 7B model's pickle; measured in the report), and it never builds objects.
"""

from __future__ import annotations

import struct

from ckpt_tool.errors import InvalidFile
from ckpt_tool.limits import MAX_PICKLE_DEPTH, MAX_PICKLE_MARK_ITEMS

_U32 = struct.Struct("<I")
_MAX_GLOBAL_LINE = 256  # a module or attribute name in GLOBAL
_MAX_LONG1_BYTES = 9  # two's complement: 9 bytes hold every int64 and uint64

# Opcodes refused outright, with the reason (everything not handled below is refused too).
_REFUSED = {
    ord("I"): "INT (protocol 0 text integer)",
    ord("L"): "LONG (protocol 0 text integer)",
    0x8B: "LONG4 (integer wider than 2040 bits)",
    ord("S"): "STRING (protocol 0)",
    ord("V"): "UNICODE (protocol 0)",
    ord("F"): "FLOAT (protocol 0)",
    ord("g"): "GET (text memo index)",
    ord("p"): "PUT (text memo index)",
    0x82: "EXT1 (extension registry)",
    0x83: "EXT2 (extension registry)",
    0x84: "EXT4 (extension registry)",
    ord("i"): "INST",
    ord("o"): "OBJ",
    ord("P"): "PERSID (text persistent id)",
    0x96: "BYTEARRAY8",
    0x97: "NEXT_BUFFER (out-of-band buffer)",
    0x98: "READONLY_BUFFER (out-of-band buffer)",
}

# Opcode categories (one table lookup, then a short chain: the cost of the slowest opcode bounds the
# cost of a crafted pickle, so no opcode sits deep in a long if-chain).
(_REFUSE, _LEAF, _LONG_MEMO, _PUT, _GET, _STRING, _MARK, _COLLECT, _CALL, _WRAP, _REPLACE_LEAF, _EXTEND, _INSERT,
 _STACK, _GLOBAL, _LONG1, _FRAMING, _STOP) = range(18)
_cat = bytearray(256)
_skip = bytearray(256)
for _ops, _c, _n in (
    (b"N\x88\x89)]}\x8f", _LEAF, 1), (b"K", _LEAF, 2), (b"M", _LEAF, 3), (b"J", _LEAF, 5), (b"G", _LEAF, 9),
    (b"rj", _LONG_MEMO, 0), (b"q\x94", _PUT, 0), (b"h", _GET, 0),
    (b"XBT", _STRING, 4), (b"\x8cCU", _STRING, 1), (b"\x8d\x8e", _STRING, 8),
    (b"(", _MARK, 0), (b"tld\x91", _COLLECT, 0), (b"R\x81", _CALL, 0), (b"\x85\x86\x87", _WRAP, 0),
    (b"Q\x93", _REPLACE_LEAF, 0), (b"ue\x90", _EXTEND, 0), (b"sab", _INSERT, 0), (b"012\x92", _STACK, 0),
    (b"c", _GLOBAL, 0), (b"\x8a", _LONG1, 0), (b"\x80\x95", _FRAMING, 0), (b".", _STOP, 0),
):
    for _op in _ops:
        _cat[_op], _skip[_op] = _c, _n
_CATEGORY, _SKIP = bytes(_cat), bytes(_skip)


def _bad(what: str) -> InvalidFile:
    return InvalidFile(f"data.pkl: {what}", "the pickle is corrupt or crafted; torch.save never writes this")


def _too_many(count: int, pos: int) -> InvalidFile:
    return _bad(f"{count} items after one MARK at byte {pos} (limit {MAX_PICKLE_MARK_ITEMS})")


def scan(data: bytes | memoryview, max_depth: int = MAX_PICKLE_DEPTH) -> int:
    """Check the opcode stream of ``data``; return the offset of its STOP opcode.

    Raises:
        InvalidFile: naming the first opcode that breaks a rule (with its offset).
    """
    n = len(data)
    # A legit pickle spends >= 2 bytes per memo entry (BINPUT) and numbers entries 0, 1, 2...:
    # any larger index is hostile. The C memo array then stays below ~8 bytes per input byte.
    max_memo = max(256, n // 2)
    stack: list[int] = []  # nesting depth of every stack item (a leaf is 0)
    marks: list[int] = []  # stack heights at each MARK
    memo: dict[int, int] = {}  # memo index -> depth of the memoised item
    push = stack.append
    unpack_from = _U32.unpack_from
    cat = _CATEGORY
    skip = _SKIP
    pos = 0
    try:
        while True:
            op = data[pos]
            c = cat[op]
            if c == _LEAF:  # fixed-size leaf pushes: NONE, bools, EMPTY_*, BININT*, BINFLOAT
                push(0)
                pos += skip[op]
            elif c == _LONG_MEMO:  # r LONG_BINPUT, j LONG_BINGET
                (idx,) = unpack_from(data, pos + 1)
                if idx > max_memo:
                    raise _bad(f"memo index {idx} at byte {pos} is impossible in a {n}-byte pickle")
                if op == 0x72:
                    memo[idx] = stack[-1]
                else:
                    push(memo[idx])
                pos += 5
            elif c == _PUT:  # q BINPUT, MEMOIZE
                if op == 0x71:
                    memo[data[pos + 1]] = stack[-1]
                    pos += 2
                else:
                    memo[len(memo)] = stack[-1]
                    pos += 1
            elif c == _GET:  # h BINGET
                push(memo[data[pos + 1]])
                pos += 2
            elif c == _STRING:  # counted strings and bytes: 1-, 4- or 8-byte length
                width = skip[op]
                pos += 1 + width + int.from_bytes(data[pos + 1 : pos + 1 + width], "little")
                if pos > n:
                    raise _bad("string runs past the end")
                push(0)
            elif c == _MARK:
                if marks and len(stack) - marks[-1] > MAX_PICKLE_MARK_ITEMS:
                    raise _too_many(len(stack) - marks[-1], pos)
                marks.append(len(stack))
                pos += 1
            elif c == _COLLECT:  # t TUPLE, l LIST, d DICT, FROZENSET: the items after MARK become one object
                mark = marks.pop()
                if len(stack) - mark > MAX_PICKLE_MARK_ITEMS:
                    raise _too_many(len(stack) - mark, pos)
                items = stack[mark:]
                del stack[mark:]
                depth = max(items) + 1 if items else 1
                if depth > max_depth:
                    raise _bad(f"structure nested more than {max_depth} levels deep (at byte {pos})")
                push(depth)
                pos += 1
            elif c == _CALL:  # REDUCE, NEWOBJ (callable, args) -> result built from the args (as deep)
                args = stack.pop()
                stack[-1] = args
                pos += 1
            elif c == _WRAP:  # TUPLE1/2/3
                k = op - 0x84
                if len(stack) - (marks[-1] if marks else 0) < k:
                    raise _bad(f"stack underflow at byte {pos}")
                depth = max(stack[-k:]) + 1
                if depth > max_depth:
                    raise _bad(f"structure nested more than {max_depth} levels deep (at byte {pos})")
                del stack[-k:]
                push(depth)
                pos += 1
            elif c == _REPLACE_LEAF:  # Q BINPERSID (id -> opaque storage), STACK_GLOBAL (module, name -> global)
                if op == 0x93:
                    stack.pop()
                stack[-1] = 0
                pos += 1
            elif c == _EXTEND:  # u SETITEMS, e APPENDS, ADDITEMS: items after MARK go into the object below
                mark = marks.pop()
                if len(stack) - mark > MAX_PICKLE_MARK_ITEMS:
                    raise _too_many(len(stack) - mark, pos)
                items = stack[mark:]
                del stack[mark:]
                if items:
                    depth = max(stack[-1], max(items) + 1)
                    if depth > max_depth:
                        raise _bad(f"structure nested more than {max_depth} levels deep (at byte {pos})")
                    stack[-1] = depth
                elif not stack:
                    raise _bad(f"stack underflow at byte {pos}")
                pos += 1
            elif c == _INSERT:  # s SETITEM (k, v), a APPEND (v), b BUILD (state)
                v = stack.pop()
                if op == 0x73:
                    v = max(v, stack.pop())
                depth = max(stack[-1], v + 1)
                if depth > max_depth:
                    raise _bad(f"structure nested more than {max_depth} levels deep (at byte {pos})")
                stack[-1] = depth
                pos += 1
            elif c == _STACK:  # POP, POP_MARK, DUP, NEWOBJ_EX
                if op == 0x30:  # POP (pops a MARK when nothing is above it, as CPython does)
                    if marks and len(stack) == marks[-1]:
                        marks.pop()
                    else:
                        stack.pop()
                elif op == 0x31:
                    del stack[marks.pop() :]
                elif op == 0x32:
                    push(stack[-1])
                else:  # NEWOBJ_EX cls args kwargs
                    kwargs = stack.pop()
                    args = stack.pop()
                    stack[-1] = max(args, kwargs)
                pos += 1
            elif c == _GLOBAL:  # c GLOBAL "module\nname\n"
                end = data.find(b"\n", pos + 1, pos + 1 + _MAX_GLOBAL_LINE)
                end = data.find(b"\n", end + 1, end + 1 + _MAX_GLOBAL_LINE) if end >= 0 else -1
                if end < 0:
                    raise _bad(f"malformed GLOBAL at byte {pos}")
                push(0)
                pos = end + 1
            elif c == _LONG1:
                size = data[pos + 1]
                if size > _MAX_LONG1_BYTES:
                    raise _bad(f"{size * 8}-bit integer at byte {pos}")
                push(0)
                pos += 2 + size
            elif c == _FRAMING:  # PROTO, FRAME (a length prefix; the opcodes inside follow as usual)
                if op == 0x80:
                    if data[pos + 1] > 5:
                        raise _bad(f"unsupported pickle protocol {data[pos + 1]}")
                    pos += 2
                else:
                    if pos + 9 + int.from_bytes(data[pos + 1 : pos + 9], "little") > n:
                        raise _bad("frame runs past the end")
                    pos += 9
            elif c == _STOP:
                if len(stack) - (marks[-1] if marks else 0) > MAX_PICKLE_MARK_ITEMS:
                    raise _too_many(len(stack), pos)
                return pos
            else:
                why = _REFUSED.get(op, f"unknown opcode 0x{op:02x}")
                raise _bad(f"refusing opcode {why} at byte {pos}")
    except (IndexError, struct.error):
        raise _bad("truncated pickle (or a stack underflow)") from None
    except KeyError as exc:
        raise _bad(f"memo entry {exc.args[0]} read before it was written") from None
    except ValueError:  # max() of an empty slice: a container op without its items
        raise _bad("stack underflow") from None
