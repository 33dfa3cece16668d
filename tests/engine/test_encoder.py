"""Our packed BERT encoder + pooling against transformers.BertModel with the E5 model card's pooling."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from e5studio.engine.bert import PackedBatch, pack
from e5studio.engine.checkpoint import BertConfig, save_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import BertEncoder
from e5studio.settings import EngineSettings
from tests.reference import bert_model_embeddings, words_text

TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def mixed_texts(scifact_passages: list[str]) -> list[str]:
    """One mixed-length batch: 1 word piece, empty, > 512 tokens, and a few ordinary passages."""
    return ["a", "", words_text(scifact_passages, 700), scifact_passages[0], "query: how do cells divide?",
            scifact_passages[1][:200]]


def _compare_with_bert_model(model_dir: Path, texts: list[str], cpu_runtime: str = "auto") -> None:
    embedder = Embedder.load(EngineSettings(model=str(model_dir), device="cpu", max_length=512,
                                            cpu_runtime=cpu_runtime))
    few = embedder.plan.few.name if embedder.plan.few else None
    assert few == ("onnxruntime" if cpu_runtime == "auto" else "cpu-few-rows")  # onnxruntime: a test dependency
    ids = embedder.tokenize(texts)
    lengths = [len(s) for s in ids]
    # the batch really holds the edge cases: [CLS] a [SEP], [CLS] [SEP], and a text cut at 512
    assert lengths[:3] == [3, 2, 512]
    assert len(set(lengths)) == len(lengths)

    ours = embedder.embed(texts)
    reference = bert_model_embeddings(model_dir, ids)

    assert ours.dtype == np.float32
    assert ours.shape == reference.shape == (len(texts), embedder.dim)
    diff = np.abs(ours - reference).max(axis=1)
    assert diff.max() <= TOLERANCE, f"max |ours - BertModel| per text: {diff}"
    # each text alone: the short ones are single micro-batches of few tokens (ONNX Runtime where installed)
    alone = np.concatenate([embedder.embed([t]) for t in texts])
    diff = np.abs(alone - reference).max(axis=1)
    assert diff.max() <= TOLERANCE, f"max |ours alone - BertModel| per text: {diff}"


@pytest.mark.parametrize("cpu_runtime", ["auto", "torch"])
def test_minilm_matches_bert_model(minilm_dir: Path, mixed_texts: list[str], cpu_runtime: str) -> None:
    _compare_with_bert_model(minilm_dir, mixed_texts, cpu_runtime)


@pytest.mark.parametrize("cpu_runtime", ["auto", "torch"])
def test_tiny_random_bert_matches_bert_model(tiny_dir: Path, mixed_texts: list[str], cpu_runtime: str) -> None:
    _compare_with_bert_model(tiny_dir, mixed_texts, cpu_runtime)


@pytest.mark.parametrize("cpu_runtime", ["auto", "torch"])
@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_activations_and_layer_norm_eps_match_bert_model(
    tmp_path: Path, minilm_dir: Path, mixed_texts: list[str], hidden_act: str, cpu_runtime: str
) -> None:
    """A random BERT with large weights (so activations leave GELU's near-linear range and attention is
    far from uniform), an odd LayerNorm eps and 3 token types: every config field must be honoured."""
    config = BertConfig(vocab_size=30522, hidden_size=48, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=96, max_position_embeddings=520, type_vocab_size=3,
                        layer_norm_eps=1e-5, hidden_act=hidden_act)
    encoder = BertEncoder(config)
    encoder.init_weights(seed=1, std=0.3)
    save_checkpoint(tmp_path, config, encoder.state_dict(), tokenizer_from=minilm_dir, max_length=512)
    _compare_with_bert_model(tmp_path, mixed_texts, cpu_runtime)


def test_pack_layout() -> None:
    sequences = [np.array([101, 7, 102]), np.array([101, 102]), np.array([101, 5, 6, 9, 102])]
    batch = pack(sequences)

    assert batch.input_ids.tolist() == [101, 7, 102, 101, 102, 101, 5, 6, 9, 102]
    assert batch.positions.tolist() == [0, 1, 2, 0, 1, 0, 1, 2, 3, 4]
    assert batch.seq_index.tolist() == [0, 0, 0, 1, 1, 2, 2, 2, 2, 2]
    assert batch.lengths.tolist() == [3, 2, 5]
    assert batch.max_len == 5
    # row of each token in the padded [B * L] layout
    assert batch.pad_index.tolist() == [0, 1, 2, 5, 6, 10, 11, 12, 13, 14]
    assert batch.key_mask is not None
    assert batch.key_mask[:, 0, 0, :].tolist() == [
        [True, True, True, False, False],
        [True, True, False, False, False],
        [True, True, True, True, True],
    ]


def test_pack_equal_lengths_needs_no_mask() -> None:
    batch = pack([np.array([101, 1, 102]), np.array([101, 2, 102])])
    assert batch.key_mask is None
    assert batch.pad_index.tolist() == list(range(6))


def test_pack_rejects_empty_input() -> None:
    with pytest.raises(ValueError):
        pack([])
    with pytest.raises(ValueError):
        pack([np.array([101, 102]), np.array([], dtype=np.int64)])


def test_init_weights_is_seeded() -> None:
    config = BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=16)
    a, b, c = BertEncoder(config), BertEncoder(config), BertEncoder(config)
    a.init_weights(seed=3)
    b.init_weights(seed=3)
    c.init_weights(seed=4)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters(), strict=True):
        assert torch.equal(pa, pb), name
        if name.endswith("qkv.weight"):
            assert not torch.equal(pa, pc), name


def _small_config(dropout: float) -> BertConfig:
    return BertConfig(vocab_size=200, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=32, hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def _batch() -> PackedBatch:
    return pack([np.array([101, 7, 8, 9, 102]), np.array([101, 5, 102])])


def test_dropout_only_in_training_mode() -> None:
    encoder = BertEncoder(_small_config(dropout=0.5))
    encoder.init_weights(seed=0, std=0.2)
    batch = _batch()
    with torch.no_grad():
        encoder.eval()
        assert torch.equal(encoder(batch), encoder(batch))
        encoder.train()
        assert not torch.equal(encoder(batch), encoder(batch))


def test_gradient_checkpointing_gives_the_same_loss_and_gradients() -> None:
    """With dropout on: recomputation in backward must replay the same dropout masks."""
    results = []
    for checkpointing in (False, True):
        encoder = BertEncoder(_small_config(dropout=0.1))
        encoder.init_weights(seed=0, std=0.2)
        encoder.gradient_checkpointing = checkpointing
        encoder.train()
        torch.manual_seed(123)
        loss = encoder(_batch()).pow(2).sum()
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in encoder.named_parameters()}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, msg=name)
