"""The int8 peers of the throughput benchmark: the machine's int8 matmul peak, and ONNX Runtime's own dynamic
int8 quantization (``quantize_dynamic``, per-channel weights) of an fp32 ONNX graph of the same encoder.

The peer's fp32 graph is the engine's own graph builder (:mod:`e5studio.engine.onnx_graph`) with every dense
layer written as ``MatMul`` + ``Add`` (the form ``quantize_dynamic`` rewrites into
``DynamicQuantizeLinear`` + ``MatMulInteger``), weights stored in the model; ONNX Runtime then runs it the
usual way: batches of 32 texts, length-sorted, padded, mean pooling over the mask.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch


def int8_matmul_peak(threads: int) -> float:
    """Best GOP/s (multiply + add = 2 ops) of a large u8 x s8 -> s32 matmul: ONNX Runtime's MatMulInteger and
    torch's FBGEMM quantized linear, whichever is faster."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    n = 2048
    rng = np.random.default_rng(0)
    a = rng.integers(0, 128, (n, n), dtype=np.uint8)
    b = rng.integers(-127, 128, (n, n), dtype=np.int8)
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["a", "b"], ["y"])], "peak",
                              [helper.make_tensor_value_info("a", TensorProto.UINT8, [n, n])],
                              [helper.make_tensor_value_info("y", TensorProto.INT32, [n, n])],
                              [numpy_helper.from_array(b, "b")])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    session = ort.InferenceSession(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                                                     ir_version=onnx.IR_VERSION).SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    best = min(_time(lambda: session.run(None, {"a": a})) for _ in range(5))
    from e5studio.engine.int8_kernels import Int8Linear

    layer = Int8Linear(torch.randn(n, n) * 0.05, torch.zeros(n), None)
    x = torch.randn(n, n)
    best = min([best] + [_time(lambda: layer(x)) for _ in range(5)])
    return 2 * n**3 / best / 1e9


def _time(fn: Callable[[], object]) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


class OrtDynamicInt8:
    """ONNX Runtime's dynamic int8 quantization of the encoder, run the way ONNX Runtime users run it."""

    def __init__(self, encoder: torch.nn.Module, tokenize: Callable[[Sequence[str]], list[np.ndarray]],
                 threads: int, batch_size: int = 32) -> None:
        import onnx
        import onnxruntime as ort
        from onnxruntime.quantization import QuantType, quantize_dynamic

        from e5studio.engine.onnx_graph import build_graph, encoder_weights

        weights = {name: w for name, w in encoder_weights(encoder).items()}
        for name in list(weights):
            if name.endswith(("qkv.weight", "attn_out.weight", "ffn_in.weight", "ffn_out.weight")):
                weights[name] = weights[name].t().contiguous()  # [in, out] for MatMul

        def matmul_add(node: Callable[..., str], x: str, prefix: str) -> str:
            return node("Add", [node("MatMul", [x, f"{prefix}.weight"], f"{prefix}_mm"), f"{prefix}.bias"], prefix)

        # the weights in the model itself (quantize_dynamic reads them)
        model = onnx.ModelProto.FromString(build_graph(encoder, weights, matmul_add, embedded=frozenset(weights)))
        with tempfile.TemporaryDirectory() as tmp:
            fp32, int8 = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            onnx.save(model, fp32)
            quantize_dynamic(fp32, int8, per_channel=True, weight_type=QuantType.QInt8)
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.log_severity_level = 3
            self.session = ort.InferenceSession(str(int8), options, providers=["CPUExecutionProvider"])
        self.tokenize = tokenize
        self.batch_size = batch_size

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from e5studio.engine.onnx_graph import graph_inputs

        ids = self.tokenize(texts)
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
        out = np.empty((len(ids), 0), dtype=np.float32)
        rows: dict[int, np.ndarray] = {}
        for start in range(0, len(order), self.batch_size):
            idx = order[start:start + self.batch_size]
            lengths = np.array([len(ids[i]) for i in idx])
            feed, _ = graph_inputs([ids[i] for i in idx])  # the graph's packed layout
            hidden = self.session.run(["hidden"], feed)[0]  # [T, d]: the real tokens, sequence after sequence
            pooled = np.add.reduceat(hidden, np.cumsum(lengths) - lengths, axis=0) / lengths[:, None]
            pooled /= np.linalg.norm(pooled, axis=1, keepdims=True)
            rows.update(zip(idx, pooled, strict=True))
        out = np.stack([rows[i] for i in range(len(ids))]).astype(np.float32)
        return out
