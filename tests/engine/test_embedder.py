"""Embedder: against sentence-transformers, batch invariance, micro-batching, truncation, input checks."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from e5studio.engine.embedder import Embedder, micro_batches
from e5studio.errors import InputError
from e5studio.settings import EngineSettings
from tests.reference import row_cosines, sentence_transformers_embeddings, words_text


def _with_budget(embedder: Embedder, max_batch_tokens: int) -> Embedder:
    """The same loaded model (and scheduling: on CPU, micro-batches one per core) with another token budget."""
    return Embedder(embedder.checkpoint, embedder.tokenizer, embedder.encoder, embedder.plan, max_batch_tokens,
                    embedder.workers, embedder.threads)


# ----------------------------------------------------------------------------- sentence-transformers


def _matches_sentence_transformers(embedder: Embedder, checkpoint: Path, passages: list[str], truncated: int) -> None:
    assert embedder.max_length == 256  # the same truncation as sentence-transformers' max_seq_length
    counts = embedder.tokenizer.count_tokens(passages)
    assert sum(c == 256 for c in counts) >= truncated, "the sample should include passages that are truncated"

    ours = embedder.embed(passages)
    reference = sentence_transformers_embeddings(checkpoint, passages)

    assert ours.shape == reference.shape == (len(passages), 384)
    cosines = row_cosines(ours, reference)
    worst = int(np.argmin(cosines))
    assert cosines.min() >= 0.99999, f"passage {worst}: cosine {cosines[worst]:.7f}"


def test_minilm_matches_sentence_transformers_on_a_scifact_sample(minilm_embedder: Embedder, minilm_dir: Path,
                                                                  scifact_passages: list[str]) -> None:
    """The default suite's check: 60 passages of every length, the 12 longest of the first 300 (truncated at
    256 tokens) among them."""
    head = scifact_passages[:300]
    longest = sorted(head, key=len)[-12:]
    sample = [p for p in head[:48] if p not in longest] + longest
    _matches_sentence_transformers(minilm_embedder, minilm_dir, sample, truncated=10)


@pytest.mark.slow
def test_minilm_matches_sentence_transformers_on_scifact(minilm_embedder: Embedder, minilm_dir: Path,
                                                         scifact_passages: list[str]) -> None:
    _matches_sentence_transformers(minilm_embedder, minilm_dir, scifact_passages[:300], truncated=10)


# ---------------------------------------------------------------------------------- batch invariance


@pytest.fixture(scope="module")
def mixed_texts(scifact_passages: list[str]) -> list[str]:
    """Texts of very different lengths, in no particular order (truncated ones included)."""
    return [
        scifact_passages[3],
        "a",
        words_text(scifact_passages, 600),
        "",
        "query: what is the role of p53?",
        scifact_passages[7][:300],
        "passage: " + scifact_passages[11],
        "Café 東京 😀",
    ]


@pytest.fixture(scope="module", params=["minilm", "tiny"])
def embedder(request: pytest.FixtureRequest, minilm_embedder: Embedder) -> Embedder:
    if request.param == "minilm":
        return minilm_embedder
    tiny_dir = request.getfixturevalue("tiny_dir")
    return Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu"))


@pytest.fixture(scope="module")
def alone_vectors(embedder: Embedder, mixed_texts: list[str]) -> np.ndarray:
    """Each text embedded on its own (a batch of one: no padding, no neighbours)."""
    return np.stack([embedder.embed([text])[0] for text in mixed_texts])


@pytest.mark.parametrize("max_batch_tokens", [8192, 300])
def test_text_alone_equals_text_in_a_mixed_batch(embedder: Embedder, mixed_texts: list[str],
                                                 alone_vectors: np.ndarray, max_batch_tokens: int) -> None:
    lengths = [len(ids) for ids in embedder.tokenize(mixed_texts)]
    batches = list(micro_batches(lengths, max_batch_tokens))
    if max_batch_tokens == 300:
        # the budget really splits the batch, and some micro-batch still mixes lengths (padding in attention)
        assert len(batches) > 1
        assert any(len({lengths[i] for i in b}) > 1 for b in batches)
    else:
        assert len(batches) == 1

    batched = _with_budget(embedder, max_batch_tokens).embed(mixed_texts)

    diff = np.abs(batched - alone_vectors).max(axis=1)
    assert diff.max() <= 1e-5, f"max |batched - alone| per text: {diff}"


def test_output_order_follows_input_order(minilm_embedder: Embedder, mixed_texts: list[str]) -> None:
    forward = minilm_embedder.embed(mixed_texts)
    backward = minilm_embedder.embed(mixed_texts[::-1])
    np.testing.assert_allclose(backward[::-1], forward, rtol=0, atol=1e-5)
    # distinct texts give distinct vectors, so a row mix-up would be seen
    assert np.abs(forward[0] - forward[1]).max() > 1e-2


def test_embeddings_are_unit_float32_rows(minilm_embedder: Embedder, mixed_texts: list[str]) -> None:
    vectors = minilm_embedder.embed(mixed_texts)
    assert vectors.dtype == np.float32
    assert vectors.shape == (len(mixed_texts), minilm_embedder.dim)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=0, atol=1e-5)


def test_empty_input_gives_an_empty_array(minilm_embedder: Embedder) -> None:
    vectors = minilm_embedder.embed([])
    assert vectors.shape == (0, 384)
    assert vectors.dtype == np.float32


# ---------------------------------------------------------------------------------------- truncation


@pytest.mark.parametrize("model", ["minilm", "tiny"])
def test_long_input_is_embedded_as_its_first_512_tokens(request: pytest.FixtureRequest, model: str,
                                                       scifact_passages: list[str]) -> None:
    from tokenizers import Tokenizer as HFTokenizer

    model_dir: Path = request.getfixturevalue(f"{model}_dir")
    text = words_text(scifact_passages, 2000)
    raw = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    ids = raw.encode(text).ids
    assert len(ids) > 2000
    sep_id = raw.token_to_id("[SEP]")
    first_512 = np.array(ids[:511] + [sep_id], dtype=np.int64)

    embedder = Embedder.load(EngineSettings(model=str(model_dir), device="cpu", max_length=512))
    expected = embedder.embed_ids([first_512])
    got = embedder.embed([text])

    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert embedder.tokenizer.count_tokens([text]) == [512]


# ---------------------------------------------------------------------------------------------- input


def test_input_type_adds_the_prefix_once(minilm_embedder: Embedder) -> None:
    explicit = minilm_embedder.embed(["query: cells divide"])
    typed = minilm_embedder.embed(["cells divide", "query: cells divide"], input_type="query")
    np.testing.assert_allclose(typed, np.repeat(explicit, 2, axis=0), rtol=0, atol=1e-6)
    bare = minilm_embedder.embed(["cells divide"])
    assert np.abs(bare - explicit).max() > 1e-3


def test_invalid_input_type_is_an_input_error(minilm_embedder: Embedder) -> None:
    with pytest.raises(InputError, match="input_type"):
        minilm_embedder.embed(["x"], input_type="document")


@pytest.mark.parametrize("bad", [None, 7, b"bytes", {"text": "x"}])
def test_non_string_input_is_an_input_error(minilm_embedder: Embedder, bad: object) -> None:
    with pytest.raises(InputError):
        minilm_embedder.embed(["ok", bad])  # type: ignore[list-item]


@pytest.mark.parametrize("max_length", [0, 1, -3])
def test_max_length_below_two_is_an_input_error(tiny_dir: Path, max_length: int) -> None:
    """EngineSettings.max_length=None means "the checkpoint's own"; 0 is not None and must not mean it too."""
    with pytest.raises(InputError, match="max_length"):
        Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", max_length=max_length))


def test_non_positive_token_budget_is_rejected(minilm_embedder: Embedder) -> None:
    with pytest.raises(ValueError, match="max_batch_tokens"):
        _with_budget(minilm_embedder, 0)


# ------------------------------------------------------------------------------------- micro_batches


def _check_micro_batches(lengths: list[int], budget: int) -> list[list[int]]:
    batches = list(micro_batches(lengths, budget))
    flat = [i for batch in batches for i in batch]
    assert sorted(flat) == list(range(len(lengths))), "every index exactly once"
    for batch in batches:
        assert batch, "no empty batch"
        longest = max(lengths[i] for i in batch)
        assert len(batch) * longest <= budget or len(batch) == 1, (batch, [lengths[i] for i in batch])
    return batches


@pytest.mark.parametrize("seed", range(20))
def test_micro_batches_respect_the_budget_and_cover_every_index(seed: int) -> None:
    rng = random.Random(seed)
    lengths = [rng.randint(2, 512) for _ in range(rng.randint(1, 300))]
    budget = rng.choice([64, 512, 1000, 8192, 100_000])
    batches = _check_micro_batches(lengths, budget)
    if budget >= 512 * len(lengths):
        assert len(batches) == 1


def test_micro_batches_sort_longest_first() -> None:
    lengths = [5, 100, 20, 100, 3, 50]
    batches = _check_micro_batches(lengths, 200)
    order = [i for batch in batches for i in batch]
    assert [lengths[i] for i in order] == sorted(lengths, reverse=True)
    assert batches[0] == [1, 3]  # two of 100 fill the budget of 200


def test_a_sequence_over_the_budget_gets_a_batch_of_its_own() -> None:
    batches = _check_micro_batches([10, 600, 10, 10], 100)
    assert [1] in batches
    assert _check_micro_batches([300, 300, 300], 100) == [[0], [1], [2]]


def test_micro_batches_of_nothing() -> None:
    assert list(micro_batches([], 8192)) == []
