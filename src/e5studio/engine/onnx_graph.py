"""Few-token micro-batches (single queries) on ONNX Runtime's CPU kernels, the encoder's weights shared.

A single E5 query is a few dozen tokens. For such products of a few rows with a large weight matrix, ONNX
Runtime's MLAS GEMM on a weight it prepacks once beats oneDNN's (the fastest torch kernel for few rows,
:class:`~e5studio.engine.bert.FewRowsKernels`), and one ``session.run`` replaces some sixty torch operator
calls. The runtime table (:mod:`e5studio.engine.runtimes`, ``few_tokens``) sends here every micro-batch that is
computed on all the threads (single queries and requests of up to the token budget); inputs of several
micro-batches run one per core on MKL's sgemm in torch's encoder (``benchmarks/query_profile.py`` and
``benchmarks/throughput.py`` measure both).

The ONNX graph is written here from the encoder's one description (:func:`~e5studio.engine.bert.embedding_layer`
and :func:`~e5studio.engine.bert.bert_block` over :class:`GraphKernels`, no export tracing): the post-LayerNorm
BERT block on the packed rows [T, d] of a micro-batch's real tokens, as in torch's encoder, so every dense layer
is one ``Gemm`` with the torch weight [out, in] as is (``transB``) over real tokens only; attention gathers the
rows into the padded [B, L] layout with a key bias of 0 / -inf and gathers the real ones back
(:func:`graph_inputs`). A batch of 32 single queries pads to ~1.9x its real tokens (SciFact's test queries):
computed packed, it takes ~0.6x the time; a single query pays two row copies per layer. The graph's weights are
external-data placeholders that the session fills with the encoder's own tensors
(``add_external_initializers``): the weights are not copied, only prepacked by MLAS.

:class:`OrtRuntime` pads a micro-batch's token ids, runs the session and pools in numpy, all here: a request
computed on ONNX Runtime runs in this module alone. Pooling in numpy rather than torch's
:func:`~e5studio.engine.bert.pool` has two reasons: ONNX Runtime's threads keep spinning for a moment after a
run, and a torch operator started then, on torch's own thread pool, competes with them for the cores; and the
two libraries sum the squares of the L2 norm in different orders, so switching would change these vectors in
their last bits. The arithmetic is the same recipe: the mean over each sequence's real tokens, then L2.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from e5studio.engine import onnx_proto as proto
from e5studio.engine.bert import DENSE_LAYERS, NORM_LAYERS, bert_block, embedding_layer
from e5studio.engine.encoder import BertEncoder

# emits the nodes of one dense layer: (node, input name, layer prefix such as "layers.3.qkv") -> output name
DenseOp = Callable[[Callable[..., str], str, str], str]

OPSET = 20  # the first with a standard Gelu operator
MS_DOMAIN = "com.microsoft"  # ONNX Runtime's own operators (the int8 graph's MatMulIntegerToFloat)


def available() -> bool:
    """Whether ONNX Runtime is installed (the graph is written here: :mod:`~e5studio.engine.onnx_proto`)."""
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def encoder_weights(encoder: BertEncoder) -> dict[str, torch.Tensor]:
    """The float32 tensors the graph uses, by graph name (views of the encoder's parameters, no copies)."""
    weights = {
        "word_embeddings": encoder.word_embeddings.weight,
        "position_embeddings": encoder.position_embeddings.weight,
        "token_type_embeddings.0": encoder.token_type_embeddings.weight[0],
        "embeddings_norm.weight": encoder.embeddings_norm.weight,
        "embeddings_norm.bias": encoder.embeddings_norm.bias,
    }
    for i, layer in enumerate(encoder.layers):
        for name in (*DENSE_LAYERS, *NORM_LAYERS):
            module = getattr(layer, name)
            weights[f"layers.{i}.{name}.weight"] = module.weight
            weights[f"layers.{i}.{name}.bias"] = module.bias
    return {k: v.detach() for k, v in weights.items()}


class GraphKernels:
    """Kernels that emit ONNX nodes (values are graph names): the input layer's
    (:class:`~e5studio.engine.bert.InputKernels`) and one layer's (:class:`~e5studio.engine.bert.LayerKernels`,
    weights under ``prefix``), on the packed rows [T, d] of the real tokens: dense layers are ``Gemm`` on the
    torch weight [out, in] as is (``transB``), or ``dense_op`` when given (the int8 graph); attention gathers
    the rows into the padded [B, L] layout (graph input ``pad_slots``), runs there with the graph input
    ``key_bias``, and gathers the real tokens' rows back (``pack_slots``)."""

    def __init__(self, node: Callable[..., str], prefix: str, activation: tuple[str, str], eps: float,
                 heads_shape: str, flat: str, scale: str, idx: list[str], dense_op: DenseOp | None = None) -> None:
        self.node, self.p, self.activation, self.eps = node, prefix, activation, eps
        self.heads_shape, self.flat, self.scale, self.idx = heads_shape, flat, scale, idx
        self.dense_op = dense_op
        self._sums = 0

    def lookup(self, table: str, ids: str) -> str:
        return self.node("Gather", [table, ids], f"{table}_rows")

    def first_row(self, table: str) -> str:
        return f"{table}.0"  # a weight of its own (:func:`encoder_weights`)

    def add(self, a: str, b: str) -> str:
        self._sums += 1
        return self.node("Add", [a, b], f"{self.p}sum_{self._sums}")

    def rows(self, x: str) -> str:
        return self.node("Reshape", [x, self.flat], f"{x}_flat")  # [B*L, d]

    def dense(self, x: str, name: str, activation: bool = False, residual: str | None = None) -> str:
        p, node = self.p, self.node
        if self.dense_op is not None:
            y = self.dense_op(node, x, f"{p}{name}")
        else:
            y = node("Gemm", [x, f"{p}{name}.weight", f"{p}{name}.bias"], f"{p}{name}", transB=1)
        if activation:
            kind, approximate = self.activation
            if kind == "relu":
                return node("Relu", [y], f"{p}{name}_act")
            return node("Gelu", [y], f"{p}{name}_act", approximate=approximate)
        return y if residual is None else node("Add", [y, residual], f"{p}{name}_residual")

    def attention(self, qkv: str, batch: Any) -> str:
        p, node = self.p, self.node
        # the packed rows [T, 3d] into the padded layout [B*L, 3d] (a padding slot repeats row 0: its key is
        # masked by key_bias, so its value is weighted 0, and its own output row is not gathered back)
        qkv = node("Gather", [qkv, "pad_slots"], f"{p}qkv_padded")
        qkv = node("Reshape", [qkv, self.heads_shape], f"{p}qkv_heads")  # [B, L, 3, H, Dh]
        qkv = node("Transpose", [qkv], f"{p}qkv_t", perm=[2, 0, 3, 1, 4])  # [3, B, H, L, Dh]
        q, k, v = (node("Gather", [qkv, self.idx[j]], f"{p}{n}", axis=0) for j, n in enumerate("qkv"))
        scores = node("MatMul", [q, node("Transpose", [k], f"{p}k_t", perm=[0, 1, 3, 2])], f"{p}scores_raw")
        scores = node("Add", [node("Mul", [scores, self.scale], f"{p}scores_scaled"), "key_bias"], f"{p}scores")
        probs = node("Softmax", [scores], f"{p}probs", axis=-1)  # [B, H, L, L]
        ctx = node("MatMul", [probs, v], f"{p}context")  # [B, H, L, Dh]
        ctx = node("Transpose", [ctx], f"{p}context_t", perm=[0, 2, 1, 3])  # [B, L, H, Dh]
        ctx = node("Reshape", [ctx, self.flat], f"{p}context_flat")  # [B*L, d]
        return node("Gather", [ctx, "pack_slots"], f"{p}context_packed")  # [T, d]: the real tokens' rows

    def norm(self, x: str, name: str) -> str:
        p = self.p
        return self.node("LayerNormalization", [x, f"{p}{name}.weight", f"{p}{name}.bias"], f"{p}{name}",
                         axis=-1, epsilon=self.eps)


# the graph's int64 inputs (:func:`graph_inputs` makes them), by name and length
GRAPH_INDEX_INPUTS = (("input_ids", "T"), ("positions", "T"), ("pad_slots", "BL"), ("pack_slots", "T"))


def build_graph(encoder: BertEncoder, weights: Mapping[str, torch.Tensor] | None = None,
                dense_op: DenseOp | None = None, embedded: frozenset[str] = frozenset()) -> bytes:
    """The encoder as a serialized ONNX model (:mod:`~e5studio.engine.onnx_proto`) on the packed tokens of a
    micro-batch (:func:`graph_inputs`): int64 ``input_ids`` and ``positions`` [T], ``pad_slots`` [B*L] and
    ``pack_slots`` [T], float32 ``key_bias`` [B, 1, 1, L] (0 for a real key, -inf for padding); output
    ``hidden`` float32 [T, d], the last hidden state of every real token. Weights are external-data
    placeholders (no bytes): ``weights`` by graph name (default :func:`encoder_weights`); ``dense_op`` emits a
    dense layer's nodes in place of ``Gemm`` (the int8 graph); the tensors named in ``embedded`` are stored in
    the model (bytes copied: the session then owns them)."""
    config = encoder.config
    d, h = config.hidden_size, config.num_attention_heads
    dh = d // h
    nodes: list[bytes] = []
    initializers: list[bytes] = []

    def node(op: str, inputs: list[str], output: str, domain: str = "", **attrs: Any) -> str:
        nodes.append(proto.node(op, inputs, [output], name=output, domain=domain, **attrs))
        return output

    def ints(name: str, values: list[int]) -> str:  # a 1-D int64 constant
        initializers.append(proto.tensor(name, np.asarray(values, dtype=np.int64)))
        return name

    def scalar(name: str, value: float | int, dtype: type) -> str:
        initializers.append(proto.tensor(name, np.asarray(value, dtype=dtype)))
        return name

    for name, tensor in (encoder_weights(encoder) if weights is None else weights).items():  # no bytes here
        array = tensor.numpy()
        if name in embedded:
            initializers.append(proto.tensor(name, array))
        else:
            initializers.append(proto.external_tensor(name, array.dtype, array.shape, "e5studio-encoder-weights",
                                                      array.nbytes))

    flat = ints("shape_flat", [-1, d])  # [B*L, d]
    scale = scalar("scale", 1.0 / math.sqrt(dh), np.float32)
    idx = [scalar(f"index_{j}", j, np.int64) for j in range(3)]
    # the attention layout [B, L, 3, H, Dh] from the shape of key_bias [B, 1, 1, L]
    batch_shape = node("Gather", [node("Shape", ["key_bias"], "bias_shape"), ints("batch_dims", [0, 3])],
                       "batch_shape", axis=0)  # [B, L]
    heads_shape = node("Concat", [batch_shape, ints("heads_tail", [3, h, dh])], "heads_shape", axis=0)

    def kernels(prefix: str) -> GraphKernels:
        return GraphKernels(node, prefix, config.activation, config.layer_norm_eps, heads_shape, flat, scale, idx,
                            dense_op)

    x = embedding_layer(kernels(""), "input_ids", "positions")  # [T, d]
    for i in range(config.num_hidden_layers):
        x = bert_block(kernels(f"layers.{i}."), x, None)
    nodes.append(proto.node("Identity", [x], ["hidden"], name="hidden"))
    inputs = [proto.value_info(name, proto.INT64, [rows]) for name, rows in GRAPH_INDEX_INPUTS] + \
        [proto.value_info("key_bias", proto.FLOAT, ["B", 1, 1, "L"])]
    return proto.model(nodes, "e5studio_bert_encoder", inputs, [proto.value_info("hidden", proto.FLOAT, ["T", d])],
                       initializers, [("", OPSET), (MS_DOMAIN, 1)], producer="e5studio")


class OrtRuntime:
    """The encoder as an ONNX Runtime CPU session (:func:`build_graph`), reading the encoder's weights in place:
    token ids in, float32 [b, d] unit rows out.

    ``encoder`` must stay alive and unchanged as long as this object: the session reads its tensors' memory.
    """

    name = "onnxruntime"

    def __init__(self, encoder: BertEncoder, threads: int, weights: Mapping[str, torch.Tensor] | None = None,
                 dense_op: DenseOp | None = None, embedded: frozenset[str] = frozenset(),
                 worker_session: bool = False) -> None:
        import onnxruntime as ort

        weights = encoder_weights(encoder) if weights is None else weights
        if any(w.device.type != "cpu" or w.dtype == torch.float16 or w.dtype == torch.bfloat16
               for w in weights.values()):
            raise ValueError("the ONNX Runtime path takes a float32 encoder on the CPU")
        self._arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in weights.items()  # views, kept alive
                        if k not in embedded}
        names = list(self._arrays)
        self._values = [ort.OrtValue.ortvalue_from_numpy(self._arrays[n]) for n in names]  # must outlive the sessions
        model = build_graph(encoder, weights, dense_op, embedded)
        # one session per thread count: ``threads`` for the calling thread; with ``worker_session``, also one of a
        # single thread for the per-core compute workers (each worker's torch count is 1), which run their
        # micro-batches side by side: a session's own intra-op threads split one micro-batch's small operators
        # worse than two cores each running a whole micro-batch (benchmarks/throughput.py, int8)
        counts = sorted({threads, 1} if worker_session and threads > 1 else {threads}, reverse=True)
        self.sessions: dict[int, Any] = {}
        for count in counts:
            options = ort.SessionOptions()
            options.intra_op_num_threads = count
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.log_severity_level = 3
            options.add_external_initializers(names, self._values)
            session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
            # the Python wrapper keeps the model's bytes (to rebuild the session on a provider fallback, which a
            # CPU-only session never does): with weights stored in the model that is a second copy of them
            session._model_bytes = None
            self.sessions[count] = session
        del model
        self.session = self.sessions[threads]
        self.threads = threads

    def session_here(self) -> Any:
        """The session for the calling thread: the one of its torch thread count (a compute worker's), else the
        one of ``threads``."""
        return self.sessions.get(torch.get_num_threads(), self.session)

    def hidden(self, sequences: Sequence[np.ndarray]) -> tuple[np.ndarray, np.ndarray | None]:
        """Token-id arrays -> (the last hidden states float32 [B, L, d] in the padded layout, zero rows at the
        padding; the real-token mask [B, L], None where nothing is padded)."""
        feed, real = graph_inputs(sequences)
        b, length = feed["key_bias"].shape[0], feed["key_bias"].shape[3]
        packed = self.session_here().run(["hidden"], feed)[0]  # [T, d]
        if real is None:
            return packed.reshape(b, length, -1), None
        hidden = np.zeros((b * length, packed.shape[1]), dtype=np.float32)
        hidden[feed["pack_slots"]] = packed
        return hidden.reshape(b, length, -1), real

    def rows(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Token-id arrays -> float32 [b, d] mean-pooled unit rows (pooled here, in numpy: module docstring)."""
        hidden, real = self.hidden(sequences)  # [B, L, d]
        if real is None:
            pooled = hidden.mean(axis=1, dtype=np.float32)  # [B, d]
        else:
            lengths = real.sum(axis=1, keepdims=True).astype(np.float32)  # [B, 1]
            pooled = (hidden * real[:, :, None]).sum(axis=1, dtype=np.float32) / lengths  # [B, d]
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32, copy=False)


def graph_inputs(sequences: Sequence[np.ndarray]) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
    """Token-id arrays -> (the graph's inputs, the real-token mask [B, L] or None where nothing is padded).
    The dense layers compute the T real tokens only, packed sequence after sequence (``input_ids``,
    ``positions``); attention reads them in the padded [B, L] layout: ``pad_slots`` [B*L] is the packed row of
    each slot (row 0 for padding: a key masked out), ``pack_slots`` [T] the slot of each packed row,
    ``key_bias`` [B, 1, 1, L] 0 for a real key and -inf for padding."""
    lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
    if len(lengths) == 0 or lengths.min() < 1:
        raise ValueError("graph_inputs() needs at least one non-empty sequence")
    b, length = len(lengths), int(lengths.max())
    ids = np.concatenate(sequences).astype(np.int64, copy=False)  # [T]
    total = len(ids)
    starts = np.cumsum(lengths) - lengths  # [B]: each sequence's first packed row
    positions = np.arange(total, dtype=np.int64) - np.repeat(starts, lengths)  # [T]
    if lengths.min() == length:  # nothing padded: slots and packed rows coincide
        slots = np.arange(total, dtype=np.int64)
        feed: dict[str, np.ndarray] = {"input_ids": ids, "positions": positions, "pad_slots": slots,
                                       "pack_slots": slots, "key_bias": np.zeros((b, 1, 1, length), dtype=np.float32)}
        return feed, None
    real = np.arange(length)[None, :] < lengths[:, None]  # [B, L]
    pad_slots = np.zeros(b * length, dtype=np.int64)
    pack_slots = np.flatnonzero(real).astype(np.int64)  # sequence after sequence, as the packed rows
    pad_slots[pack_slots] = np.arange(total, dtype=np.int64)
    bias = np.where(real, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)[:, None, None, :]
    return {"input_ids": ids, "positions": positions, "pad_slots": pad_slots, "pack_slots": pack_slots,
            "key_bias": bias}, real
