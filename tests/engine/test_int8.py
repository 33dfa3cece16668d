"""int8 precision: the quality gate against fp32 on real weights, per-row independence, the kernels' arithmetic,
and where int8 is refused."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from e5studio.engine import int8_kernels, onnx_graph, runtimes
from e5studio.engine.bert import LayersRuntime, pack
from e5studio.engine.calibration import CALIBRATION_TEXTS
from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.errors import ModelError
from e5studio.retrieval.evaluate import load_eval_set, score
from e5studio.settings import EngineSettings
from tests.engine.plain import encoder_embeddings, plain_encoder
from tests.reference import row_cosines, words_text

pytestmark = pytest.mark.skipif(not int8_kernels.available(), reason="this torch build has no FBGEMM kernels")


needs_ort = pytest.mark.skipif(not onnx_graph.available(), reason="ONNX Runtime is not installed")


@pytest.fixture(scope="module")
def minilm_int8(minilm_dir: Path) -> Embedder:
    return Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", precision="int8"))


@pytest.fixture(scope="module")
def minilm_int8_torch(minilm_dir: Path) -> Embedder:
    return Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", precision="int8", cpu_runtime="torch"))


def test_int8_loads_the_int8_runtime(minilm_int8: Embedder, minilm_int8_torch: Embedder) -> None:
    compiled = "onnxruntime-int8" if onnx_graph.available() else "cpu-int8"
    assert (minilm_int8.plan.large.name, minilm_int8.plan.few) == (compiled, None)
    assert (minilm_int8_torch.plan.large.name, minilm_int8_torch.plan.few) == ("cpu-int8", None)
    for embedder in (minilm_int8, minilm_int8_torch):
        assert embedder.precision == "int8"
        assert embedder.runtime.startswith("int8: ")
        # only the int8 copy of the dense weights is held: the encoder's fp32 ones are released
        assert all(getattr(layer, name).weight.numel() == 0 for layer in embedder.encoder.layers
                   for name in ("qkv", "attn_out", "ffn_in", "ffn_out"))


def _quality_gate(fp32: Embedder, int8: Embedder, passages: list[str], queries: list[str]) -> None:
    """Min cosine int8 vs fp32 >= 0.99, mean >= 0.998, over passages and queries."""
    p = row_cosines(int8.embed(passages, "passage"), fp32.embed(passages, "passage"))
    q = row_cosines(int8.embed(queries, "query"), fp32.embed(queries, "query"))
    assert p.min() >= 0.99 and q.min() >= 0.99, (p.min(), q.min())
    assert p.mean() >= 0.998 and q.mean() >= 0.998, (p.mean(), q.mean())
    assert p.mean() < 0.99999  # int8 really ran (not fp32 under another name)


def _test_queries(shared_data_dir: Path, n: int) -> list[str]:
    with (shared_data_dir / "scifact" / "queries.test.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["query"] for line in f][:n]
    assert len(queries) == n
    return queries


def test_quality_gate_on_minilm_sample(minilm_embedder: Embedder, minilm_int8: Embedder,
                                       scifact_passages: list[str], shared_data_dir: Path) -> None:
    """The default suite's gate: 120 SciFact passages (truncated ones among them) and 60 test queries."""
    _quality_gate(minilm_embedder, minilm_int8, scifact_passages[:120], _test_queries(shared_data_dir, 60))


@pytest.mark.slow
def test_quality_gate_on_minilm(minilm_embedder: Embedder, minilm_int8: Embedder, scifact_passages: list[str],
                                shared_data_dir: Path) -> None:
    """The full gate: 1,000 SciFact passages and 300 test queries."""
    _quality_gate(minilm_embedder, minilm_int8, scifact_passages[:1000], _test_queries(shared_data_dir, 300))


def test_a_text_alone_equals_the_same_text_in_a_mixed_batch(minilm_int8: Embedder, minilm_int8_torch: Embedder,
                                                            scifact_passages: list[str]) -> None:
    """Activations are quantized per row: a row never depends on its neighbours. On FBGEMM (attention per
    sequence) the rows are equal; on the compiled graph (padded attention) within cosine 0.9999."""
    texts = ["query: how do statins lower cholesterol", "a", words_text(scifact_passages, 600),
             *scifact_passages[:12], "query: p53"]
    for embedder in (minilm_int8_torch, minilm_int8):
        together = embedder.embed(texts)
        alone = np.concatenate([embedder.embed([t]) for t in texts])
        np.testing.assert_allclose(np.linalg.norm(together, axis=1), 1.0, rtol=0, atol=1e-5)
        if embedder is minilm_int8_torch:
            np.testing.assert_allclose(together, alone, rtol=0, atol=1e-5)
        assert row_cosines(together, alone).min() >= 0.9999, embedder.runtime


@needs_ort
def test_the_compiled_dense_layer_is_the_fbgemm_layer() -> None:
    """One int8 dense layer in the graph (int8_graph.dense_op) computes what Int8Linear computes, from the same
    quantized weights, to float32 rounding (the integer sums are exact in both)."""
    import onnx
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from e5studio.engine.int8_graph import constants, dense_op, layer_weights
    from e5studio.engine.onnx_graph import MS_DOMAIN

    gen = torch.Generator().manual_seed(3)
    weight, bias = torch.randn(512, 384, generator=gen) * 0.05, torch.randn(512, generator=gen)
    x = torch.randn(20, 384, generator=gen)
    x[:, 7] *= 30  # an outlier channel
    layer = int8_kernels.Int8Linear(weight, bias, x.abs().amax(dim=0))
    assert layer.inv_smooth is not None
    nodes: list[object] = []

    def node(op: str, inputs: list[str], output: str, **attrs: object) -> str:
        nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    out = dense_op(frozenset({"l"}))(node, "x", "l")
    tensors = {**layer_weights(layer, "l"), **constants()}
    graph = helper.make_graph(nodes, "dense", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["T", 384])],
                              [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(t.numpy(), n) for n, t in tensors.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20), helper.make_opsetid(MS_DOMAIN, 1)],
                              ir_version=onnx.IR_VERSION)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    got = session.run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, layer(x.clone()).numpy(), rtol=0, atol=1e-5)


@pytest.mark.parametrize("shape", [(64, 48), (384, 1536), (1536, 384)])
@pytest.mark.parametrize("rows", [1, 20, 300])
def test_int8_linear_is_the_quantized_product_exactly(shape: tuple[int, int], rows: int) -> None:
    """The integer sums are exact (no int16 saturation): the layer equals the same quantization computed in
    float64, and stays close to the fp32 layer."""
    k, n = shape
    gen = torch.Generator().manual_seed(rows + k)
    weight = torch.randn(n, k, generator=gen) * 0.05
    bias = torch.randn(n, generator=gen)
    x = torch.randn(rows, k, generator=gen) * 2
    x[:, 3] *= 40  # an outlier channel, as LayerNorm outputs have
    input_range = x.abs().amax(dim=0)
    layer = int8_kernels.Int8Linear(weight, bias, input_range)

    got = layer(x.clone())

    # the same quantization of the input (in fp32, as the layer does), then the product in float64
    smooth = int8_kernels.smoothing(input_range, weight)
    q, scales = int8_kernels.quantize_weight(weight * smooth[None, :])
    xs = x * layer.inv_smooth
    low, high = xs.amin(1, keepdim=True), xs.amax(1, keepdim=True)
    inv_step = int8_kernels.ACTIVATION_MAX / (high - low)
    xq = torch.round(torch.addcmul(-low * inv_step, xs, inv_step)).double()
    assert xq.min() >= 0 and xq.max() <= int8_kernels.ACTIVATION_MAX
    w = q.double() * scales.double()[:, None]
    expected = (xq @ w.T) / inv_step.double() + low.double() * w.sum(1) + bias.double()
    torch.testing.assert_close(got.double(), expected, rtol=1e-4, atol=1e-4)
    cosine = F.cosine_similarity(got, F.linear(x, weight, bias), dim=1)
    assert cosine.min() > 0.999


def test_int8_runtime_without_smoothing_and_with_it(minilm_dir: Path, minilm_embedder: Embedder,
                                                    scifact_passages: list[str]) -> None:
    """Smoothing measured on the calibration texts makes int8 closer to fp32 on real weights."""
    checkpoint = load_checkpoint(str(minilm_dir))
    plain = plain_encoder(checkpoint).requires_grad_(False)
    embedder = minilm_embedder  # for its tokenizer
    ids = embedder.tokenize(scifact_passages[:60], "passage")
    reference = encoder_embeddings(plain, ids)
    calibration = [pack(embedder.tokenize(list(CALIBRATION_TEXTS)))]
    smoothed = runtimes.build("cpu-int8", plain, 2, lambda: calibration)
    unsmoothed = LayersRuntime("cpu-int8", plain, int8_kernels.int8_layers(plain))
    with_smoothing = row_cosines(smoothed.rows(ids), reference).mean()
    without = row_cosines(unsmoothed.rows(ids), reference).mean()
    assert without < 0.9999 and with_smoothing < 0.99999
    assert with_smoothing > without


def test_int8_is_refused_where_it_cannot_run(tiny_dir: Path) -> None:
    with pytest.raises(ModelError, match="precision int8 runs on the CPU only"):
        runtimes.choose(torch.device("cuda"), torch.float16, "auto", "int8")
    with pytest.raises(ModelError, match="keeps activations in fp32"):
        runtimes.choose(torch.device("cpu"), torch.bfloat16, "auto", "int8")
    with pytest.raises(ModelError, match="unknown precision 'int4'"):
        runtimes.choose(torch.device("cpu"), torch.float32, "auto", "int4")
    if not torch.cuda.is_available():  # through the settings: the device check answers first
        with pytest.raises(ModelError, match="CUDA is not available"):
            Embedder.load(EngineSettings(model=str(tiny_dir), device="cuda", precision="int8"))


@pytest.mark.slow
@pytest.mark.parametrize("collection", ["scifact", "med"])
def test_int8_ndcg_within_half_a_point_of_fp32(minilm_embedder: Embedder, minilm_int8: Embedder,
                                                shared_data_dir: Path, collection: str) -> None:
    """nDCG@10 without prefixes (MiniLM was not trained with them): int8 within 0.005 of fp32."""
    evalset = load_eval_set(shared_data_dir / collection)
    fp32 = score(minilm_embedder, evalset, ("ndcg@10",), 100, "", "").metrics["ndcg@10"]
    int8 = score(minilm_int8, evalset, ("ndcg@10",), 100, "", "").metrics["ndcg@10"]
    print(f"{collection}: nDCG@10 fp32 {fp32:.4f} int8 {int8:.4f}")
    assert abs(int8 - fp32) <= 0.005
