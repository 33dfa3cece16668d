"""The engine writes its ONNX graphs without the ``onnx`` package (``engine/onnx_proto.py``); here the ``onnx``
package (the reference, written by others) parses what it writes and compares it with the same messages built by
``onnx.helper``, and checks the whole encoder graph against the operator schemas."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from e5studio.engine import onnx_proto as proto

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402


def test_nodes_with_every_attribute_kind_parse_as_helper_builds_them() -> None:
    cases = [
        (proto.node("Gemm", ["x", "w", "b"], ["y"], name="y", transB=1),
         helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="y", transB=1)),
        (proto.node("Transpose", ["k"], ["k_t"], name="k_t", perm=[0, 1, 3, 2]),
         helper.make_node("Transpose", ["k"], ["k_t"], name="k_t", perm=[0, 1, 3, 2])),
        (proto.node("LayerNormalization", ["x", "g", "b"], ["n"], name="n", axis=-1, epsilon=1e-12),
         helper.make_node("LayerNormalization", ["x", "g", "b"], ["n"], name="n", axis=-1, epsilon=1e-12)),
        (proto.node("Gelu", ["x"], ["g"], name="g", approximate="tanh"),
         helper.make_node("Gelu", ["x"], ["g"], name="g", approximate="tanh")),
        (proto.node("MatMulIntegerToFloat", ["q", "w", "one", "s"], ["y"], name="y", domain="com.microsoft"),
         helper.make_node("MatMulIntegerToFloat", ["q", "w", "one", "s"], ["y"], name="y", domain="com.microsoft")),
        (proto.node("ReduceMax", ["x", "axes"], ["m"], name="m", keepdims=1),
         helper.make_node("ReduceMax", ["x", "axes"], ["m"], name="m", keepdims=1)),
    ]
    for written, expected in cases:
        assert onnx.NodeProto.FromString(written) == expected


@pytest.mark.parametrize("array", [
    np.arange(12, dtype=np.float32).reshape(3, 4) - 5.5,
    np.array([-128, -1, 0, 1, 127], dtype=np.int8),
    np.array([0, 200, 255], dtype=np.uint8),
    np.array([-1, 384, 2**40], dtype=np.int64),
    np.asarray(0.125, dtype=np.float32),  # a scalar (no dims)
])
def test_tensors_hold_the_array(array: np.ndarray) -> None:
    parsed = onnx.TensorProto.FromString(proto.tensor("t", array))
    assert parsed == numpy_helper.from_array(array, "t")
    np.testing.assert_array_equal(numpy_helper.to_array(parsed), array)


def test_external_placeholders_and_value_infos_parse_as_helper_builds_them() -> None:
    expected = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3])
    expected.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "here"), ("offset", "0"), ("length", "48")):
        expected.external_data.add(key=key, value=value)
    assert onnx.TensorProto.FromString(proto.external_tensor("w", np.dtype(np.float32), [4, 3], "here", 48)) \
        == expected
    assert onnx.ValueInfoProto.FromString(proto.value_info("key_bias", proto.FLOAT, ["B", 1, 1, "L"])) \
        == helper.make_tensor_value_info("key_bias", TensorProto.FLOAT, ["B", 1, 1, "L"])


def test_a_model_parses_as_helper_builds_it_and_runs() -> None:
    ort = pytest.importorskip("onnxruntime")
    b = np.arange(6, dtype=np.float32).reshape(3, 2)
    written = proto.model([proto.node("MatMul", ["a", "b"], ["y"], name="y")], "g",
                          [proto.value_info("a", proto.FLOAT, ["N", 3])],
                          [proto.value_info("y", proto.FLOAT, ["N", 2])],
                          [proto.tensor("b", b)], [("", 20), ("com.microsoft", 1)], producer="e5studio")
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"], name="y")], "g",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
                              [numpy_helper.from_array(b, "b")])
    expected = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20),
                                                       helper.make_opsetid("com.microsoft", 1)],
                                 producer_name="e5studio", ir_version=proto.IR_VERSION)
    assert onnx.ModelProto.FromString(written) == expected
    a = np.ones((2, 3), dtype=np.float32)
    out = ort.InferenceSession(written, providers=["CPUExecutionProvider"]).run(None, {"a": a})[0]
    np.testing.assert_array_equal(out, a @ b)


def test_the_encoder_graph_passes_the_onnx_checker(tiny_dir: Path, tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from e5studio.engine.checkpoint import load_checkpoint
    from e5studio.engine.onnx_graph import build_graph
    from tests.engine.plain import plain_encoder

    model = onnx.ModelProto.FromString(build_graph(plain_encoder(load_checkpoint(str(tiny_dir)))))
    (tmp_path / "e5studio-encoder-weights").write_bytes(b"")  # the checker wants the placeholders' file to exist
    monkeypatch.chdir(tmp_path)
    onnx.checker.check_model(model)  # every node against its operator's schema, opsets, IR version
    assert [i.name for i in model.graph.input] == ["input_ids", "positions", "pad_slots", "pack_slots", "key_bias"]
    assert {t.name for t in model.graph.initializer if t.data_location == TensorProto.EXTERNAL} >= {
        "word_embeddings", "layers.0.qkv.weight"}


def test_loading_a_model_on_onnx_runtime_imports_no_onnx_package(tiny_dir: Path) -> None:
    """The reason for the writer: ``import onnx`` costs seconds (``ml_dtypes``) in every process loading a model."""
    pytest.importorskip("onnxruntime")
    code = ("import sys; from e5studio.engine.embedder import Embedder; from e5studio.settings import EngineSettings;"
            f"e = Embedder.load(EngineSettings(model={str(tiny_dir)!r}, device='cpu', precision='int8'));"
            "e.embed(['query: x']); print(e.runtime);"
            "print(sorted(m for m in ('onnx', 'ml_dtypes') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         check=True).stdout
    assert "onnxruntime-int8" in out and out.strip().endswith("[]"), out
