"""Reference computations the engine is compared against, written from the libraries' own documentation.

Nothing here uses e5studio code: the point is to have an independent answer.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F


def bert_model_embeddings(model_dir: Path, sequences: Sequence[np.ndarray]) -> np.ndarray:
    """``transformers.BertModel`` (eager attention, fp32, eval) + the E5 model card's masked average pooling.

    ``sequences`` are token-id arrays with [CLS]/[SEP]; they are right-padded into one batch with an
    attention mask, exactly as a Hugging Face tokenizer with ``padding=True`` would do.
    """
    from transformers import BertModel

    model = BertModel.from_pretrained(str(model_dir), attn_implementation="eager", dtype=torch.float32).eval()
    longest = max(len(s) for s in sequences)
    input_ids = torch.zeros(len(sequences), longest, dtype=torch.long)  # [B, L], pad id 0
    mask = torch.zeros(len(sequences), longest, dtype=torch.long)  # [B, L]
    for row, ids in enumerate(sequences):
        input_ids[row, : len(ids)] = torch.from_numpy(np.asarray(ids, dtype=np.int64))
        mask[row, : len(ids)] = 1
    with torch.no_grad():
        last_hidden = model(input_ids=input_ids, attention_mask=mask).last_hidden_state  # [B, L, d]
    # average_pool from the intfloat/e5-large-v2 model card
    pooled = last_hidden.masked_fill(~mask[..., None].bool(), 0.0).sum(dim=1) / mask.sum(dim=1)[..., None]
    return F.normalize(pooled, p=2, dim=1).numpy()


def sentence_transformers_embeddings(model_dir: Path, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
    """``SentenceTransformer(model_dir).encode(texts, normalize_embeddings=True)`` on CPU, float32 [n, d]."""
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(model_dir), device="cpu")
    vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                           convert_to_numpy=True, show_progress_bar=False)
    del model
    return np.asarray(vectors, dtype=np.float32)


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of ``a`` with the same row of ``b``: [n, d] x [n, d] -> [n]."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return (a64 * b64).sum(1) / (np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1))


def copy_checkpoint(source: Path, destination: Path) -> Path:
    """A writable copy of a checkpoint directory (tests modify copies, never the shared fixtures)."""
    shutil.copytree(source, destination)
    return destination


def words_text(passages: Sequence[str], n_words: int) -> str:
    """The first ``n_words`` whitespace-separated words of the passages, joined into one text."""
    words: list[str] = []
    for passage in passages:
        words.extend(passage.split())
        if len(words) >= n_words:
            break
    assert len(words) >= n_words, f"only {len(words)} words available"
    return " ".join(words[:n_words])
