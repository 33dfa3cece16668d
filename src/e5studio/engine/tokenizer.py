"""WordPiece tokenisation on the Hugging Face ``tokenizers`` library, with the E5 prefixes.

Inputs are used as given by default (the platform contract: callers write ``query: `` / ``passage: ``);
``input_type`` opts in to adding the prefix where it is missing. Truncation keeps the first
``max_length - 2`` word pieces plus [CLS] and [SEP].

Tokenising is bounded: a long text is tokenised from a head of it (``HEAD_CHARS_PER_TOKEN`` characters per
kept token, doubled until enough), so its cost follows the tokens kept, not the text's length. Only the word
pieces of words that end before the cut count (the word the cut falls into, and anything close enough to the
cut to be part of a special token, is tokenised again from a longer head), so the ids are identical to
tokenising the whole text and truncating it.
"""

from __future__ import annotations

import functools
import json
import re
import sys
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5studio.errors import InputError, ModelError
from e5studio.vocabulary import add_prefix

HEAD_CHARS_PER_TOKEN = 8  # a long text is first tokenised from max_length * this many characters
_SURROGATE = re.compile("[\ud800-\udfff]")


class Tokenizer:
    """Text -> token ids (int64 arrays with [CLS] ... [SEP]), truncated at ``max_length``."""

    def __init__(self, directory: Path, max_length: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        if max_length < 2:
            raise ModelError(f"max_length must be at least 2, got {max_length}")
        tokenizer_json = directory / "tokenizer.json"
        vocab_txt = directory / "vocab.txt"
        try:
            if tokenizer_json.is_file():
                tok = HFTokenizer.from_file(str(tokenizer_json))
            elif vocab_txt.is_file():
                tok = _wordpiece_from_vocab(vocab_txt, _lowercase(directory))
            else:
                raise ModelError(f"{directory}: no tokenizer (looked for tokenizer.json, vocab.txt)")
        except ModelError:
            raise
        except Exception as exc:  # noqa: BLE001 - tokenizers raises plain Exception on bad files
            raise ModelError(f"{directory}: cannot read tokenizer: {exc}") from None
        tok.no_padding()
        whole = HFTokenizer.from_str(tok.to_str())  # the same tokenizer without truncation, for text heads
        whole.no_truncation()
        tok.enable_truncation(max_length=max_length)
        self._tok = tok
        self._whole = whole
        self.max_length = max_length
        self._head_chars = max_length * HEAD_CHARS_PER_TOKEN
        # a cut closer than this to a special token's text could split it: those pieces are not trusted
        self._margin = max((len(t.content) for t in tok.get_added_tokens_decoder().values()), default=0)
        self._unk_chars = getattr(tok.model, "max_input_chars_per_word", None)
        _bounds()  # built once per process (a scan of the Unicode table), not in the first long request
        self._unk_id = tok.token_to_id(getattr(tok.model, "unk_token", "[UNK]") or "[UNK]")

    def encode(self, texts: Sequence[str], input_type: str | None = None) -> list[np.ndarray]:
        """One int64 id array per text, [CLS] and [SEP] included."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(f"inputs must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        for i, text in enumerate(texts):
            surrogate = _SURROGATE.search(text)
            if surrogate is not None:
                raise InputError(f"input {i} has a lone surrogate (U+{ord(surrogate.group()):04X}) at character "
                                 f"{surrogate.start()}: texts must be valid Unicode (encodable as UTF-8)")
        prepared = texts if input_type is None else [add_prefix(t, input_type) for t in texts]
        short = [i for i, t in enumerate(prepared) if len(t) <= self._head_chars]
        ids: list[np.ndarray | None] = [None] * len(prepared)
        if short:
            batch = [prepared[i] for i in short]
            encodings = self._tok.encode_batch_fast(batch) if hasattr(self._tok, "encode_batch_fast") \
                else self._tok.encode_batch(batch)
            for i, encoding in zip(short, encodings, strict=True):
                ids[i] = np.asarray(encoding.ids, dtype=np.int64)
        for i, text in enumerate(prepared):
            if ids[i] is None:
                ids[i] = np.asarray(self._encode_long(text), dtype=np.int64)
        return [a for a in ids if a is not None]

    def pieces(self, text: str) -> tuple[list[int], list[tuple[int, int]], list[int]]:
        """The whole ``text``'s word pieces, untruncated and without [CLS]/[SEP]: (ids, character offsets into
        ``text``, word index of each piece). The knowledge-base chunker cuts these token-exactly."""
        surrogate = _SURROGATE.search(text)
        if surrogate is not None:
            raise InputError(f"lone surrogate (U+{ord(surrogate.group()):04X}) at character {surrogate.start()}")
        encoding = self._whole.encode(text)
        inner = slice(1, len(encoding.ids) - 1)
        words = [-1 if w is None else int(w) for w in encoding.word_ids[inner]]
        return list(encoding.ids[inner]), [(int(a), int(b)) for a, b in encoding.offsets[inner]], words

    @property
    def cls_sep(self) -> tuple[int, int]:
        """The ids that open and close every sequence ([CLS], [SEP])."""
        ids = self._whole.encode("").ids
        return int(ids[0]), int(ids[-1])

    def count_tokens(self, texts: Sequence[str], input_type: str | None = None) -> list[int]:
        """Tokens per text after truncation, [CLS] and [SEP] included (what the model computes on)."""
        return [len(ids) for ids in self.encode(texts, input_type)]

    def _encode_long(self, text: str) -> list[int]:
        """The truncated ids of a long text, tokenised segment by segment from its start: of each segment only
        the pieces also found when tokenising the whole text are kept (see :meth:`_segment`); the next segment
        starts at the first word not kept, so every segment starts where the pre-tokenizer splits anyway."""
        keep = self.max_length - 2
        pieces: list[int] = []
        start = 0
        size = self._head_chars
        bounds = _bounds()
        first: int | None = None
        last: int | None = None
        while len(pieces) < keep and start < len(text):
            skip = bounds.silent.match(text, start)  # whitespace and removed characters make no pieces
            start = skip.end() if skip is not None else start
            if start >= len(text):
                break
            cut = min(len(text), start + size)
            encoding = self._whole.encode(text[start:cut])
            first, last = encoding.ids[0], encoding.ids[-1]
            taken, resume = self._segment(text, start, cut, encoding, bounds.split)
            pieces.extend(encoding.ids[1:1 + taken])
            if resume <= start:
                size *= 2  # nothing certain in this segment (one word cut in two): a longer one
            start = resume
        if first is None or last is None:
            return list(self._tok.encode("").ids)
        return [first, *pieces[:keep], last]

    def _segment(self, text: str, start: int, cut: int, encoding: Any, split: frozenset[str]) -> tuple[int, int]:
        """(pieces of ``text[start:cut]`` that are the same in the whole text, where the next segment starts).
        Certain are the pieces of every word but the one the cut may fall into, and not within ``_margin``
        characters of the cut (a special token's text may be cut in two). The last word counts too where it is
        one [UNK] for being over the word-length limit: the next segment then starts where that word ends."""
        words = encoding.word_ids[1:-1]
        offsets = encoding.offsets[1:-1]
        if cut >= len(text):
            return len(words), len(text)
        if not words:
            return 0, cut  # only characters that make no pieces
        last = words[-1]
        first_of_last = words.index(last)
        taken = 0
        while taken < first_of_last and offsets[taken][1] <= cut - start - self._margin:
            taken += 1
        if taken == first_of_last and self._is_long_unknown(text, start, encoding, taken):
            return taken + 1, _word_end(text, start + offsets[taken][1], split)
        if taken == len(words):
            return taken, cut
        word_start = words.index(words[taken])
        return word_start, start + offsets[word_start][0]

    def _is_long_unknown(self, text: str, start: int, encoding: Any, index: int) -> bool:
        """Whether piece ``index`` (after [CLS]) is the segment's last, one [UNK] because its normalised text is
        over the word-length limit (so it is one [UNK] however long the word is in the whole text)."""
        ids = encoding.ids[1:-1]
        if self._unk_chars is None or index != len(ids) - 1 or ids[index] != self._unk_id:
            return False
        begin, end = encoding.offsets[1 + index]
        word = text[start + begin:start + end]
        normalizer = self._whole.normalizer
        normalized = normalizer.normalize_str(word) if normalizer is not None else word
        return len(normalized) > int(self._unk_chars)


@dataclass(frozen=True)
class _Bounds:
    split: frozenset[str]  # characters before which the BERT pre-tokenizer always splits (CJK: see _CANDIDATE)
    silent: re.Pattern[str]  # a run of characters that make no word piece (whitespace, removed characters)


@functools.cache
def _bounds() -> _Bounds:
    """Character classes of the BERT normaliser and pre-tokenizer: whitespace (after control characters are
    removed), punctuation (ASCII symbols and Unicode P*), CJK ideographs (each its own word)."""
    whitespace = {"\t", "\n", "\r"}
    punctuation: set[str] = {chr(c) for c in (*range(33, 48), *range(58, 65), *range(91, 97), *range(123, 127))}
    removed = {"\x00", "\ufffd"}
    for code in range(sys.maxunicode + 1):
        if 0xD800 <= code <= 0xDFFF:
            continue
        char = chr(code)
        category = unicodedata.category(char)
        if category in ("Cc", "Cf"):
            if char not in whitespace:
                removed.add(char)
        elif category == "Zs" or char in ("\u2028", "\u2029"):
            whitespace.add(char)
        elif category.startswith("P"):
            punctuation.add(char)
    silent = "".join(re.escape(c) for c in sorted(whitespace | removed))
    return _Bounds(split=frozenset(whitespace | punctuation), silent=re.compile(f"[{silent}]*"))


_CJK = "\u4e00-\u9fff\u3400-\u4dbf\uf900-\ufaff\U00020000-\U0002a6df\U0002a700-\U0002b73f" \
       "\U0002b740-\U0002b81f\U0002b820-\U0002ceaf\U0002f800-\U0002fa1f"
_CANDIDATE = re.compile(f"[\\W_{_CJK}]")  # every split character is one of these (a short class: fast)
_CJK_CHAR = re.compile(f"[{_CJK}]")


def _word_end(text: str, position: int, split: frozenset[str]) -> int:
    """Where the word going on at ``position`` ends: the first split character from there (or the end)."""
    while True:
        found = _CANDIDATE.search(text, position)
        if found is None:
            return len(text)
        char = found.group()
        if char in split or _CJK_CHAR.match(char):
            return found.start()
        position = found.end()


def _lowercase(directory: Path) -> bool:
    try:
        return bool(json.loads((directory / "tokenizer_config.json").read_text()).get("do_lower_case", True))
    except (OSError, ValueError):
        return True


def _wordpiece_from_vocab(vocab: Path, lowercase: bool) -> Any:
    """A BERT WordPiece tokenizer built from vocab.txt (checkpoints without tokenizer.json)."""
    from tokenizers import Tokenizer as HFTokenizer
    from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

    ids = {line.rstrip("\n"): i for i, line in enumerate(vocab.read_text(encoding="utf-8").splitlines())}
    for special in ("[CLS]", "[SEP]", "[UNK]"):
        if special not in ids:
            raise ModelError(f"{vocab}: vocabulary has no {special} token")
    tok = HFTokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, lowercase=lowercase)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    # special-token text in the input maps to the special id, as tokenizer.json and BertTokenizer do
    tok.add_special_tokens([t for t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]") if t in ids])
    return tok
