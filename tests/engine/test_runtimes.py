"""Every runtime of the table against the plain encoder (same block, other kernels), and the table itself."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from e5studio.engine import bert, onnx_graph, runtimes
from e5studio.engine.bert import activate, activate_, pack, pool
from e5studio.engine.checkpoint import ACTIVATIONS, BertConfig, load_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError, ModelError
from e5studio.settings import EngineSettings
from tests.engine.plain import encoder_embeddings, plain_encoder
from tests.reference import row_cosines, words_text

CPU_FP32 = ["cpu-many-rows", "cpu-few-rows", "onnxruntime"]
needs_onednn = pytest.mark.skipif(not bert.onednn_available(), reason="this torch build has no oneDNN ops")


def _ids(model_dir: Path, texts: list[str]) -> list[np.ndarray]:
    return Tokenizer(model_dir, 256).encode(texts)


@pytest.mark.parametrize("name", CPU_FP32)
@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_every_cpu_runtime_equals_the_plain_encoder(request: pytest.FixtureRequest, model: str, name: str,
                                                    scifact_passages: list[str]) -> None:
    """One query alone (no padding), and a batch of different lengths (padding keys masked), many tokens."""
    if name == "cpu-few-rows" and not bert.onednn_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    model_dir: Path = request.getfixturevalue(f"{model}_dir")
    checkpoint = load_checkpoint(str(model_dir))
    ids = _ids(model_dir, ["query: how do statins lower cholesterol", "", "a",
                           *(p[:150] for p in scifact_passages[:4]), words_text(scifact_passages, 200)])
    plain = plain_encoder(checkpoint)
    runtime = runtimes.build(name, plain_encoder(checkpoint).requires_grad_(False), 2)
    assert runtime.name == name

    one = runtime.rows(ids[:1])
    mixed = runtime.rows(ids)

    assert len({len(s) for s in ids}) > 3 and sum(len(s) for s in ids) > runtimes.FEW_TOKENS
    assert one.dtype == mixed.dtype == np.float32
    assert mixed.shape == (len(ids), checkpoint.config.hidden_size)
    np.testing.assert_allclose(one, encoder_embeddings(plain, ids[:1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed, encoder_embeddings(plain, ids), rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed[:1], one, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("lengths", [(7,), (5, 5), (9, 1, 4)])
def test_onnxruntime_pools_as_the_shared_pooling(tiny_dir: Path, lengths: tuple[int, ...]) -> None:
    """ONNX Runtime's rows are pooled in numpy: the same recipe as :func:`bert.pool` on its own hidden states."""
    encoder = plain_encoder(load_checkpoint(str(tiny_dir))).requires_grad_(False)
    runtime = onnx_graph.OrtRuntime(encoder, 1)
    rng = np.random.default_rng(len(lengths))
    ids = [np.array([101, *rng.integers(1000, 2000, n - 2), 102]) if n > 1 else np.array([101]) for n in lengths]
    batch = pack(ids)
    hidden, real = runtime.hidden(ids)  # [B, L, d], zero rows at the padding
    flat = torch.from_numpy(hidden.reshape(-1, hidden.shape[-1]))  # [B*L, d]
    packed = flat if real is None else flat.index_select(0, batch.pad_index)  # [T, d]
    if real is not None:
        assert not hidden[~real].any()  # the padding slots hold zeros, not states

    np.testing.assert_allclose(runtime.rows(ids), pool(packed, batch).numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", CPU_FP32)
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_every_activation_and_layer_norm_eps(hidden_act: str, name: str) -> None:
    """Large random weights (GELU far from linear, peaked attention), odd eps, heads of size 16."""
    if name == "cpu-few-rows" and not bert.onednn_available():
        pytest.skip("this torch build has no oneDNN linear ops")
    config = BertConfig(vocab_size=500, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=96, max_position_embeddings=64, layer_norm_eps=1e-5,
                        hidden_act=hidden_act)
    encoder = BertEncoder(config)
    encoder.init_weights(seed=3, std=0.3)
    encoder.eval().requires_grad_(False)
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 500, size=n) for n in (9, 1, 30, 17)]

    got = runtimes.build(name, encoder, 1).rows(ids)

    np.testing.assert_allclose(got, encoder_embeddings(encoder, ids), rtol=0, atol=1e-5)


def test_the_graph_holds_no_weights(minilm_dir: Path) -> None:
    """The session reads the encoder's own tensors: the serialised graph has only names and shapes."""
    encoder = plain_encoder(load_checkpoint(str(minilm_dir)))
    graph = onnx_graph.build_graph(encoder)
    weights = onnx_graph.encoder_weights(encoder)

    weight_bytes = sum(w.numel() * 4 for w in weights.values())
    assert weight_bytes > 80_000_000
    assert len(graph) < 100_000
    onnx = pytest.importorskip("onnx")  # the reference reader of what the engine writes
    external = {t.name for t in onnx.ModelProto.FromString(graph).graph.initializer
                if t.data_location == t.EXTERNAL}
    assert external == set(weights)
    assert weights["word_embeddings"].data_ptr() == encoder.word_embeddings.weight.data_ptr()
    assert weights["layers.5.ffn_out.weight"].data_ptr() == encoder.layers[5].ffn_out.weight.data_ptr()


def test_many_rows_kernels_share_the_encoders_weights(tiny_dir: Path) -> None:
    encoder = plain_encoder(load_checkpoint(str(tiny_dir))).requires_grad_(False)
    runtime = runtimes.build("cpu-many-rows", encoder, 1)
    kernels = runtime.layers[0]  # type: ignore[attr-defined]
    assert kernels.weights["qkv"][0].data_ptr() == encoder.layers[0].qkv.weight.data_ptr()


@pytest.mark.parametrize("shape", [(64, 32), (384, 1536)])
@pytest.mark.parametrize("rows", [1, 7, runtimes.FEW_TOKENS - 1, 700])
@needs_onednn
def test_few_rows_dense_kernels_equal_linear(shape: tuple[int, int], rows: int) -> None:
    """The oneDNN matmul on the prepacked weight, alone, with its fused GELU and with its fused residual add."""
    config = BertConfig(vocab_size=50, hidden_size=shape[0], num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=shape[1])
    encoder = BertEncoder(config)
    encoder.init_weights(seed=1, std=0.1)
    layer = encoder.layers[0].eval().requires_grad_(False)
    kernels = bert.FewRowsKernels(layer)
    gen = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, shape[0], generator=gen)
    residual = torch.randn(rows, shape[1], generator=gen)
    with torch.inference_mode():
        plain = F.linear(x, layer.ffn_in.weight, layer.ffn_in.bias)
        torch.testing.assert_close(kernels.dense(x, "ffn_in"), plain, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kernels.dense(x, "ffn_in", activation=True), F.gelu(plain), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(kernels.dense(x, "ffn_in", residual=residual), plain + residual,
                                   rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hidden_act", list(ACTIVATIONS))
def test_activations_equal_transformers_and_in_place_equals_out_of_place(hidden_act: str) -> None:
    from transformers.activations import ACT2FN

    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(0)) * 3
    expected = activate(x, ACTIVATIONS[hidden_act])
    torch.testing.assert_close(expected, ACT2FN[hidden_act](x), rtol=0, atol=1e-5)
    y = x.clone()
    out = activate_(y, ACTIVATIONS[hidden_act])
    assert torch.equal(out, expected)
    assert out.data_ptr() == y.data_ptr()  # no new tensor


def test_cpu_kernels_take_only_float32(tiny_dir: Path) -> None:
    bf16 = plain_encoder(load_checkpoint(str(tiny_dir))).to(torch.bfloat16)
    with pytest.raises(ValueError, match="float32"):
        bert.ManyRowsKernels(bf16.layers[0])


def test_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    cpu, f32 = torch.device("cpu"), torch.float32
    assert runtimes.choose(cpu, f32, "auto") == ("cpu-many-rows", "onnxruntime")  # onnxruntime: a test dependency
    assert runtimes.choose(cpu, f32, "onnxruntime") == ("cpu-many-rows", "onnxruntime")
    few_rows = "cpu-few-rows" if bert.onednn_available() else None
    assert runtimes.choose(cpu, f32, "torch") == ("cpu-many-rows", few_rows)
    assert runtimes.choose(cpu, torch.bfloat16, "auto") == ("torch", None)
    assert runtimes.choose(torch.device("cuda"), torch.float16, "auto") == ("torch", None)
    with pytest.raises(ModelError, match="unknown cpu_runtime 'tvm'"):
        runtimes.choose(cpu, f32, "tvm")
    monkeypatch.setattr(onnx_graph, "available", lambda: False)
    assert runtimes.choose(cpu, f32, "auto") == ("cpu-many-rows", few_rows)  # auto without onnxruntime
    with pytest.raises(ModelError, match=r"needs the onnxruntime and onnx packages: pip install 'e5studio\[onnx\]'"):
        runtimes.choose(cpu, f32, "onnxruntime")


def test_the_plan_sends_only_few_token_micro_batches_to_the_few_runtime(tiny_dir: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    embedder = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime="auto"))
    plan = embedder.plan
    assert (plan.large.name, plan.few and plan.few.name) == ("cpu-many-rows", "onnxruntime")
    assert "onnxruntime" in embedder.runtime and "under 4097 tokens" in embedder.runtime
    short = [np.arange(1000, 1000 + n) for n in (20, 12, 5)]  # 3 x 20 padded tokens
    long = [np.arange(1000, 1000 + n) for n in (200, 60)]  # 2 x 200 padded tokens
    budget = [np.arange(1000, 1000 + 256) for _ in range(16)]  # 16 x 256: the default token budget, 4,096
    assert embedder.runtime_for(short) is plan.few
    assert embedder.runtime_for(long) is plan.few  # ONNX Runtime's graph is padding-free: up to the budget
    assert embedder.runtime_for(budget) is plan.few
    assert embedder.runtime_for([*budget, budget[0]]) is plan.large
    monkeypatch.setattr(embedder, "plan", dataclasses.replace(plan, few_tokens=runtimes.FEW_TOKENS))  # oneDNN's
    assert embedder.runtime_for(long) is plan.large
    assert embedder.runtime_for(long[1:]) is plan.few
    assert plan.few is not None
    np.testing.assert_allclose(plan.few.rows(short), plan.large.rows(short), rtol=0, atol=1e-5)
    np.testing.assert_allclose(plan.few.rows(long), plan.large.rows(long), rtol=0, atol=1e-5)


def test_torch_runtime_setting_and_other_dtypes(tiny_dir: Path) -> None:
    torch_only = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime="torch"))
    assert torch_only.plan.large.name == "cpu-many-rows"
    assert torch_only.plan.few is None or torch_only.plan.few.name == "cpu-few-rows"
    bf16 = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", dtype="bfloat16"))
    assert (bf16.plan.large.name, bf16.plan.few) == ("torch", None)
    assert bf16.encoder.word_embeddings.weight.dtype == torch.bfloat16


def test_cpu_runtime_setting_is_checked(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="cpu_runtime must be auto, torch or onnxruntime, got 'tvm'"):
        EngineSettings(model=str(tiny_dir), cpu_runtime="tvm")
    assert EngineSettings.from_env({"E5STUDIO_CPU_RUNTIME": "torch"}).cpu_runtime == "torch"
    monkeypatch.setattr(onnx_graph, "available", lambda: False)
    with pytest.raises(ModelError, match=r"pip install 'e5studio\[onnx\]'"):
        Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime="onnxruntime"))
    embedder = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime="auto"))
    assert embedder.plan.few is None or embedder.plan.few.name == "cpu-few-rows"
    assert embedder.embed(["query: a"]).shape == (1, 32)


def test_bfloat16_on_cpu_stays_close_to_float32(minilm_embedder: Embedder, minilm_dir: Path) -> None:
    texts = ["query: how do cells divide?", "passage: Mitosis is the division of a nucleus.", "a", ""]
    bf16 = Embedder.load(EngineSettings(model=str(minilm_dir), device="cpu", dtype="bfloat16"))
    vectors = bf16.embed(texts)
    assert vectors.dtype == np.float32
    assert row_cosines(vectors, minilm_embedder.embed(texts)).min() >= 0.99
