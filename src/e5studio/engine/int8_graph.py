"""int8 micro-batches as one compiled ONNX Runtime graph (the default int8 runtime where ONNX Runtime is
installed).

The torch int8 runtime (:mod:`e5studio.engine.int8_kernels`) makes some fifteen operator calls per dense layer;
for a single query of a few dozen tokens those calls, not the arithmetic, are most of the time. Here the same
arithmetic is one graph (the encoder's one description, :func:`~e5studio.engine.onnx_graph.build_graph`, with
every dense layer emitted by :func:`dense_op`) that ONNX Runtime runs in one ``session.run`` on MLAS's
integer GEMM (u8 x s8 -> s32; VNNI where the CPU has it).

Every dense layer computes what :class:`~e5studio.engine.int8_kernels.Int8Linear` computes, from the same
quantized weights (int8 per output channel, SmoothQuant factors from the same calibration), in five
operators: ``x / s`` (smoothed layers); each row mapped onto 0..127 by its own min and max and rounded
(``QuantizeLinear`` per row); the integer product times the weight's per-channel scales (ONNX Runtime's
``MatMulIntegerToFloat``: the int32 sums never leave the GEMM); then ``* step + low x column_sums + bias``
(the offset as one rank-1 ``Gemm``). Written with ONNX's plain ops (Round, Cast, MatMulInteger, Cast, four
element-wise passes over [T, out]) the same arithmetic spent more time in those passes than in the GEMM.

**Every micro-batch runs here, not only single queries.** The two runtimes' fp32 steps (LayerNorm, attention,
GELU) differ in their last bits; that moves a few activations across a rounding boundary of the next layer's
int8 grid, and each such flip grows layer by layer to the size of the quantization noise itself: measured on
MiniLM, a text alone on this graph vs in a batch on FBGEMM differ by cosine 0.9989, not the 0.9999 asked. On
one graph a text alone and in any padded batch agree to cosine 0.9999999 (the tests check it). Only int8
weights enter the graph, stored in the model the sessions read (each session owns its prepacked copy); the
encoder's fp32 dense weights and FBGEMM's packed ones, used to quantize, are released after the session is
built. Large inputs run their micro-batches side by side, one per core, on a session of one thread each
(:class:`~e5studio.engine.onnx_graph.OrtRuntime`'s worker session); a single query runs on all the threads.
``--cpu-runtime torch`` keeps the FBGEMM runtime.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from e5studio.engine.bert import DENSE_LAYERS
from e5studio.engine.encoder import BertEncoder
from e5studio.engine.int8_kernels import ACTIVATION_MAX, Int8Kernels, Int8Linear
from e5studio.engine.onnx_graph import MS_DOMAIN, DenseOp, OrtRuntime, encoder_weights


def dense_op(smoothed: frozenset[str]) -> DenseOp:
    """The emitter of one int8 dense layer's nodes; ``smoothed``: the layer names that have smoothing factors."""

    def nodes(node: Callable[..., str], x: str, p: str) -> str:
        """Layer ``p`` (e.g. ``layers.3.qkv``) on ``x`` [T, in] -> [T, out] fp32. Graph weights:
        ``{p}.qweight`` int8 [in, out], ``{p}.w_scale`` [out], ``{p}.column_sums`` [out], ``{p}.bias`` [out],
        ``{p}.inv_smooth`` [in] (smoothed layers)."""
        if p.rsplit(".", 1)[-1] in smoothed:
            x = node("Mul", [x, f"{p}.inv_smooth"], f"{p}_smoothed")  # [T, in]
        high = node("ReduceMax", [x, "axis_1"], f"{p}_high", keepdims=1)  # [T, 1]
        low = node("ReduceMin", [x, "axis_1"], f"{p}_low", keepdims=1)  # [T, 1]
        span = node("Max", [node("Sub", [high, low], f"{p}_span_raw"), "tiny"], f"{p}_span")
        step = node("Div", [span, "activation_max"], f"{p}_step")  # [T, 1]
        # each row onto 0..127 by its own step, rounded half to even, as uint8 (per-axis along the rows)
        q = node("QuantizeLinear", [node("Sub", [x, low], f"{p}_shifted"),
                                    node("Reshape", [step, "rows_flat"], f"{p}_step_rows")], f"{p}_q", axis=0)
        # the integer product times the weight's per-channel scales, fused in one MLAS call
        y = node("MatMulIntegerToFloat", [q, f"{p}.qweight", "one", f"{p}.w_scale"], f"{p}_dq",
                 domain=MS_DOMAIN)  # [T, out]
        offset = node("Gemm", [low, f"{p}.column_sums", f"{p}.bias"], f"{p}_offset")  # low x sums + bias
        return node("Add", [node("Mul", [y, step], f"{p}_unstepped"), offset], f"{p}_out")  # [T, out]

    return nodes


def graph_weights(encoder: BertEncoder, layers: Sequence[Int8Kernels]) -> dict[str, torch.Tensor]:
    """The graph's tensors by name: the encoder's fp32 embeddings and norms, each layer's int8 weights
    ([in, out], contiguous) and fp32 scales, sums and biases (from the layers' quantization, not recomputed)."""
    weights = {k: v for k, v in encoder_weights(encoder).items()
               if not any(k.endswith(f".{n}.weight") for n in DENSE_LAYERS)}
    for i, kernels in enumerate(layers):
        for name in DENSE_LAYERS:
            weights.update(layer_weights(kernels.linear[name], f"layers.{i}.{name}"))
    return weights


def layer_weights(linear: Int8Linear, p: str) -> dict[str, torch.Tensor]:
    """One dense layer's graph tensors (:func:`dense_op`'s names) from its quantization, not recomputed."""
    q, scales = linear.quantized()  # int8 [out, in], fp32 [out]
    weights = {f"{p}.qweight": q.t().contiguous(),  # [in, out]
               f"{p}.w_scale": scales, f"{p}.column_sums": linear.column_sums.reshape(1, -1),  # [1, out]: Gemm's B
               f"{p}.bias": linear.bias}
    if linear.inv_smooth is not None:
        weights[f"{p}.inv_smooth"] = linear.inv_smooth
    return weights


def constants() -> dict[str, torch.Tensor]:
    """The constants :func:`dense_op`'s nodes read."""
    return {"axis_1": torch.tensor([1], dtype=torch.int64), "tiny": torch.tensor(1e-12),
            "activation_max": torch.tensor(float(ACTIVATION_MAX)), "one": torch.tensor(1.0),
            "rows_flat": torch.tensor([-1], dtype=torch.int64)}


class Int8GraphRuntime(OrtRuntime):
    """The int8 encoder as one ONNX Runtime session (module docstring): token ids in, float32 [b, d] unit rows
    out (padding, pooling: :class:`~e5studio.engine.onnx_graph.OrtRuntime`)."""

    name = "onnxruntime-int8"

    def __init__(self, encoder: BertEncoder, layers: Sequence[Int8Kernels], threads: int) -> None:
        weights = graph_weights(encoder, layers)
        consts = constants()
        smoothed = frozenset(name for name in DENSE_LAYERS if f"layers.0.{name}.inv_smooth" in weights)
        super().__init__(encoder, threads, {**weights, **consts}, dense_op(smoothed),
                         embedded=frozenset([*consts, *(k for k in weights if k.endswith(".qweight"))]),
                         worker_session=True)
