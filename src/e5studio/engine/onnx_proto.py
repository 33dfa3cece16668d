"""The few ONNX protobuf messages the engine's graphs need, written as bytes here (no ``onnx`` package).

ONNX Runtime takes a model as serialized ``ModelProto`` bytes. The ``onnx`` package that usually writes them
imports ``ml_dtypes`` at import time, which costs 1-2 s in every process that loads a model (the server, each
CLI command, each test server); the graphs here use a small part of the format, so this module writes it
directly: nodes with int, float, string and int-list attributes, tensors stored in the model (``raw_data``,
little-endian) or as external-data placeholders, typed graph inputs and outputs with symbolic dimensions, and the
model with its opset imports. Field numbers are those of ``onnx.proto`` (IR version 9); the test
``tests/engine/test_onnx_proto.py`` parses what this writes with the ``onnx`` package and compares it with the
same model built by ``onnx.helper``.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Sequence

import numpy as np

IR_VERSION = 9  # ONNX 1.15's, the first with opset 20 (whose Gelu the graph uses)

# TensorProto.DataType
FLOAT, UINT8, INT8, INT64 = 1, 2, 3, 7
_DTYPES = {np.dtype(np.float32): FLOAT, np.dtype(np.uint8): UINT8, np.dtype(np.int8): INT8,
           np.dtype(np.int64): INT64}
# AttributeProto.AttributeType
_ATTR_FLOAT, _ATTR_INT, _ATTR_STRING, _ATTR_INTS = 1, 2, 3, 7


def data_type(dtype: np.dtype) -> int:
    """The ONNX element type of a numpy dtype the graphs use."""
    try:
        return _DTYPES[np.dtype(dtype)]
    except KeyError:
        raise ValueError(f"no ONNX element type here for {dtype}") from None


# --------------------------------------------------------------------------------------- the wire format

def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 fields: two's complement over ten bytes
    out = bytearray()
    while True:
        low = value & 0x7F
        value >>= 7
        if value:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def _key(field: int, wire: int) -> bytes:
    return _varint(field << 3 | wire)


def _int(field: int, value: int) -> bytes:
    return _key(field, 0) + _varint(value)


def _bytes(field: int, value: bytes) -> bytes:
    return _key(field, 2) + _varint(len(value)) + value


def _str(field: int, value: str) -> bytes:
    return _bytes(field, value.encode("utf-8"))


def _float(field: int, value: float) -> bytes:
    return _key(field, 5) + struct.pack("<f", value)


def _packed_ints(field: int, values: Iterable[int]) -> bytes:
    return _bytes(field, b"".join(_varint(v) for v in values))


# --------------------------------------------------------------------------------------------- messages

def attribute(name: str, value: int | float | str | Sequence[int]) -> bytes:
    """An ``AttributeProto``: int, float, string or list of ints (what the graphs' operators take)."""
    if isinstance(value, int):  # bool too
        return _str(1, name) + _int(20, _ATTR_INT) + _int(3, int(value))
    if isinstance(value, float):
        return _str(1, name) + _int(20, _ATTR_FLOAT) + _float(2, value)
    if isinstance(value, str):
        return _str(1, name) + _int(20, _ATTR_STRING) + _bytes(4, value.encode("utf-8"))
    ints = list(value)
    if not all(isinstance(v, int) for v in ints):
        raise ValueError(f"attribute {name!r}: only ints, floats, strings and lists of ints are written here")
    return _str(1, name) + _int(20, _ATTR_INTS) + _packed_ints(8, ints)


def node(op_type: str, inputs: Sequence[str], outputs: Sequence[str], name: str = "", domain: str = "",
         **attributes: int | float | str | Sequence[int]) -> bytes:
    """A ``NodeProto``; attributes in sorted order (as ``onnx.helper.make_node`` writes them)."""
    out = b"".join(_str(1, i) for i in inputs) + b"".join(_str(2, o) for o in outputs)
    if name:
        out += _str(3, name)
    out += _str(4, op_type)
    if domain:
        out += _str(7, domain)
    return out + b"".join(_bytes(5, attribute(k, v)) for k, v in sorted(attributes.items()))


def tensor(name: str, array: np.ndarray) -> bytes:
    """A ``TensorProto`` holding ``array``'s bytes (``raw_data``, little-endian)."""
    array = np.asarray(array)
    raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
    return (b"".join(_int(1, d) for d in array.shape) + _int(2, data_type(array.dtype)) + _str(8, name)
            + _bytes(9, raw))


def external_tensor(name: str, dtype: np.dtype, shape: Sequence[int], location: str, length: int) -> bytes:
    """A ``TensorProto`` whose bytes live outside the model: a placeholder that the session fills
    (``SessionOptions.add_external_initializers``)."""
    entries = [("location", location), ("offset", "0"), ("length", str(length))]
    return (b"".join(_int(1, d) for d in shape) + _int(2, data_type(dtype)) + _str(8, name)
            + b"".join(_bytes(13, _str(1, k) + _str(2, v)) for k, v in entries) + _int(14, 1))


def value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    """A ``ValueInfoProto`` of a tensor; a ``str`` dimension is symbolic (``dim_param``)."""
    shape = b"".join(_bytes(1, _str(2, d) if isinstance(d, str) else _int(1, d)) for d in dims)
    tensor_type = _int(1, elem_type) + _bytes(2, shape)
    return _str(1, name) + _bytes(2, _bytes(1, tensor_type))


def model(nodes: Iterable[bytes], name: str, inputs: Iterable[bytes], outputs: Iterable[bytes],
          initializers: Iterable[bytes], opsets: Sequence[tuple[str, int]], producer: str = "") -> bytes:
    """A serialized ``ModelProto`` around one ``GraphProto``; ``opsets``: (domain, version), "" the default."""
    graph = (b"".join(_bytes(1, n) for n in nodes) + _str(2, name) + b"".join(_bytes(5, t) for t in initializers)
             + b"".join(_bytes(11, i) for i in inputs) + b"".join(_bytes(12, o) for o in outputs))
    out = _int(1, IR_VERSION)
    if producer:
        out += _str(2, producer)
    out += _bytes(7, graph)
    for domain, version in opsets:
        out += _bytes(8, _str(1, domain) + _int(2, version))
    return out
