"""WordPiece tokenisation on the Hugging Face ``tokenizers`` library, with the E5 prefixes.

Inputs are used as given by default (the platform contract: callers write ``query: `` / ``passage: ``);
``input_type`` opts in to adding the prefix where it is missing. Truncation keeps the first
``max_length - 2`` word pieces plus [CLS] and [SEP].
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from e5studio.errors import InputError, ModelError

InputType = Literal["query", "passage"]
PREFIXES: dict[str, str] = {"query": "query: ", "passage": "passage: "}


def add_prefix(text: str, input_type: str | None) -> str:
    """``text`` with the E5 prefix of ``input_type`` unless it already starts with it (never twice)."""
    if input_type is None:
        return text
    try:
        prefix = PREFIXES[input_type]
    except KeyError:
        raise InputError(f"input_type must be one of {', '.join(PREFIXES)}, got {input_type!r}") from None
    return text if text.startswith(prefix) else prefix + text


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
        tok.enable_truncation(max_length=max_length)
        self._tok = tok
        self.max_length = max_length

    def encode(self, texts: Sequence[str], input_type: str | None = None) -> list[np.ndarray]:
        """One int64 id array per text, [CLS] and [SEP] included."""
        bad = [i for i, t in enumerate(texts) if not isinstance(t, str)]
        if bad:
            raise InputError(f"inputs must be strings; item {bad[0]} is {type(texts[bad[0]]).__name__}")
        prepared = [add_prefix(t, input_type) for t in texts]
        encodings = self._tok.encode_batch_fast(prepared) if hasattr(self._tok, "encode_batch_fast") \
            else self._tok.encode_batch(prepared)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def count_tokens(self, texts: Sequence[str], input_type: str | None = None) -> list[int]:
        """Tokens per text after truncation, [CLS] and [SEP] included (what the model computes on)."""
        return [len(ids) for ids in self.encode(texts, input_type)]


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
