"""Precisions by CPU: the features read from /proc/cpuinfo, what each CPU offers, bf16 refused where it is not
native, and bf16's numerics (run here through an explicit features override: the path a CPU with native bf16
takes, computed by oneDNN's emulation on this one)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from e5studio.engine import runtimes
from e5studio.engine.bert import pack
from e5studio.engine.calibration import CALIBRATION_TEXTS
from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.cpu import cpu_features, parse_flags
from e5studio.engine.embedder import Embedder
from e5studio.engine.encoder import load_encoder
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import ModelError
from e5studio.retrieval.evaluate import load_eval_set, score
from e5studio.settings import EngineSettings
from tests.reference import row_cosines

AVX2 = "fpu sse sse2 ssse3 sse4_1 sse4_2 avx f16c fma avx2 bmi2"
SAPPHIRE = AVX2 + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 amx_int8"
# a CPU with native bf16, for the tests that run the bf16 path on any CPU (never the default)
NATIVE_BF16 = parse_flags(set(SAPPHIRE.split()))
CPU, F32 = torch.device("cpu"), torch.float32


def test_features_from_cpuinfo_flags() -> None:
    avx2 = parse_flags(set(AVX2.split()))
    assert (avx2.avx2, avx2.avx512, avx2.vnni, avx2.bf16, avx2.kernel_set) == (True, False, False, False, "avx2")
    assert avx2.precisions == ("fp32", "int8")
    assert avx2.describe() == "avx2 kernels (int8 without VNNI, bf16 not native)"
    zen4 = parse_flags(set((AVX2 + " avx512f avx512bw avx512vl avx512_vnni avx512_bf16").split()))
    assert (zen4.kernel_set, zen4.precisions) == ("avx512-bf16", ("fp32", "bf16", "int8"))
    assert NATIVE_BF16.kernel_set == "amx" and NATIVE_BF16.describe().endswith("(int8 VNNI, bf16 native)")
    assert parse_flags(set((AVX2 + " avx512f avx512bw avx512vl").split())).kernel_set == "avx512"
    assert parse_flags(set((AVX2 + " avx_vnni").split())).kernel_set == "avx-vnni"
    arm = parse_flags({"fp", "asimd", "bf16"}, machine="aarch64")
    assert (arm.kernel_set, arm.precisions) == ("baseline", ("fp32",))
    assert cpu_features() is cpu_features()  # read once per process


def test_bf16_is_refused_without_native_bf16_and_offered_with_it(tiny_dir: Path) -> None:
    avx2 = parse_flags(set(AVX2.split()))
    with pytest.raises(ModelError, match=r"needs a CPU with native bf16 \(AVX512-BF16 or AMX\); this one has avx2 "
                                         r"kernels, .* about 100x slower"):
        runtimes.choose(CPU, F32, "auto", "bf16", avx2)
    assert runtimes.choose(CPU, F32, "auto", "bf16", NATIVE_BF16) == ("cpu-bf16", None)
    with pytest.raises(ModelError, match="on cuda use --dtype bfloat16"):
        runtimes.choose(torch.device("cuda"), torch.bfloat16, "auto", "bf16", NATIVE_BF16)
    with pytest.raises(ModelError, match="LayerNorm, attention and pooling in fp32"):
        runtimes.choose(CPU, torch.bfloat16, "auto", "bf16", NATIVE_BF16)
    if not cpu_features().bf16:  # through the settings, on this machine
        with pytest.raises(ModelError, match="native bf16"):
            Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu", precision="bf16"))


def forced_bf16(model: str) -> Embedder:
    """``model`` in bf16 through the path a CPU with native bf16 takes, whatever this CPU is (tests only)."""
    checkpoint = load_checkpoint(model)
    tokenizer = Tokenizer(checkpoint.path, checkpoint.max_length)
    encoder = load_encoder(checkpoint).eval().requires_grad_(False)
    plan = runtimes.plan(encoder, CPU, F32, "auto", torch.get_num_threads(), "bf16",
                         lambda: [pack(tokenizer.encode(list(CALIBRATION_TEXTS)))], NATIVE_BF16)
    return Embedder(checkpoint, tokenizer, encoder, plan, workers=1)


def test_bf16_holds_bf16_weights_and_stays_close_to_fp32(tiny_dir: Path, scifact_passages: list[str]) -> None:
    """On the tiny model (bf16 is emulated on CPUs without it: slow, so not MiniLM in the default suite)."""
    fp32 = Embedder.load(EngineSettings(model=str(tiny_dir), device="cpu"))
    bf16 = forced_bf16(str(tiny_dir))
    assert bf16.precision == "bf16" and bf16.plan.large.name == "cpu-bf16"
    assert bf16.runtime.startswith("bf16: cpu-bf16; amx kernels")
    layer = bf16.encoder.layers[0]
    assert layer.qkv.weight.numel() == 0 and layer.ffn_in.weight.numel() == 0  # the fp32 copy is released
    assert bf16.encoder.word_embeddings.weight.dtype == torch.bfloat16
    texts = ["query: how do cells divide?", "a", *(p[:300] for p in scifact_passages[:10])]
    got, ref = bf16.embed(texts), fp32.embed(texts)
    cos = row_cosines(got, ref)
    assert got.dtype == np.float32 and cos.min() >= 0.9999, cos.min()
    assert np.abs(got - ref).max() > 1e-5  # bf16 really ran (fp32 kernels agree to ~1e-7)
    alone = np.concatenate([bf16.embed([t]) for t in texts[:6]])
    assert row_cosines(alone, got[:6]).min() >= 0.99999


@pytest.mark.slow
@pytest.mark.skipif(not cpu_features().bf16, reason="bf16 gate: this CPU has no native bf16 (AVX512-BF16 or AMX); "
                                                  "bf16 is refused here, so its gate runs only where it is offered")
def test_bf16_gate_on_minilm(minilm_embedder: Embedder, scifact_passages: list[str], shared_data_dir: Path) -> None:
    """The issue's gate: min cosine >= 0.9999 vs fp32 over 1,000 SciFact passages + 300 queries; nDCG@10 on
    SciFact and MED within 0.002 (no prefixes)."""
    bf16 = Embedder.load(EngineSettings(model="all-minilm-l6-v2", device="cpu", precision="bf16"))
    with (shared_data_dir / "scifact" / "queries.test.jsonl").open(encoding="utf-8") as f:
        queries = [json.loads(line)["query"] for line in f][:300]
    for texts in (scifact_passages[:1000], queries):
        assert row_cosines(bf16.embed(texts), minilm_embedder.embed(texts)).min() >= 0.9999
    for collection in ("scifact", "med"):
        evalset = load_eval_set(shared_data_dir / collection)
        fp32 = score(minilm_embedder, evalset, ("ndcg@10",), 100, "", "").metrics["ndcg@10"]
        got = score(bf16, evalset, ("ndcg@10",), 100, "", "").metrics["ndcg@10"]
        assert abs(got - fp32) <= 0.002, (collection, got, fp32)


@pytest.mark.slow
def test_precision_check_measures_every_precision_offered(capsys: pytest.CaptureFixture[str]) -> None:
    from e5studio.cli import main

    assert main(["precision-check", "--model", "all-minilm-l6-v2", "--rounds", "1", "--no-prefixes"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.split()[:1] and line.split()[0] in
            ("fp32", "bf16", "int8")]
    assert [r[0] for r in rows] == list(cpu_features().precisions), out
    fp32 = rows[0]
    assert fp32[5:7] == ["1.00000", "1.00000"]  # fp32 against itself
    assert all(0.99 <= float(r[5]) <= 1.0 and 0.3 <= float(r[7]) <= 1.0 for r in rows), out


def test_an_endpoint_precision_this_cpu_lacks_is_refused_at_creation(monkeypatch: pytest.MonkeyPatch) -> None:
    """``refuse_unoffered`` (the admin API's and the web form's check): bf16 refused with the reason on AVX2,
    accepted where bf16 is native; fp32 and int8 accepted on both; an unknown name left to the store's check."""
    from e5studio.engine import cpu
    from e5studio.errors import InputError

    monkeypatch.setattr(cpu, "cpu_features", lambda: parse_flags(set(AVX2.split())))
    with pytest.raises(InputError, match="native bf16"):
        cpu.refuse_unoffered("bf16")
    for precision in ("fp32", "int8", "int4"):
        cpu.refuse_unoffered(precision)
    monkeypatch.setattr(cpu, "cpu_features", lambda: NATIVE_BF16)
    cpu.refuse_unoffered("bf16")
