"""Documents cut into chunks that lose nothing (knowledge bases), or truncated as before and counted.

A document is tokenised whole, once (the engine's word pieces with their character offsets); chunk ``k`` is the
pieces ``[a_k, b_k)``: at most ``chunk_tokens`` pieces, ending at a word boundary where one is in the second half
of the window (else mid-word, still token-exact), and the next chunk starts ``overlap`` pieces earlier (moved
forward to a word start where one is in the overlap). A chunk's token ids are ``[CLS] + prefix + pieces + [SEP]``
(exactly the pieces of the whole document, so a chunk is embedded as the document's own tokens), and its text is
the exact slice ``text[start:end]``: ``start`` is where its first piece starts (0 for the first chunk), ``end``
where the next chunk's last-not-overlapping piece starts (the document's end for the last), so consecutive
chunks overlap or touch and together cover every character of the document.

``--chunking none`` keeps the engine's truncation (the first pieces that fit) and marks the documents it cut.
Every chunk row carries the document's id, its index, text, offsets and the document's other fields
(metadata). What a document cannot be (too large, a NUL character that PostgreSQL text refuses, metadata that
is not JSON, an id already taken) is a reject with its line, and the job goes on with the others.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from e5studio.errors import InputError
from e5studio.jobs.batch_embed.reader import Record, Reject
from e5studio.vocabulary import prefix_of

if TYPE_CHECKING:
    from e5studio.engine.tokenizer import Tokenizer

CHUNKING_MODES = ("tokens", "none")
DEFAULT_OVERLAP = 32
DEFAULT_MAX_DOCUMENT_BYTES = 4 * 1024 * 1024
_SURROGATE = re.compile("[\ud800-\udfff]")
_METADATA_DEPTH = 20


@dataclass(frozen=True)
class ChunkPolicy:
    """How documents become chunks: ``mode`` tokens (split) or none (truncate and report); ``chunk_tokens``
    word pieces per chunk (None: all that fit in the model's window with the prefix); ``overlap`` pieces shared
    by consecutive chunks; documents over ``max_document_bytes`` (UTF-8) are rejected."""

    mode: str = "tokens"
    chunk_tokens: int | None = None
    overlap: int = DEFAULT_OVERLAP
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES

    def __post_init__(self) -> None:
        if self.mode not in CHUNKING_MODES:
            raise InputError(f"--chunking must be tokens or none, got {self.mode!r}")
        if self.chunk_tokens is not None and self.chunk_tokens < 8:
            raise InputError(f"--chunk-tokens must be at least 8, got {self.chunk_tokens}")
        if self.overlap < 0:
            raise InputError(f"--overlap must be 0 or more, got {self.overlap}")
        if self.max_document_bytes < 1:
            raise InputError("the largest document size must be at least 1 byte")

    def to_json(self) -> dict[str, Any]:
        return {"mode": self.mode, "chunk_tokens": self.chunk_tokens, "overlap": self.overlap}

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> ChunkPolicy:
        return cls(str(raw.get("mode", "tokens")), raw.get("chunk_tokens"), int(raw.get("overlap", DEFAULT_OVERLAP)))

    def resolved(self, max_length: int, prefix_tokens: int) -> tuple[int, int]:
        """(pieces per chunk, overlap) for a model window of ``max_length`` with a prefix of ``prefix_tokens``;
        InputError when the chunk does not fit or the overlap is not below half of it."""
        fits = max_length - 2 - prefix_tokens
        size = fits if self.chunk_tokens is None else self.chunk_tokens
        if size > fits:
            raise InputError(f"--chunk-tokens {size} does not fit the model's window: at most {fits} "
                             f"({max_length} tokens less [CLS], [SEP] and a {prefix_tokens}-token prefix)")
        overlap = min(self.overlap, size // 4) if self.chunk_tokens is None else self.overlap
        if self.mode == "tokens" and overlap * 2 > size:
            raise InputError(f"--overlap {overlap} must be at most half of the chunk ({size} tokens)")
        return size, overlap


@dataclass(frozen=True)
class ChunkRow:
    """One chunk as stored: its document, index, exact text slice and offsets, the document's metadata."""

    doc_id: str
    chunk: int
    text: str
    start: int
    end: int
    metadata: str  # JSON object
    truncated: bool
    tokens: int

    @property
    def id(self) -> str:
        return f"{self.doc_id}#{self.chunk}"


def spans(pieces: int, words: list[int], size: int, overlap: int) -> list[tuple[int, int]]:
    """The piece ranges ``[a, b)`` of the chunks of a document of ``pieces`` word pieces (module docstring)."""
    if pieces <= size:
        return [(0, pieces)]

    def word_start(i: int) -> bool:
        return i <= 0 or i >= pieces or words[i] != words[i - 1]

    out: list[tuple[int, int]] = []
    a = 0
    while True:
        b = a + size
        if b >= pieces:
            out.append((a, pieces))
            return out
        cut = b
        while cut > a + size // 2 and not word_start(cut):
            cut -= 1
        b = cut if word_start(cut) and cut > a + size // 2 else b
        out.append((a, b))
        nxt = b - overlap
        while nxt < b and not word_start(nxt):
            nxt += 1
        a = nxt if nxt < b else b - overlap


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "a NUL character"
    if _SURROGATE.search(value):
        return "a lone surrogate"
    return None


def _check_json(value: Any, where: str, depth: int = 0) -> str | None:
    """Why ``value`` cannot be stored as JSON (text and JSONB alike), or None."""
    if depth > _METADATA_DEPTH:
        return f"{where} is nested deeper than {_METADATA_DEPTH} levels"
    if value is None or isinstance(value, (bool, int, str)):
        bad = _bad_string(value) if isinstance(value, str) else None
        return f"{where} has {bad}" if bad else None
    if isinstance(value, float):
        return None if math.isfinite(value) else f"{where} is {value!r} (not a JSON number)"
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                return f"{where} has a key that is not a string"
            bad = _bad_string(key)
            if bad:
                return f"{where} has a key with {bad}"
            problem = _check_json(item, f"{where}.{key}", depth + 1)
            if problem:
                return problem
        return None
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            problem = _check_json(item, f"{where}[{i}]", depth + 1)
            if problem:
                return problem
        return None
    return f"{where} is a {type(value).__name__}, not JSON-serialisable"


@dataclass
class Chunker:
    """Splits records into chunk rows with their token ids; remembers the document ids it has given out
    (``taken``: ids already in the knowledge base), so a duplicate is a reject naming the first line."""

    tokenizer: Tokenizer
    policy: ChunkPolicy
    input_type: str | None
    taken: set[str] = field(default_factory=set)
    _first_line: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        prefix = prefix_of(self.input_type)
        self._prefix = prefix
        self._prefix_ids = self.tokenizer.pieces(prefix)[0] if prefix else []
        self._cls, self._sep = self.tokenizer.cls_sep
        self.size, self.overlap = self.policy.resolved(self.tokenizer.max_length, len(self._prefix_ids))

    def split(self, record: Record) -> tuple[list[ChunkRow], list[np.ndarray]] | Reject:
        """The chunk rows of one document and each one's token ids, or a reject saying why not."""
        problem = self._problem(record)
        if problem is not None:
            return Reject(record.line, problem, record.text[:200])
        metadata = json.dumps(record.metadata or {}, ensure_ascii=False, sort_keys=True)
        ids, offsets, words = self.tokenizer.pieces(record.text)
        prefix = [] if self._prefix and record.text.startswith(self._prefix) else self._prefix_ids
        if self.policy.mode == "none":
            keep = min(len(ids), self.size)
            row = ChunkRow(record.id, 0, record.text, 0, len(record.text), metadata, keep < len(ids), keep)
            return [row], [self._sequence(prefix, ids[:keep])]
        rows: list[ChunkRow] = []
        sequences: list[np.ndarray] = []
        ranges = spans(len(ids), words, self.size, self.overlap)
        for k, (a, b) in enumerate(ranges):
            start = 0 if k == 0 else offsets[a][0]
            end = len(record.text) if k == len(ranges) - 1 else offsets[b][0]
            rows.append(ChunkRow(record.id, k, record.text[start:end], start, end, metadata, False, b - a))
            sequences.append(self._sequence(prefix if k == 0 else self._prefix_ids, ids[a:b]))
        return rows, sequences

    def _sequence(self, prefix: list[int], pieces: list[int]) -> np.ndarray:
        return np.asarray([self._cls, *prefix, *pieces, self._sep], dtype=np.int64)

    def _problem(self, record: Record) -> str | None:
        size = len(record.text.encode("utf-8", errors="surrogatepass"))
        if size > self.policy.max_document_bytes:
            return (f"document {record.id!r} is {size:,} bytes, over the limit of {self.policy.max_document_bytes:,} "
                    "(split it, or raise --max-document-mb)")
        if "\x00" in record.text:
            return f"document {record.id!r} has a NUL character at {record.text.index(chr(0))} (PostgreSQL text " \
                   "cannot hold it)"
        bad = _bad_string(record.id)
        if bad:
            return f"document id has {bad}"
        if record.metadata:
            problem = _check_json(record.metadata, "metadata field")
            if problem:
                return problem
        if record.id in self.taken:
            return f"document id {record.id!r} is already in the knowledge base (delete it first to replace it)"
        if record.id in self._first_line:
            return f"duplicate document id {record.id!r} (first at line {self._first_line[record.id]})"
        self._first_line[record.id] = record.line
        return None


def chunk_columns(rows: Iterable[ChunkRow]) -> dict[str, list[Any]]:
    """The shard columns of chunk rows (besides id, text_sha256 and embedding)."""
    rows = list(rows)
    return {"doc_id": [r.doc_id for r in rows], "chunk": [r.chunk for r in rows], "text": [r.text for r in rows],
            "start": [r.start for r in rows], "end": [r.end for r in rows], "metadata": [r.metadata for r in rows],
            "truncated": [r.truncated for r in rows], "tokens": [r.tokens for r in rows]}
