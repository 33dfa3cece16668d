"""CUDA: bf16 / fp16 autocast training steps (loss in fp32) match fp32 closely; gradient checkpointing."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.encoder import load_encoder
from e5studio.engine.tokenizer import Tokenizer
from e5studio.jobs.train.passages import TrainData
from e5studio.jobs.train.sampling import GroupSampler
from e5studio.jobs.train.settings import RunOptions, TrainSettings
from e5studio.jobs.train.trainer import (
    DistContext,
    Trainer,
    TrainRun,
    prepare_step,
    step_loss,
)

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_step_loss_is_fp32_and_close_to_fp32(dtype: torch.dtype, toy_dir: Path,
                                                       tiny_nodropout_dir: Path) -> None:
    checkpoint = load_checkpoint(str(tiny_nodropout_dir))
    encoder = load_encoder(checkpoint).cuda().train()
    data = TrainData.load(toy_dir)
    groups = GroupSampler(data, 8, 3, seed=0).batch(0, 0)
    inputs = prepare_step(groups, data.passages, Tokenizer(checkpoint.path, 16), Tokenizer(checkpoint.path, 32))
    device = torch.device("cuda")
    reference = step_loss(encoder, inputs, DistContext(), device, 0.01)
    low = step_loss(encoder, inputs, DistContext(), device, 0.01, dtype)
    assert low.dtype == torch.float32
    assert low.item() == pytest.approx(reference.item(), rel=0.05)
    low.backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in encoder.parameters())


def test_bf16_training_with_gradient_checkpointing(tmp_path: Path, toy_dir: Path, tiny_dropout_dir: Path) -> None:
    job = TrainRun(model=str(tiny_dropout_dir), dataset_dir=toy_dir, output=tmp_path / "out",
                   settings=TrainSettings(epochs=1, batch_size=8, train_n_passages=3, precision="bf16"),
                   options=RunOptions(device="cuda", gradient_checkpointing=True, progress=False))
    result = Trainer(job).run()
    assert result.steps == 3 and result.peak_memory_bytes is not None and result.peak_memory_bytes > 0
    assert (result.final_dir / "model.safetensors").is_file()
