"""Tokenizer: E5 prefixes, input checks, truncation at max_length, and the vocab.txt-only path."""

from __future__ import annotations

from pathlib import Path

import pytest

from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError, ModelError
from e5studio.vocabulary import add_prefix
from tests.reference import copy_checkpoint, words_text

# accents, CJK, punctuation, upper case, whitespace variants, emoji, a word over 100 characters
VARIED_TEXTS = [
    "Café naïve résumé Ångström façade",
    "東京は日本の首都です。北京大学",
    "Hello, World!!! (a) [b] {c} <d> e--f ... \"quoted\" it's 3.14%",
    "ÀÉÎÕÜ UPPER lower MiXeD CamelCase",
    "tab\there\nnewline\u00a0nbsp zero\u200bwidth",
    "emoji 😀 🚀 and symbols © ® ™ ½ ²",
    "x" * 150,
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    "",
    "   ",
    "query: what is the role of p53 in apoptosis?",
]


@pytest.fixture(scope="module")
def tokenizer(minilm_dir: Path) -> Tokenizer:
    return Tokenizer(minilm_dir, max_length=512)


def _raw_ids(model_dir: Path, text: str) -> list[int]:
    """Untruncated, unpadded ids straight from the `tokenizers` library and the checkpoint's tokenizer.json."""
    from tokenizers import Tokenizer as HFTokenizer

    raw = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    raw.no_truncation()
    raw.no_padding()
    return raw.encode(text).ids


# ------------------------------------------------------------------------------------------- prefixes


@pytest.mark.parametrize(
    ("text", "input_type", "expected"),
    [
        ("what is p53", "query", "query: what is p53"),
        ("p53 is a tumour suppressor", "passage", "passage: p53 is a tumour suppressor"),
        ("query: what is p53", "query", "query: what is p53"),
        ("passage: p53", "passage", "passage: p53"),
        ("passage: p53", "query", "query: passage: p53"),
        ("", "query", "query: "),
        ("what is p53", None, "what is p53"),
        ("query: what is p53", None, "query: what is p53"),
    ],
)
def test_add_prefix_only_when_missing(text: str, input_type: str | None, expected: str) -> None:
    assert add_prefix(text, input_type) == expected
    # idempotent: applying it again never adds a second prefix
    assert add_prefix(add_prefix(text, input_type), input_type) == expected


@pytest.mark.parametrize("input_type", ["document", "Query", "", "query: "])
def test_invalid_input_type_is_an_input_error(tokenizer: Tokenizer, input_type: str) -> None:
    with pytest.raises(InputError, match="input_type"):
        add_prefix("x", input_type)
    with pytest.raises(InputError, match="input_type"):
        tokenizer.encode(["x"], input_type=input_type)


def test_encode_with_input_type_equals_explicit_prefix(tokenizer: Tokenizer) -> None:
    with_type = tokenizer.encode(["cells divide", "query: cells divide"], input_type="query")
    explicit = tokenizer.encode(["query: cells divide"])[0]
    assert with_type[0].tolist() == explicit.tolist()
    assert with_type[1].tolist() == explicit.tolist()
    assert tokenizer.encode(["cells divide"])[0].tolist() != explicit.tolist()


@pytest.mark.parametrize("bad", [None, 3, b"bytes", ["nested"], 1.5])
def test_non_string_input_is_an_input_error(tokenizer: Tokenizer, bad: object) -> None:
    with pytest.raises(InputError, match="item 1"):
        tokenizer.encode(["fine", bad])  # type: ignore[list-item]


# ------------------------------------------------------------------------------------------ encoding


def test_ids_match_tokenizers_library(tokenizer: Tokenizer, minilm_dir: Path) -> None:
    ids = tokenizer.encode(VARIED_TEXTS)
    for text, ours in zip(VARIED_TEXTS, ids, strict=True):
        assert ours.dtype.name == "int64"
        assert ours.tolist() == _raw_ids(minilm_dir, text), text
    assert ids[VARIED_TEXTS.index("")].tolist() == [101, 102]  # [CLS] [SEP]


@pytest.mark.parametrize("max_length", [512, 256, 8])
def test_truncation_keeps_first_pieces_and_sep(minilm_dir: Path, scifact_passages: list[str],
                                               max_length: int) -> None:
    text = words_text(scifact_passages, 2000)
    raw = _raw_ids(minilm_dir, text)
    assert len(raw) > 2000
    sep = raw[-1]

    ours = Tokenizer(minilm_dir, max_length=max_length).encode([text])[0].tolist()
    assert ours == raw[: max_length - 1] + [sep]


def test_count_tokens_is_capped_at_max_length(minilm_dir: Path, scifact_passages: list[str]) -> None:
    long_text = words_text(scifact_passages, 2000)
    short_text = "a short text"
    tokenizer = Tokenizer(minilm_dir, max_length=256)

    counts = tokenizer.count_tokens([long_text, short_text, ""])

    assert counts == [256, len(_raw_ids(minilm_dir, short_text)), 2]
    assert len(_raw_ids(minilm_dir, long_text)) > 256
    assert tokenizer.count_tokens(["x"], input_type="query") == [len(_raw_ids(minilm_dir, "query: x"))]


def test_max_length_below_two_is_a_model_error(minilm_dir: Path) -> None:
    with pytest.raises(ModelError, match="max_length"):
        Tokenizer(minilm_dir, max_length=1)


# ----------------------------------------------------------------------------------- vocab.txt only


@pytest.fixture(scope="module")
def vocab_only_dir(tmp_path_factory: pytest.TempPathFactory, tiny_dir: Path) -> Path:
    directory = copy_checkpoint(tiny_dir, tmp_path_factory.mktemp("vocab-only") / "ckpt")
    (directory / "tokenizer.json").unlink()
    return directory


def test_vocab_txt_only_tokenizes_like_tokenizer_json(vocab_only_dir: Path, tiny_dir: Path,
                                                     scifact_passages: list[str]) -> None:
    texts = [*VARIED_TEXTS, *scifact_passages[:20], words_text(scifact_passages, 2000)]
    from_vocab = Tokenizer(vocab_only_dir, max_length=512).encode(texts)
    from_json = Tokenizer(tiny_dir, max_length=512).encode(texts)
    for text, a, b in zip(texts, from_vocab, from_json, strict=True):
        assert a.tolist() == b.tolist(), text[:80]


def test_vocab_txt_only_keeps_special_token_strings_like_tokenizer_json(vocab_only_dir: Path,
                                                                        tiny_dir: Path) -> None:
    """tokenizer.json (and transformers' BertTokenizer built from the same vocab.txt) map a literal
    "[MASK]" / "[SEP]" in the text to the special token; the vocab.txt-only tokenizer must agree."""
    from transformers import AutoTokenizer

    text = "query: [MASK] and [SEP] in a text"
    from_vocab = Tokenizer(vocab_only_dir, max_length=512).encode([text])[0].tolist()
    from_json = Tokenizer(tiny_dir, max_length=512).encode([text])[0].tolist()
    from_transformers = AutoTokenizer.from_pretrained(str(vocab_only_dir))(text)["input_ids"]
    assert from_json == from_transformers
    assert from_vocab == from_json


def test_vocab_txt_only_respects_do_lower_case(vocab_only_dir: Path, tmp_path: Path) -> None:
    cased = copy_checkpoint(vocab_only_dir, tmp_path / "cased")
    (cased / "tokenizer_config.json").write_text('{"do_lower_case": false}')
    lower = Tokenizer(vocab_only_dir, max_length=512).encode(["Hello"])[0].tolist()
    kept = Tokenizer(cased, max_length=512).encode(["Hello"])[0].tolist()
    assert lower != kept
    assert Tokenizer(cased, max_length=512).encode(["hello"])[0].tolist() == lower


def test_no_tokenizer_files_is_a_model_error(vocab_only_dir: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(vocab_only_dir, tmp_path / "ckpt")
    (directory / "vocab.txt").unlink()
    with pytest.raises(ModelError, match=r"no tokenizer.*tokenizer\.json.*vocab\.txt"):
        Tokenizer(directory, max_length=512)


# ------------------------------------------------------------------------------ bounded tokenising


def _scripts(vocab: Path) -> dict[str, list[str]]:
    """The vocabulary's whole words grouped by the script of their first letter (the first word of its
    Unicode name: LATIN, CJK, HANGUL, ARABIC, ...)."""
    import unicodedata

    scripts: dict[str, list[str]] = {}
    for line in vocab.read_text(encoding="utf-8").splitlines():
        if not line or line.startswith(("##", "[")) or not line[0].isalpha():
            continue
        script = unicodedata.name(line[0], "UNKNOWN").split()[0]
        scripts.setdefault(script, []).append(line)
    return scripts


def _truncated_whole(minilm_dir: Path, text: str, max_length: int) -> list[int]:
    raw = _raw_ids(minilm_dir, text)
    return raw if len(raw) <= max_length else raw[: max_length - 1] + [raw[-1]]


def test_long_texts_of_every_script_match_whole_text_tokenising(minilm_dir: Path) -> None:
    """Texts of every script of the vocab, long enough that only a head is tokenised, shifted so that the
    heads' cuts fall inside words (and inside [SEP] / [MASK] strings): the ids equal tokenising the whole text
    and truncating it."""
    import random

    rng = random.Random(13)
    scripts = _scripts(minilm_dir / "vocab.txt")
    assert len(scripts) >= 10, sorted(scripts)
    tokenizer = Tokenizer(minilm_dir, max_length=64)  # heads of 512 characters: many cuts per text
    checked = 0
    for script, words in sorted(scripts.items()):
        # words glued to their neighbours now and then (long words, cut anywhere), punctuation, special tokens
        parts = [rng.choice(words) * rng.choice((1, 1, 1, 3, 30)) + rng.choice((" ", " ", "", ", ", "[SEP]", "\n"))
                 for _ in range(250)]
        text = "".join(parts)
        for shift in (0, 3, 255, 511):
            shifted = "x" * shift + text
            assert tokenizer.encode([shifted])[0].tolist() == _truncated_whole(minilm_dir, shifted, 64), \
                (script, shift)
            checked += 1
    assert checked >= 10 * 4


@pytest.mark.parametrize("text", [
    " " * 300_000 + "after the spaces",
    "\x01\u200b" * 150_000 + "after removed characters",
    "a" * 300_000 + " then words, " * 200,
    "é" * 300_000 + "!" + " more" * 100,
    "東京" * 150_000,
    "😀" * 300_000 + " tail",
    ("word " * 100 + "[SE") + "P] " + "z" * 1000,
])
def test_degenerate_long_texts_match_whole_text_tokenising(minilm_dir: Path, text: str) -> None:
    tokenizer = Tokenizer(minilm_dir, max_length=512)
    assert tokenizer.encode([text])[0].tolist() == _truncated_whole(minilm_dir, text, 512)


def test_tokenising_cost_follows_the_kept_tokens_not_the_text(tokenizer: Tokenizer) -> None:
    """An 8 MB text of words costs about what its head costs (whole-text tokenising takes ~20 s here)."""
    import time

    tokenizer.encode(["warm up"])
    for text in ("hello world " * 700_000, "a" * 8_000_000, " " * 8_000_000, "東京" * 4_000_000):
        started = time.perf_counter()
        ids = tokenizer.encode([text])[0]
        assert time.perf_counter() - started < 3.0, text[:20]
        assert len(ids) <= 512


@pytest.mark.parametrize("text", ["\ud800 abc", "abc \udfff", "x" * 10_000 + "\udbff"])
def test_lone_surrogate_is_an_input_error_naming_it(tokenizer: Tokenizer, text: str) -> None:
    with pytest.raises(InputError, match=r"input 1 has a lone surrogate \(U\+D[8-F][0-9A-F]{2}\) at character \d+"):
        tokenizer.encode(["fine", text])
