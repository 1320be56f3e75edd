"""The C record header and the numpy dtype must agree field by field."""

import os
import re

import numpy as np

from vtrace.events import (KIND_FIELDS, RECORD_DTYPE, Kind, Layer, kind_name, layer_name, make,
                           parse_kind, parse_layer)

HEADER = os.path.join(os.path.dirname(__file__), "..", "..", "probes", "vtrace.h")
CTYPES = {"__u64": "<u8", "__u32": "<u4", "__u16": "<u2", "__u8": "u1"}


def _header():
    with open(HEADER) as f:
        return f.read()


def _struct_fields(src):
    body = re.search(r"struct vtrace_event \{(.*?)\};", src, re.S).group(1)
    out = []
    for line in body.splitlines():
        m = re.match(r"\s*(__u\d+)\s+(\w+);\s*/\*\s*(\d+):", line)
        if m:
            out.append((m.group(2), CTYPES[m.group(1)], int(m.group(3))))
    return out


def test_struct_matches_dtype_field_by_field():
    fields = _struct_fields(_header())
    assert [(n, t) for n, t, _ in fields] == [(n, RECORD_DTYPE[n].str if RECORD_DTYPE[n].itemsize > 1 else "u1")
                                             for n in RECORD_DTYPE.names]
    for name, _, off in fields:
        assert RECORD_DTYPE.fields[name][1] == off, name  # offsets written in the C comments
    # natural alignment: the C compiler adds no padding, so sizes add up
    assert sum(RECORD_DTYPE[n].itemsize for n in RECORD_DTYPE.names) == RECORD_DTYPE.itemsize == 48


def test_dtype_is_little_endian():
    for n in RECORD_DTYPE.names:
        assert RECORD_DTYPE[n].str[0] in ("<", "|"), n


def test_kind_and_layer_enums_match_c():
    src = _header()
    ck = {m.group(1): int(m.group(2)) for m in re.finditer(r"VTRACE_(\w+) = (\d+),", src)}
    for k in Kind:
        assert ck[k.name] == int(k), k
    for layer in Layer:
        assert ck["LAYER_" + layer.name] == int(layer), layer
    kinds_in_c = {n for n in ck if not n.startswith("LAYER_")}
    assert kinds_in_c == {k.name for k in Kind}


def test_every_kind_documents_its_fields():
    assert set(KIND_FIELDS) == set(Kind)
    for k, f in KIND_FIELDS.items():
        assert set(f) <= {"id", "len", "aux", "aux2", "arg"}, k
        assert len(set(f.values())) == len(f), k  # names unique within a kind


def test_unknown_kinds_are_named_not_dropped():
    assert kind_name(200) == "unknown:200"
    assert parse_kind("unknown:200") == 200
    assert parse_kind("used") == Kind.USED
    assert layer_name(9) == "unknown:9" and parse_layer("virtio-guest") == Layer.VIRTIO_GUEST


def test_make_defaults_queue_to_none():
    a = make([{"kind": Kind.KICK, "ts": 5}])
    assert a["queue"][0] == 0xFFFF and a.dtype == RECORD_DTYPE
    assert np.frombuffer(a.tobytes(), dtype=RECORD_DTYPE)[0]["ts"] == 5
