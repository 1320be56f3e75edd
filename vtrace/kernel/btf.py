"""Struct layouts from the kernel's BTF (/sys/kernel/btf/vmlinux and modules).

The probes never include kernel headers for struct layouts: headers that do
not match the running kernel give wrong offsets silently (struct virtqueue's
``reset`` is at 52 in this machine's BTF and at 64 in Debian's 6.1 headers).
This reader parses the BTF binary format (Documentation/bpf/btf.rst:
struct btf_header, then btf_type records each followed by kind-specific
data, then the string section) and answers member offsets and sizes, which
the loader passes to bcc as -D macros.

Module BTF (/sys/kernel/btf/<module>) is "split" BTF: its type ids and string
offsets continue those of vmlinux, so a module is read on top of the base.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

BTF_DIR = "/sys/kernel/btf"
MAGIC = 0xEB9F

# BTF_KIND_* (include/uapi/linux/btf.h)
INT, PTR, ARRAY, STRUCT, UNION, ENUM, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT = range(1, 12)
FUNC, FUNC_PROTO, VAR, DATASEC, FLOAT, DECL_TAG, TYPE_TAG, ENUM64 = range(12, 20)
_MODIFIERS = (TYPEDEF, VOLATILE, CONST, RESTRICT, TYPE_TAG)
# Bytes of kind-specific data after the 12-byte btf_type, as (fixed, per vlen entry).
_EXTRA = {INT: (4, 0), ARRAY: (12, 0), STRUCT: (0, 12), UNION: (0, 12), ENUM: (0, 8),
          FUNC_PROTO: (0, 8), VAR: (4, 0), DATASEC: (0, 12), DECL_TAG: (4, 0), ENUM64: (0, 12)}


class BtfError(Exception):
    """BTF missing, unreadable, or without the type asked for (one line)."""


@dataclass(frozen=True)
class Member:
    name: str
    offset: int      # bytes from the start of the outermost struct
    size: int        # bytes (0 for a flexible array)
    bit_offset: int  # bits, for bitfields
    bitfield: int    # bitfield width in bits, 0 if not a bitfield
    type_id: int = 0


class Btf:
    """One BTF blob (vmlinux, or a module on top of its base)."""

    def __init__(self, data: bytes, base: "Btf | None" = None, name: str = "vmlinux"):
        self.name = name
        magic, _ver, _flags, hdr_len, type_off, type_len, str_off, str_len = struct.unpack_from("<HBBIIIII", data)
        if magic != MAGIC:
            raise BtfError(f"{name}: not BTF (magic {magic:#x})")
        self.base = base
        self.first_id = (base.next_id if base else 1)
        self.str_base = (base.str_end if base else 0)
        start = hdr_len + str_off
        self._strs = data[start:start + str_len]
        self.str_end = self.str_base + str_len
        # Parse every type record: (kind, name_off, info, size_or_type, extra offset, vlen).
        self._types: list[tuple[int, int, int, int, int]] = []
        self._data = data
        p, end = hdr_len + type_off, hdr_len + type_off + type_len
        unpack = struct.Struct("<III").unpack_from
        types = self._types
        while p < end:
            name_off, info, st = unpack(data, p)
            kind = (info >> 24) & 0x1F
            vlen = info & 0xFFFF
            fixed, per = _EXTRA.get(kind, (0, 0))
            types.append((kind, name_off, info, st, p + 12))
            p += 12 + fixed + per * vlen
        self.next_id = self.first_id + len(types)
        self._by_name: dict[tuple[int, str], int] | None = None

    # low-level -----------------------------------------------------------------
    def _str(self, off: int) -> str:
        if off < self.str_base:
            return self.base._str(off) if self.base else ""
        o = off - self.str_base
        e = self._strs.index(b"\0", o)
        return self._strs[o:e].decode()

    def _type(self, tid: int):
        if tid < self.first_id:
            if self.base is None:
                raise BtfError(f"{self.name}: type id {tid} out of range")
            return self.base, self.base._type(tid)[1]
        return self, self._types[tid - self.first_id]

    def _index(self) -> dict[tuple[int, str], int]:
        if self._by_name is None:
            idx: dict[tuple[int, str], int] = {}
            for i, (kind, name_off, _info, _st, _x) in enumerate(self._types):
                if name_off and kind in (STRUCT, UNION, TYPEDEF, ENUM, ENUM64, FUNC, INT):
                    idx.setdefault((kind, self._str(name_off)), self.first_id + i)
            self._by_name = idx
        return self._by_name

    def find(self, kind: int, name: str) -> int | None:
        tid = self._index().get((kind, name))
        if tid is None and self.base is not None:
            return self.base.find(kind, name)
        return tid

    def resolve(self, tid: int) -> int:
        """Strip typedefs and qualifiers."""
        while tid:
            owner, (kind, _n, _i, st, _x) = self._type(tid)
            if kind not in _MODIFIERS:
                return tid
            tid = st
        return 0

    def size(self, tid: int) -> int:
        tid = self.resolve(tid)
        if not tid:
            return 0  # void
        owner, (kind, _n, info, st, x) = self._type(tid)
        if kind in (INT, STRUCT, UNION, ENUM, ENUM64, FLOAT, DATASEC):
            return st
        if kind == PTR:
            return 8
        if kind == ARRAY:
            elem, _index, nelems = struct.unpack_from("<III", owner._data, x)
            return self.size(elem) * nelems
        return 0

    def func_nargs(self, tid: int) -> int:
        """A FUNC's argument count (its FUNC_PROTO's vlen): where fexit finds the return value."""
        owner, (kind, _n, _info, proto, _x) = self._type(tid)
        if kind != FUNC:
            raise BtfError(f"type {tid} is not a function")
        owner, (kind, _n, info, _st, _x) = self._type(proto)
        if kind != FUNC_PROTO:
            raise BtfError(f"function {tid} has no prototype")
        return info & 0xFFFF

    def members(self, tid: int, base_bits: int = 0, prefix: str = "") -> list[Member]:
        """Every member of a struct/union, anonymous members flattened into their parent."""
        tid = self.resolve(tid)
        owner, (kind, _n, info, _st, x) = self._type(tid)
        if kind not in (STRUCT, UNION):
            raise BtfError(f"type {tid} is not a struct or union")
        kflag = info >> 31
        out: list[Member] = []
        for i in range(info & 0xFFFF):
            name_off, mtype, off = struct.unpack_from("<III", owner._data, x + 12 * i)
            bits, width = (off & 0xFFFFFF, off >> 24) if kflag else (off, 0)
            bits += base_bits
            name = owner._str(name_off)
            if not name:  # anonymous struct/union: its members belong to us
                rt = self.resolve(mtype)
                if self._type(rt)[1][0] in (STRUCT, UNION):
                    out.extend(self.members(rt, bits, prefix))
                continue
            out.append(Member(prefix + name, bits // 8, self.size(mtype), bits, width, mtype))
        return out


_cache: dict[str, Btf] = {}


def load(module: str | None = None, btf_dir: str = BTF_DIR) -> Btf:
    """vmlinux BTF, or a module's on top of it (cached per process)."""
    key = f"{btf_dir}/{module or 'vmlinux'}"
    if key in _cache:
        return _cache[key]
    base = None if module is None else load(None, btf_dir)
    path = os.path.join(btf_dir, module or "vmlinux")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        what = "the kernel has no BTF (CONFIG_DEBUG_INFO_BTF)" if module is None else \
            f"module {module} is not loaded or has no BTF"
        raise BtfError(f"{path}: {what}") from None
    except OSError as e:
        raise BtfError(f"{path}: {e.strerror}") from None
    b = _cache[key] = Btf(data, base, module or "vmlinux")
    return b


def struct_layout(name: str, module: str | None = None) -> dict[str, Member]:
    """``struct NAME``'s members by name (anonymous members flattened)."""
    b = load(module)
    tid = b.find(STRUCT, name)
    if tid is None:
        raise BtfError(f"struct {name} is not in {b.name} BTF")
    return {m.name: m for m in b.members(tid)}


def member(sname: str, path: str, module: str | None = None) -> Member:
    """``struct sname``'s member at a dotted path through embedded structs
    (``split.vring.used`` in struct vring_virtqueue); the offset is from the
    start of ``sname``."""
    b = load(module)
    tid = b.find(STRUCT, sname)
    if tid is None:
        raise BtfError(f"struct {sname} is not in {b.name} BTF")
    offset = 0
    m = None
    for i, part in enumerate(path.split(".")):
        if m is not None:
            rt = b.resolve(m.type_id)
            if b._type(rt)[1][0] not in (STRUCT, UNION):
                raise BtfError(f"struct {sname}: {'.'.join(path.split('.')[:i])} is not a struct")
            tid = rt
        found = {x.name: x for x in b.members(tid)}.get(part)
        if found is None:
            raise BtfError(f"struct {sname} has no member {path} in this kernel's BTF")
        offset += found.offset
        m = found
    return Member(path, offset, m.size, m.bit_offset, m.bitfield, m.type_id)


def offsets(spec: dict[str, tuple[str, str]], module: str | None = None) -> dict[str, int]:
    """-D macros for a probe: {MACRO: (struct, member path)} -> {MACRO: byte offset}.

    Raises BtfError naming the first struct or member the running kernel lacks.
    """
    return {macro: member(sname, path, module).offset for macro, (sname, path) in spec.items()}
