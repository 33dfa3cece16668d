"""int8 kernels for CPU inference: dynamic quantization of every dense layer; the rest stays fp32.

Weights are quantized once, at load, from the fp32 checkpoint: int8, symmetric, **per output channel**.
Activations are quantized at run time **per row** (per token), asymmetrically (each row's own min and max),
so a token's result never depends on the other tokens of a micro-batch: a text alone gives the same vector
as inside any batch. The integer products run on FBGEMM (torch's x86 quantized linear): the row, already
mapped to 0..127, enters as uint8 (zero point 0, scale 1), the weight as int8; the int32 sums come back as fp32
times the weight's per-channel scale, and the row's scale, offset and the bias are applied after.

Two choices, each checked against fp32 on MiniLM by the tests' quality gate (``tests/engine/test_int8.py``):
- **7-bit activations**: AVX2 has no 8-bit dot-product instruction; its u8 x s8 multiply (``vpmaddubsw``)
  adds two products into a saturating int16, and 255 x 127 x 2 overflows it; 127 x 127 x 2 does not (exact
  integer sums). 8-bit weights with 7-bit activations keep more of fp32's direction than 7-bit weights with
  8-bit activations.
- **Per-channel smoothing** (SmoothQuant, Xiao et al. 2023, alpha 0.5): BERT's LayerNorm outputs carry a few
  channels far larger than the rest, which cost per-row activation quantization most of its range. Each dense
  layer's input channel c is divided by ``s_c = sqrt(max|x_c| / max|W_:,c|)`` and the weight's column
  multiplied by it (the product is unchanged); ``max|x_c|`` is measured once at load by running
  :data:`~e5studio.engine.calibration.CALIBRATION_TEXTS` in fp32. Only the layers whose input is a LayerNorm
  output (QKV, feed-forward in) are smoothed; the other two quantize their input in place.
Embeddings, LayerNorm, attention (softmax), the activation and pooling stay fp32.

Attention runs sequence by sequence, each on its own length (no padding, no mask): rounding to integers turns
the last-bit differences that a padded, masked attention kernel makes between batch shapes into visible ones,
so every computation a row goes through here is the same whatever batch it is in: a text alone and inside a
mixed batch give the same vector.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence

import torch

from e5studio.engine.bert import DENSE_LAYERS, LayersRuntime, ManyRowsKernels, PackedBatch, activate_, attend_padded
from e5studio.engine.encoder import BertEncoder, EncoderLayer

ACTIVATION_MAX = 127  # activations on 7 bits (0..127): no int16 saturation on AVX2 (module docstring)
WEIGHT_MAX = 127
SMOOTH_ALPHA = 0.5
SMOOTHED = ("qkv", "ffn_in")  # the dense layers whose input is a LayerNorm output (outlier channels)

InputRanges = dict[str, torch.Tensor]  # dense layer name -> max |x_c| over the calibration tokens, [in]


def available() -> bool:
    """Whether this torch build has FBGEMM's quantized linear (x86-64 builds do)."""
    return any(e in torch.backends.quantized.supported_engines for e in ("x86", "fbgemm"))


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 [out, in] -> (int8 [out, in] in -127..127, fp32 scales [out]); ``weight ~ q * scales[:, None]``."""
    scales = weight.abs().amax(dim=1).clamp_min(1e-12) / WEIGHT_MAX  # [out]
    q = torch.round(weight / scales[:, None]).clamp_(-WEIGHT_MAX, WEIGHT_MAX).to(torch.int8)
    return q, scales


def smoothing(input_range: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """SmoothQuant's per-input-channel factor s [in]: the layer computes (x / s) (W * s)^T."""
    w_range = weight.abs().amax(dim=0)  # [in]
    s = input_range.clamp_min(1e-5).pow(SMOOTH_ALPHA) / w_range.clamp_min(1e-5).pow(1 - SMOOTH_ALPHA)
    return s.clamp_(1e-2, 1e2)


class Int8Linear:
    """One dense layer ``x W^T + b`` in int8 (module docstring). With ``input_range`` the layer is smoothed
    (for inputs with outlier channels: LayerNorm outputs); without, it quantizes its input in place (for
    inputs that are temporaries of the block: the attention context, the activated feed-forward)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, input_range: torch.Tensor | None) -> None:
        smooth = torch.ones(weight.shape[1]) if input_range is None else smoothing(input_range, weight)
        q, scales = quantize_weight(weight * smooth[None, :])  # [out, in], [out]
        dequantized = q.float() * scales[:, None]  # exactly representable per channel
        with warnings.catch_warnings():  # quantized tensor creation is marked deprecated; it is FBGEMM's input
            warnings.simplefilter("ignore")
            zero_points = torch.zeros(q.shape[0], dtype=torch.long)
            qweight = torch.quantize_per_channel(dequantized, scales.double(), zero_points, 0, torch.qint8)
        self.packed = torch.ops.quantized.linear_prepack(qweight, None)
        self.inv_smooth = None if input_range is None else (1.0 / smooth).contiguous()  # [in]
        self.column_sums = dequantized.sum(dim=1)  # [out]: what a row offset adds to every output
        self.bias = bias

    def quantized(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The weight as FBGEMM holds it (no copy is kept here): int8 [out, in] and fp32 per-channel scales
        [out] (smoothing factors already applied)."""
        qweight, _ = torch.ops.quantized.linear_unpack(self.packed)
        return qweight.int_repr(), qweight.q_per_channel_scales().float()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """[T, in] fp32 -> [T, out] fp32 (overwrites ``x`` when the layer is not smoothed)."""
        if self.inv_smooth is not None:
            x = x * self.inv_smooth  # [T, in], a new tensor: the caller's x is the block's residual
        high, low = x.amax(dim=1, keepdim=True), x.amin(dim=1, keepdim=True)  # [T, 1] (aminmax is 3x slower)
        inv_step = ACTIVATION_MAX / (high - low).clamp_min_(1e-12)  # [T, 1]
        q = torch.addcmul(-low * inv_step, x, inv_step, out=x)  # [T, in] in 0..127
        y = torch.ops.quantized.linear_with_input_q_dq_qweight_dq_output_fp32(q, 1.0, 0, self.packed)  # [T, out]
        return y.div_(inv_step).addcmul_(low, self.column_sums).add_(self.bias)


class Int8Kernels(ManyRowsKernels):
    """One layer's :class:`~e5studio.engine.bert.LayerKernels` with int8 dense layers (module docstring);
    attention and LayerNorm as :class:`~e5studio.engine.bert.ManyRowsKernels`."""

    def __init__(self, layer: EncoderLayer, input_ranges: InputRanges | None = None) -> None:
        super().__init__(layer)
        ranges = input_ranges or {}
        self.linear = {name: Int8Linear(*self.weights[name], ranges.get(name) if name in SMOOTHED else None)
                       for name in DENSE_LAYERS}
        self.weights = {}  # the int8 layers hold all they need: no fp32 copy kept

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        y = self.linear[name](x)  # [T, out]
        if activation:
            return activate_(y, self.activation)
        return y if residual is None else y.add_(residual)

    def attention(self, qkv: torch.Tensor, batch: PackedBatch) -> torch.Tensor:
        """Each sequence's attention on its own tokens alone: [T, 3d] -> [T, d] (module docstring)."""
        out = [attend_padded(part, 1, part.shape[0], self.num_heads)  # [L, d]
               for part in torch.split(qkv, batch.lengths.tolist())]  # [L, 3d] each
        return torch.cat(out) if len(out) > 1 else out[0]


class _RangeRecorder(ManyRowsKernels):
    """fp32 many-rows kernels that also record each dense layer's largest input magnitude per channel."""

    def __init__(self, layer: EncoderLayer) -> None:
        super().__init__(layer)
        self.ranges: InputRanges = {}

    def dense(self, x: torch.Tensor, name: str, activation: bool = False,
              residual: torch.Tensor | None = None) -> torch.Tensor:
        seen = x.abs().amax(dim=0)  # [in]
        self.ranges[name] = seen if name not in self.ranges else torch.maximum(self.ranges[name], seen)
        return super().dense(x, name, activation, residual)


def measure_input_ranges(encoder: BertEncoder, batches: Sequence[PackedBatch]) -> list[InputRanges]:
    """Run ``batches`` through the encoder in fp32; per layer, each dense layer's max |x_c| [in]."""
    recorders = [_RangeRecorder(layer) for layer in encoder.layers if isinstance(layer, EncoderLayer)]
    runtime = LayersRuntime("calibration", encoder, recorders)
    with torch.inference_mode():
        for batch in batches:
            runtime.hidden(batch)
    return [r.ranges for r in recorders]


def int8_layers(encoder: BertEncoder, calibration: Callable[[], Sequence[PackedBatch]] | None = None,
                ranges: Sequence[Mapping[str, torch.Tensor]] | None = None) -> list[Int8Kernels]:
    """Every layer's int8 kernels; smoothing from ``ranges`` or from running ``calibration()`` (none: no
    smoothing)."""
    layers = [layer for layer in encoder.layers if isinstance(layer, EncoderLayer)]
    if ranges is None and calibration is not None:
        ranges = measure_input_ranges(encoder, calibration())
    return [Int8Kernels(layer, dict(ranges[i]) if ranges is not None else None) for i, layer in enumerate(layers)]
