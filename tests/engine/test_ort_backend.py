"""Few-token micro-batches on ONNX Runtime: the same vectors as the torch encoder, the weights not copied,
and the backend sending exactly the few-token micro-batches there."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from e5studio.engine import ort_backend, packed
from e5studio.engine.backend import TorchBackend
from e5studio.engine.checkpoint import BertConfig, load_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError, ModelError
from e5studio.settings import EngineSettings
from tests.engine.plain import encoder_embeddings, plain_encoder
from tests.reference import words_text


def _ids(model_dir: Path, texts: list[str]) -> list[np.ndarray]:
    return Tokenizer(model_dir, 256).encode(texts)


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_onnxruntime_encoder_equals_torch_encoder(request: pytest.FixtureRequest, model: str,
                                                  scifact_passages: list[str]) -> None:
    """One query alone (no padding), and a batch of different lengths (padding keys masked)."""
    model_dir: Path = request.getfixturevalue(f"{model}_dir")
    checkpoint = load_checkpoint(str(model_dir))
    ids = _ids(model_dir, ["query: how do statins lower cholesterol", "", "a",
                           *(p[:150] for p in scifact_passages[:4]), words_text(scifact_passages, 120)])
    plain = plain_encoder(checkpoint)
    session = ort_backend.OrtEncoder(plain_encoder(checkpoint), threads=2)

    one = session.embed_batch(ids[:1])
    mixed = session.embed_batch(ids)

    assert len({len(s) for s in ids}) > 3
    assert one.dtype == mixed.dtype == np.float32
    assert mixed.shape == (len(ids), checkpoint.config.hidden_size)
    np.testing.assert_allclose(one, encoder_embeddings(plain, ids[:1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed, encoder_embeddings(plain, ids), rtol=0, atol=1e-5)
    np.testing.assert_allclose(mixed[:1], one, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mixed, axis=1), 1.0, rtol=0, atol=1e-6)


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_every_activation_and_layer_norm_eps(hidden_act: str) -> None:
    """Large random weights (GELU far from linear, peaked attention), odd eps, heads of size 16."""
    config = BertConfig(vocab_size=500, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=96, max_position_embeddings=64, layer_norm_eps=1e-5,
                        hidden_act=hidden_act)
    encoder = BertEncoder(config)
    encoder.init_weights(seed=3, std=0.3)
    encoder.eval()
    rng = np.random.default_rng(0)
    ids = [rng.integers(0, 500, size=n) for n in (9, 1, 30, 17)]

    got = ort_backend.OrtEncoder(encoder, threads=1).embed_batch(ids)

    np.testing.assert_allclose(got, encoder_embeddings(encoder, ids), rtol=0, atol=1e-5)


def test_the_graph_holds_no_weights(minilm_dir: Path) -> None:
    """The session reads the encoder's own tensors: the serialised graph has only names and shapes."""
    encoder = plain_encoder(load_checkpoint(str(minilm_dir)))
    graph = ort_backend.build_graph(encoder)
    weights = ort_backend.encoder_weights(encoder)

    weight_bytes = sum(w.numel() * 4 for w in weights.values())
    assert weight_bytes > 80_000_000
    assert graph.ByteSize() < 100_000
    external = {t.name for t in graph.graph.initializer if t.data_location == t.EXTERNAL}
    assert external == set(weights)
    assert weights["word_embeddings"].data_ptr() == encoder.word_embeddings.weight.data_ptr()
    assert weights["layers.5.ffn_out.weight"].data_ptr() == encoder.layers[5].ffn_out.weight.data_ptr()


def test_backend_sends_only_few_token_micro_batches_to_onnxruntime(
    tiny_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = TorchBackend.load(load_checkpoint(str(tiny_dir)), device="cpu", dtype="float32", cpu_runtime="auto")
    assert backend.few_rows is not None
    assert "ONNX Runtime" in backend.runtime
    # no oneDNN weight copies when ONNX Runtime computes the few-row inputs
    assert backend.encoder.layers[0].qkv.packed is None
    calls: list[int] = []
    run = backend.few_rows.embed_batch
    monkeypatch.setattr(backend.few_rows, "embed_batch", lambda seqs: calls.append(len(seqs)) or run(seqs))

    short = [np.arange(1000, 1000 + n) for n in (20, 12, 5)]  # 3 x 20 padded rows
    long = [np.arange(1000, 1000 + n) for n in (200, 60)]  # 2 x 200 padded rows
    few = backend.embed_batch(short)
    many = backend.embed_batch(long)

    assert calls == [3]
    assert few.shape == (3, 32) and many.shape == (2, 32)
    np.testing.assert_allclose(few, np.concatenate([backend.embed_batch([s]) for s in short]), rtol=0, atol=1e-6)
    np.testing.assert_allclose(many[1:], backend.embed_batch(long[1:]), rtol=0, atol=1e-6)  # 60 alone: ORT
    assert calls == [3, 1, 1, 1, 1]


def test_torch_runtime_keeps_the_onednn_path(tiny_dir: Path) -> None:
    backend = TorchBackend.load(load_checkpoint(str(tiny_dir)), device="cpu", dtype="float32", cpu_runtime="torch")
    assert backend.few_rows is None
    if packed.available():
        assert backend.encoder.layers[0].qkv.packed is not None


def test_cpu_runtime_setting_is_checked(tiny_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(InputError, match="cpu_runtime must be auto, torch or onnxruntime, got 'tvm'"):
        EngineSettings(model=str(tiny_dir), cpu_runtime="tvm")
    assert EngineSettings.from_env({"E5STUDIO_CPU_RUNTIME": "torch"}).cpu_runtime == "torch"
    monkeypatch.setattr(ort_backend, "available", lambda: False)
    with pytest.raises(ModelError, match=r"needs the onnxruntime and onnx packages: pip install 'e5studio\[onnx\]'"):
        Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime="onnxruntime"))
    embedder = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", cpu_runtime="auto"))
    assert embedder.backend.few_rows is None  # auto without onnxruntime: torch for everything
    assert embedder.embed(["query: a"]).shape == (1, 32)


def test_other_dtypes_never_use_onnxruntime(tiny_dir: Path) -> None:
    backend = TorchBackend.load(load_checkpoint(str(tiny_dir)), device="cpu", dtype="bfloat16", cpu_runtime="auto")
    assert backend.few_rows is None
