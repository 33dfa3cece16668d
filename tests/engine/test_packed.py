"""The CPU inference encoder (prepacked weights, in-place activation) against the plain encoder it came from."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from e5studio.engine import packed
from e5studio.engine.backend import TorchBackend, for_inference
from e5studio.engine.checkpoint import BertConfig, load_checkpoint
from e5studio.engine.encoder import BertEncoder
from tests.engine.plain import encoder_embeddings, plain_encoder
from tests.reference import words_text

pytestmark = pytest.mark.skipif(not packed.available(), reason="this torch build has no oneDNN linear ops")


@pytest.mark.parametrize("linear_shape", [(384, 1152), (1536, 384), (32, 128)])
@pytest.mark.parametrize("rows", [1, 7, packed.FEW_ROWS - 1, packed.FEW_ROWS, 700])
def test_packed_linear_equals_linear_on_both_weights(linear_shape: tuple[int, int], rows: int) -> None:
    """The oneDNN weight (few_rows, with its fused GELU and residual add) and MKL's (forward) give nn.Linear's
    values, whatever the number of rows."""
    gen = torch.Generator().manual_seed(rows)
    linear = nn.Linear(*linear_shape)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(linear.weight.shape, generator=gen) * 0.05)
        linear.bias.copy_(torch.randn(linear.bias.shape, generator=gen))
    x = torch.randn(rows, linear_shape[0], generator=gen)  # [rows, in]
    residual = torch.randn(rows, linear_shape[1], generator=gen)  # [rows, out]
    layer = packed.PackedLinear(linear)

    with torch.inference_mode():
        expected = F.linear(x, linear.weight, linear.bias)
        results = {"forward": layer(x), "few_rows": layer.few_rows(x),
                   "few_rows gelu": layer.few_rows(x, "gelu", "none"),
                   "few_rows_plus": layer.few_rows_plus(x, residual)}
    wanted = {"forward": expected, "few_rows": expected, "few_rows gelu": F.gelu(expected),
              "few_rows_plus": expected + residual}

    for name, got in results.items():
        torch.testing.assert_close(got, wanted[name], rtol=1e-5, atol=1e-5, msg=name)


@pytest.mark.parametrize("model", ["tiny", "minilm"])
def test_prepacked_encoder_equals_plain_encoder(request: pytest.FixtureRequest, model: str,
                                                scifact_passages: list[str]) -> None:
    """One short query (the few-rows path), and a mixed-length batch of many tokens (the many-rows path)."""
    from tokenizers import Tokenizer as HFTokenizer

    model_dir: Path = request.getfixturevalue(f"{model}_dir")
    checkpoint = load_checkpoint(str(model_dir))
    tokenizer = HFTokenizer.from_file(str(model_dir / "tokenizer.json"))
    tokenizer.enable_truncation(max_length=256)
    texts = ["query: how do statins lower cholesterol", words_text(scifact_passages, 400), *scifact_passages[:6]]
    ids = [np.asarray(e.ids, dtype=np.int64) for e in tokenizer.encode_batch(texts)]
    plain = plain_encoder(checkpoint)
    prepacked = packed.prepack(plain_encoder(checkpoint))

    one = encoder_embeddings(prepacked, ids[:1])
    many = encoder_embeddings(prepacked, ids)

    assert len(ids[0]) < packed.FEW_ROWS <= sum(len(s) for s in ids)
    np.testing.assert_allclose(one, encoder_embeddings(plain, ids[:1]), rtol=0, atol=1e-5)
    np.testing.assert_allclose(many, encoder_embeddings(plain, ids), rtol=0, atol=1e-5)
    np.testing.assert_allclose(many[:1], one, rtol=0, atol=1e-5)


def test_prepack_keeps_the_state_dict_and_turns_inference_only(tiny_dir: Path) -> None:
    checkpoint = load_checkpoint(str(tiny_dir))
    expected = plain_encoder(checkpoint).state_dict()
    encoder = packed.prepack(plain_encoder(checkpoint))

    state = encoder.state_dict()
    assert state.keys() == expected.keys()
    for name, tensor in expected.items():
        assert torch.equal(state[name], tensor), name
    layer = encoder.layers[0]
    assert isinstance(layer.qkv, packed.PackedLinear) and isinstance(layer.ffn_out, packed.PackedLinear)
    assert not encoder.training
    assert not any(p.requires_grad for p in encoder.parameters())


@pytest.mark.parametrize("hidden_act", ["gelu", "gelu_new", "relu"])
def test_in_place_activation_equals_the_activation(hidden_act: str) -> None:
    from e5studio.engine.encoder import activation

    x = torch.randn(50, 64, generator=torch.Generator().manual_seed(0)) * 3
    plain = activation(hidden_act)
    expected = plain(x)
    y = x.clone()
    out = packed.in_place(plain)(y)
    assert torch.equal(out, expected)
    assert out.data_ptr() == y.data_ptr()  # no new tensor


def test_cpu_float32_is_prepacked_and_other_dtypes_are_not(tiny_dir: Path) -> None:
    checkpoint = load_checkpoint(str(tiny_dir))
    fp32 = TorchBackend.load(checkpoint, device="cpu", dtype="float32")
    assert isinstance(fp32.encoder.layers[0].qkv, packed.PackedLinear)
    bf16 = for_inference(plain_encoder(checkpoint), torch.device("cpu"), torch.bfloat16)
    assert isinstance(bf16.layers[0].qkv, nn.Linear)
    assert bf16.word_embeddings.weight.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="float32"):
        packed.prepack(bf16)


def test_load_state_dict_after_prepack_repacks(tiny_dir: Path) -> None:
    """Weights loaded into a prepacked encoder reach both layouts (few-rows and many-rows paths alike)."""
    config = BertConfig(vocab_size=30522, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=32, hidden_act="relu")
    plain = BertEncoder(config)
    plain.init_weights(seed=0, std=0.3)
    plain.eval()
    prepacked = packed.prepack(BertEncoder(config))  # other (default) weights, packed

    prepacked.load_state_dict(plain.state_dict())

    short = [np.array([101, 7, 8, 9, 102]), np.array([101, 5, 102])]
    long = [np.arange(100, 100 + 300)]
    for sequences in (short, long):
        np.testing.assert_allclose(encoder_embeddings(prepacked, sequences), encoder_embeddings(plain, sequences),
                                   rtol=0, atol=1e-5)
