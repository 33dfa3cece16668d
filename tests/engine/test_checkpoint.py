"""Checkpoint resolution, config parsing, weight loading (every format we accept) and writing back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from e5studio.engine.checkpoint import BertConfig, load_checkpoint, read_weights, resolve_model, save_checkpoint
from e5studio.engine.embedder import Embedder
from e5studio.errors import ModelError
from e5studio.settings import EngineSettings
from tests.broken_checkpoints import BROKEN_CHECKPOINTS, Broken
from tests.reference import copy_checkpoint

TEXTS = ["a", "", "query: how do cells divide?", "passage: Mitosis is the division of a cell nucleus " * 5]


def _embed(model_dir: Path, texts: list[str] = TEXTS) -> np.ndarray:
    return Embedder.load(EngineSettings(model=str(model_dir), device="cpu")).embed(texts)


@pytest.fixture(scope="module")
def tiny_vectors(tiny_dir: Path) -> np.ndarray:
    return _embed(tiny_dir)


# ------------------------------------------------------------------------------------------ resolving


def test_alias_resolves_to_packaged_minilm(minilm_dir: Path) -> None:
    for name in ("all-minilm-l6-v2", "minilm", "ALL-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"):
        assert resolve_model(name) == minilm_dir


def test_local_directory_resolves_to_itself(tiny_dir: Path) -> None:
    assert resolve_model(str(tiny_dir)) == tiny_dir


def test_unknown_alias_names_the_known_ones() -> None:
    with pytest.raises(ModelError, match="unknown model 'no-such-alias'.*e5-large-v2"):
        resolve_model("no-such-alias")


def test_checkpoint_max_length_comes_from_sentence_bert_config(minilm_dir: Path, tiny_dir: Path) -> None:
    assert load_checkpoint(str(minilm_dir)).max_length == 256  # sentence_bert_config.json
    assert load_checkpoint(str(minilm_dir)).config.max_position_embeddings == 512
    assert load_checkpoint(str(tiny_dir)).max_length == 512


@pytest.mark.parametrize(("model_max_length", "expected"), [(128, 128), (10**30, 512), (None, 512)])
def test_checkpoint_max_length_falls_back_to_tokenizer_then_positions(
    tiny_dir: Path, tmp_path: Path, model_max_length: int | None, expected: int
) -> None:
    directory = copy_checkpoint(tiny_dir, tmp_path / "ckpt")
    (directory / "sentence_bert_config.json").unlink()
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("model_max_length", None)
    if model_max_length is not None:
        config["model_max_length"] = model_max_length
    config_file.write_text(json.dumps(config))
    assert load_checkpoint(str(directory)).max_length == expected


def test_settings_max_length_is_capped_at_position_embeddings(minilm_dir: Path, minilm_embedder: Embedder) -> None:
    assert minilm_embedder.max_length == 256  # the checkpoint's own (loaded with the default settings)
    # the cap is set before any runtime is built: the plain torch runtime, which builds no ONNX graph, is enough
    for asked, capped in ((100, 100), (4096, 512)):
        settings = EngineSettings(model=str(minilm_dir), device="cpu", max_length=asked, cpu_runtime="torch")
        assert Embedder.load(settings).max_length == capped


# --------------------------------------------------------------------------------------------- config


def _write_config(tmp_path: Path, **changes: object) -> Path:
    raw: dict[str, object] = {"model_type": "bert", "vocab_size": 100, "hidden_size": 8, "num_hidden_layers": 1,
                              "num_attention_heads": 2, "intermediate_size": 16}
    raw.update(changes)
    path = tmp_path / "config.json"
    path.write_text(json.dumps({k: v for k, v in raw.items() if v is not None}))
    return path


def test_config_reads_hf_fields(tmp_path: Path) -> None:
    path = _write_config(tmp_path, max_position_embeddings=128, type_vocab_size=1, layer_norm_eps=1e-7,
                         hidden_act="gelu_new", pad_token_id=None)
    config = BertConfig.from_file(path)
    assert config == BertConfig(vocab_size=100, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=128, type_vocab_size=1,
                                layer_norm_eps=1e-7, hidden_act="gelu_new", pad_token_id=0)
    assert config.head_dim == 4


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"hidden_size": None}, "missing field 'hidden_size'"),
        ({"num_attention_heads": 3}, "not a multiple"),
        ({"position_embedding_type": "relative_key"}, "relative_key"),
        ({"hidden_act": "silu"}, "hidden_act 'silu'"),
        ({"model_type": None}, "unsupported architecture model_type=None"),
    ],
)
def test_bad_config_is_a_model_error_naming_the_file(tmp_path: Path, changes: dict, pattern: str) -> None:
    path = _write_config(tmp_path, **changes)
    with pytest.raises(ModelError, match=pattern) as info:
        BertConfig.from_file(path)
    assert str(path) in str(info.value)


def test_config_that_is_not_json_is_a_model_error(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(ModelError, match="cannot read config"):
        BertConfig.from_file(path)


# ------------------------------------------------------------------------------------- loading errors


@pytest.mark.parametrize("case", sorted(BROKEN_CHECKPOINTS))
def test_broken_checkpoint_is_a_clear_model_error(case: str, tiny_dir: Path, tmp_path: Path) -> None:
    broken: Broken = BROKEN_CHECKPOINTS[case](tiny_dir, tmp_path)
    with pytest.raises(ModelError) as info:
        Embedder.load(EngineSettings(model=broken.model, device="cpu"))
    message = str(info.value)
    for part in broken.message_parts:
        assert part in message, f"{part!r} not in {message!r}"


def test_corrupt_weights_file_is_a_model_error(tiny_dir: Path, tmp_path: Path) -> None:
    directory = copy_checkpoint(tiny_dir, tmp_path / "ckpt")
    (directory / "model.safetensors").write_bytes(b"\x00" * 100)
    with pytest.raises(ModelError, match="cannot read weights") as info:
        Embedder.load(EngineSettings(model=str(directory), device="cpu"))
    assert str(directory / "model.safetensors") in str(info.value)


def test_unreachable_hub_id_lists_what_was_tried_and_the_remedy(tmp_path: Path) -> None:
    """Run in a fresh interpreter: huggingface_hub reads HF_HUB_OFFLINE / HF_HOME when it is imported."""
    script = textwrap.dedent("""
        from e5studio.engine.checkpoint import load_checkpoint
        from e5studio.errors import ModelError
        try:
            load_checkpoint("intfloat/e5-large-v2")
        except ModelError as exc:
            print(exc)
        else:
            raise SystemExit("no ModelError")
    """)
    hf_home = tmp_path / "hf-home"
    hf_home.mkdir()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    env.pop("HF_HUB_CACHE", None)
    env.pop("HUGGINGFACE_HUB_CACHE", None)
    result = subprocess.run([sys.executable, "-c", script], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    message = result.stdout
    assert "cannot load model 'intfloat/e5-large-v2'" in message
    assert "tried:" in message
    assert str(tmp_path / "intfloat/e5-large-v2") in message  # the local directory it looked for
    assert str(hf_home) in message  # the Hugging Face cache it looked in
    assert "Hugging Face Hub" in message
    assert "--model" in message
    assert "hf download intfloat/e5-large-v2" in message


# ----------------------------------------------------------------------------------- other formats


def _hf_tensors(directory: Path) -> dict[str, torch.Tensor]:
    return load_file(str(directory / "model.safetensors"))


def test_pytorch_model_bin_gives_the_same_vectors(tiny_dir: Path, tmp_path: Path, tiny_vectors: np.ndarray) -> None:
    directory = copy_checkpoint(tiny_dir, tmp_path / "ckpt")
    torch.save(_hf_tensors(directory), directory / "pytorch_model.bin")
    (directory / "model.safetensors").unlink()
    np.testing.assert_array_equal(_embed(directory), tiny_vectors)


def test_sharded_safetensors_give_the_same_vectors(tiny_dir: Path, tmp_path: Path, tiny_vectors: np.ndarray) -> None:
    directory = copy_checkpoint(tiny_dir, tmp_path / "ckpt")
    tensors = _hf_tensors(directory)
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, shard_names in shards.items():
        save_file({n: tensors[n] for n in shard_names}, str(directory / file), metadata={"format": "pt"})
    weight_map = {n: file for file, shard_names in shards.items() for n in shard_names}
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (directory / "model.safetensors").unlink()
    np.testing.assert_array_equal(_embed(directory), tiny_vectors)


def test_bert_for_masked_lm_checkpoint_loads(tiny_dir: Path, tmp_path: Path, tiny_vectors: np.ndarray) -> None:
    """A checkpoint saved by transformers' BertForMaskedLM: `bert.`-prefixed names plus an MLM head."""
    from transformers import BertForMaskedLM

    directory = tmp_path / "mlm"
    BertForMaskedLM.from_pretrained(str(tiny_dir)).save_pretrained(str(directory))
    for name in ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "sentence_bert_config.json"):
        (directory / name).write_bytes((tiny_dir / name).read_bytes())
    saved = set(_hf_tensors(directory))
    assert "bert.embeddings.word_embeddings.weight" in saved
    assert any(name.startswith("cls.") for name in saved)

    np.testing.assert_allclose(_embed(directory), tiny_vectors, rtol=0, atol=1e-7)


@pytest.mark.parametrize("edit", ["gamma_beta", "bert_prefix"])
def test_legacy_tensor_names_load(tiny_dir: Path, tmp_path: Path, tiny_vectors: np.ndarray, edit: str) -> None:
    renames: dict[str, Callable[[str], str]] = {
        "gamma_beta": lambda n: n.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias",
                                                                                         "LayerNorm.beta"),
        "bert_prefix": lambda n: "bert." + n,
    }
    directory = copy_checkpoint(tiny_dir, tmp_path / "ckpt")
    tensors = {renames[edit](n): t for n, t in _hf_tensors(directory).items()}
    save_file(tensors, str(directory / "model.safetensors"))
    np.testing.assert_array_equal(_embed(directory), tiny_vectors)


# --------------------------------------------------------------------------------------- writing back


def test_save_checkpoint_round_trip(minilm_dir: Path, minilm_embedder: Embedder, tmp_path: Path) -> None:
    from transformers import BertModel

    state = minilm_embedder.encoder.state_dict()
    out = tmp_path / "written"
    save_checkpoint(out, minilm_embedder.checkpoint.config, state, tokenizer_from=minilm_dir, max_length=256)

    # our loader reads back exactly the same tensors
    reread = read_weights(load_checkpoint(str(out)))
    assert reread.keys() == state.keys()
    for name, tensor in state.items():
        assert torch.equal(reread[name], tensor), name

    # the file holds the original Hugging Face tensors under their original names (pooler aside)
    original = {n: t for n, t in _hf_tensors(minilm_dir).items()
                if not n.startswith(("pooler.", "embeddings.position_ids"))}
    written = _hf_tensors(out)
    assert written.keys() == original.keys()
    for name, tensor in original.items():
        assert torch.equal(written[name], tensor), name

    # transformers loads it with nothing missing but the pooler and nothing unexpected
    _, info = BertModel.from_pretrained(str(out), output_loading_info=True)
    assert set(info["missing_keys"]) <= {"pooler.dense.weight", "pooler.dense.bias"}
    assert not info["unexpected_keys"]
    assert not info["mismatched_keys"]
    assert load_checkpoint(str(out)).max_length == 256
