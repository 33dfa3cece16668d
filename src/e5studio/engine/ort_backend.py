"""Few-token micro-batches (single queries) on ONNX Runtime's CPU kernels, the encoder's weights shared.

A single E5 query is a few dozen tokens. For such products of a few rows with a large weight matrix,
ONNX Runtime's MLAS GEMM on a weight it prepacks once runs about 1.4x faster on AVX2 than oneDNN's (the
fastest torch kernel for few rows, :mod:`e5studio.engine.packed`), and one ``session.run`` replaces some sixty
torch operator calls. For many rows torch's padding-free encoder stays faster (no padding in the dense
layers), so :class:`~e5studio.engine.backend.TorchBackend` sends micro-batches of fewer than
:data:`~e5studio.engine.packed.FEW_ROWS` tokens here and computes the others itself.

The ONNX graph is written here, from :class:`~e5studio.engine.encoder.BertEncoder`'s structure (no export
tracing): the same post-LayerNorm BERT block on the padded [B, L] layout with a key bias of 0 / -inf, hidden
states kept 2-D [B*L, d] so that every dense layer is one ``Gemm`` with the torch weight [out, in] as is
(``transB``). The graph's weights are external-data placeholders that the session fills with the encoder's
own tensors (``add_external_initializers``): the weights are not copied, only prepacked by MLAS.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from e5studio.engine.encoder import BertEncoder

OPSET = 20  # the first with a standard Gelu operator


def available() -> bool:
    """Whether ONNX Runtime and the onnx package (to write the graph) are installed."""
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError:
        return False
    return True


def encoder_weights(encoder: BertEncoder) -> dict[str, torch.Tensor]:
    """The float32 tensors the graph uses, by graph name (views of the encoder's parameters, no copies)."""
    weights = {
        "word_embeddings": encoder.word_embeddings.weight,
        "position_embeddings": encoder.position_embeddings.weight,
        "token_type_0": encoder.token_type_embeddings.weight[0],
        "embeddings_norm.weight": encoder.embeddings_norm.weight,
        "embeddings_norm.bias": encoder.embeddings_norm.bias,
    }
    for i, layer in enumerate(encoder.layers):
        for name in ("qkv", "attn_out", "ffn_in", "ffn_out", "attn_norm", "ffn_norm"):
            module = getattr(layer, name)
            weights[f"layers.{i}.{name}.weight"] = module.weight
            weights[f"layers.{i}.{name}.bias"] = module.bias
    return {k: v.detach() for k, v in weights.items()}


def build_graph(encoder: BertEncoder) -> Any:
    """The encoder as an ``onnx.ModelProto``: inputs ``input_ids`` int64 [B, L], ``positions`` int64 [L],
    ``key_bias`` float32 [B, 1, 1, L] (0 for a real key, -inf for padding); output ``hidden`` float32
    [B*L, d], the last hidden state of every position. Weights are external-data placeholders (no bytes)."""
    import onnx
    from onnx import TensorProto, helper

    config = encoder.config
    d, h = config.hidden_size, config.num_attention_heads
    dh = d // h
    nodes: list[Any] = []
    initializers: list[Any] = []

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def ints(name: str, values: list[int]) -> str:  # a 1-D int64 constant
        initializers.append(helper.make_tensor(name, TensorProto.INT64, [len(values)], values))
        return name

    def scalar(name: str, value: float, dtype: int) -> str:
        initializers.append(helper.make_tensor(name, dtype, [], [value]))
        return name

    for name, tensor in encoder_weights(encoder).items():  # filled in by the session: no bytes here
        proto = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=list(tensor.shape))
        proto.data_location = TensorProto.EXTERNAL
        proto.external_data.add(key="location", value="e5studio-encoder-weights")
        proto.external_data.add(key="offset", value="0")
        proto.external_data.add(key="length", value=str(tensor.numel() * 4))
        initializers.append(proto)

    flat = ints("shape_flat", [-1, d])  # [B*L, d]
    scale = scalar("scale", 1.0 / math.sqrt(dh), TensorProto.FLOAT)
    idx = [scalar(f"index_{j}", j, TensorProto.INT64) for j in range(3)]
    # the attention layout [B, L, 3, H, Dh] from the shape of input_ids [B, L]
    heads_shape = node("Concat", [node("Shape", ["input_ids"], "ids_shape"), ints("heads_tail", [3, h, dh])],
                       "heads_shape", axis=0)

    words = node("Gather", ["word_embeddings", "input_ids"], "words")  # [B, L, d]
    positions = node("Gather", ["position_embeddings", "positions"], "position_vectors")  # [L, d]
    x = node("Add", [node("Add", [words, positions], "embeddings_sum"), "token_type_0"], "embeddings")
    x = node("Reshape", [x, flat], "embeddings_flat")  # [B*L, d]
    x = node("LayerNormalization", [x, "embeddings_norm.weight", "embeddings_norm.bias"], "hidden_0",
             axis=-1, epsilon=config.layer_norm_eps)
    for i in range(config.num_hidden_layers):
        p = f"layers.{i}."

        def dense(inp: str, name: str, out: str, p: str = p) -> str:
            return node("Gemm", [inp, f"{p}{name}.weight", f"{p}{name}.bias"], out, transB=1)

        qkv = dense(x, "qkv", f"{p}qkv")  # [B*L, 3d]
        qkv = node("Reshape", [qkv, heads_shape], f"{p}qkv_heads")  # [B, L, 3, H, Dh]
        qkv = node("Transpose", [qkv], f"{p}qkv_t", perm=[2, 0, 3, 1, 4])  # [3, B, H, L, Dh]
        q, k, v = (node("Gather", [qkv, idx[j]], f"{p}{n}", axis=0) for j, n in enumerate("qkv"))  # [B, H, L, Dh]
        scores = node("MatMul", [q, node("Transpose", [k], f"{p}k_t", perm=[0, 1, 3, 2])], f"{p}scores_raw")
        scores = node("Add", [node("Mul", [scores, scale], f"{p}scores_scaled"), "key_bias"], f"{p}scores")
        probs = node("Softmax", [scores], f"{p}probs", axis=-1)  # [B, H, L, L]
        ctx = node("MatMul", [probs, v], f"{p}context")  # [B, H, L, Dh]
        ctx = node("Transpose", [ctx], f"{p}context_t", perm=[0, 2, 1, 3])  # [B, L, H, Dh]
        ctx = node("Reshape", [ctx, flat], f"{p}context_flat")  # [B*L, d]
        x = node("Add", [dense(ctx, "attn_out", f"{p}attn_out"), x], f"{p}attn_residual")
        x = node("LayerNormalization", [x, f"{p}attn_norm.weight", f"{p}attn_norm.bias"], f"{p}attn_normed",
                 axis=-1, epsilon=config.layer_norm_eps)
        inner = dense(x, "ffn_in", f"{p}ffn_in")  # [B*L, ffn]
        if config.hidden_act == "relu":
            inner = node("Relu", [inner], f"{p}ffn_act")
        else:
            approximate = "none" if config.hidden_act == "gelu" else "tanh"
            inner = node("Gelu", [inner], f"{p}ffn_act", approximate=approximate)
        x = node("Add", [dense(inner, "ffn_out", f"{p}ffn_out"), x], f"{p}ffn_residual")
        x = node("LayerNormalization", [x, f"{p}ffn_norm.weight", f"{p}ffn_norm.bias"], f"hidden_{i + 1}",
                 axis=-1, epsilon=config.layer_norm_eps)
    nodes.append(helper.make_node("Identity", [x], ["hidden"], name="hidden"))

    graph = helper.make_graph(
        nodes, "e5studio_bert_encoder",
        inputs=[helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["B", "L"]),
                helper.make_tensor_value_info("positions", TensorProto.INT64, ["L"]),
                helper.make_tensor_value_info("key_bias", TensorProto.FLOAT, ["B", 1, 1, "L"])],
        outputs=[helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["T", d])],
        initializer=initializers,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                             producer_name="e5studio", ir_version=onnx.IR_VERSION)


class OrtEncoder:
    """An ONNX Runtime CPU session over :func:`build_graph`, reading the encoder's weights in place.

    ``encoder`` must stay alive and unchanged as long as this object: the session reads its tensors' memory.
    """

    def __init__(self, encoder: BertEncoder, threads: int) -> None:
        import onnxruntime as ort

        weights = encoder_weights(encoder)
        if any(w.dtype != torch.float32 or w.device.type != "cpu" for w in weights.values()):
            raise ValueError("the ONNX Runtime path takes a float32 encoder on the CPU")
        self._arrays = {k: np.ascontiguousarray(v.numpy()) for k, v in weights.items()}  # views, kept alive
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        names = list(self._arrays)
        self._values = [ort.OrtValue.ortvalue_from_numpy(self._arrays[n]) for n in names]  # must outlive the session
        options.add_external_initializers(names, self._values)
        self.session = ort.InferenceSession(build_graph(encoder).SerializeToString(), options,
                                            providers=["CPUExecutionProvider"])
        self.threads = threads

    def hidden(self, input_ids: np.ndarray, key_bias: np.ndarray) -> np.ndarray:
        """input_ids int64 [B, L], key_bias float32 [B, 1, 1, L] -> last hidden states float32 [B*L, d]."""
        positions = np.arange(input_ids.shape[1], dtype=np.int64)
        return self.session.run(["hidden"], {"input_ids": input_ids, "positions": positions,
                                             "key_bias": key_bias})[0]

    def embed_batch(self, sequences: Sequence[np.ndarray]) -> np.ndarray:
        """Token-id arrays -> float32 [B, d] mean-pooled, unit rows."""
        lengths = np.fromiter((len(s) for s in sequences), dtype=np.int64, count=len(sequences))
        b, length = len(sequences), int(lengths.max())
        ids = np.zeros((b, length), dtype=np.int64)  # [B, L]
        real = np.arange(length)[None, :] < lengths[:, None]  # [B, L]
        ids[real] = np.concatenate(sequences)
        bias = np.where(real, np.float32(0.0), np.float32(-np.inf)).astype(np.float32)[:, None, None, :]
        hidden = self.hidden(ids, bias).reshape(b, length, -1)  # [B, L, d]
        if b == 1:
            pooled = hidden[0].mean(axis=0, dtype=np.float32)[None]  # [1, d]
        else:
            pooled = (hidden * real[:, :, None]).sum(axis=1, dtype=np.float32) / lengths[:, None]  # [B, d]
        norms = np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
        return (pooled / norms).astype(np.float32, copy=False)
