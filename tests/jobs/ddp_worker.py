"""One training step, or a whole run, in a process of a gloo group (spawned by test_distributed.py); importable
by spawn."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist

from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.encoder import load_encoder
from e5studio.engine.tokenizer import Tokenizer
from e5studio.jobs.train.commands import load_eval_sets
from e5studio.jobs.train.passages import TrainData
from e5studio.jobs.train.sampling import GroupSampler
from e5studio.jobs.train.settings import RunOptions, TrainSettings
from e5studio.jobs.train.trainer import DistContext, Trainer, TrainRun, prepare_step, step_loss

GLOBAL_BATCH = 8
N_PASSAGES = 3


def first_step(model_dir: Path, data_dir: Path, ctx: DistContext) -> tuple[float, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of step 0 of epoch 0, as the trainer computes them."""
    checkpoint = load_checkpoint(str(model_dir))
    encoder = load_encoder(checkpoint).train()
    model: torch.nn.Module = encoder
    if ctx.world_size > 1:
        model = torch.nn.parallel.DistributedDataParallel(encoder)
    data = TrainData.load(data_dir)
    groups = GroupSampler(data, GLOBAL_BATCH, N_PASSAGES, seed=3).batch(0, 0)
    inputs = prepare_step(groups, data.passages, Tokenizer(checkpoint.path, 16), Tokenizer(checkpoint.path, 32),
                          ctx.rank, ctx.world_size)
    loss = step_loss(model, inputs, ctx, torch.device("cpu"), temperature=0.01)
    (loss * ctx.world_size).backward()
    return float(loss.detach()), {n: p.grad.detach().clone() for n, p in encoder.named_parameters()
                                  if p.grad is not None}


def worker(rank: int, world_size: int, init_file: str, model_dir: str, data_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        loss, grads = first_step(Path(model_dir), Path(data_dir), DistContext(rank, world_size, rank))
        torch.save({"loss": loss, "grads": grads}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def run_worker(rank: int, world_size: int, init_file: str, model_dir: str, data_dir: str, out_dir: str) -> None:
    """A run with an evaluation set and ``--interpolate 0.5``; each rank writes the result it returns."""
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        job = TrainRun(model=model_dir, dataset_dir=Path(data_dir), output=Path(out_dir) / "run",
                       settings=TrainSettings(epochs=1, batch_size=GLOBAL_BATCH, train_n_passages=N_PASSAGES,
                                              query_max_length=16, passage_max_length=32, learning_rate=1e-3),
                       options=RunOptions(device="cpu", save_every=0, progress=False, interpolate="0.5"),
                       evalsets=load_eval_sets([data_dir], None))
        result = Trainer(job, DistContext(rank, world_size, rank)).run()
        (Path(out_dir) / f"result{rank}.json").write_text(json.dumps({
            "history": result.history, "final": result.final, "steps": result.steps,
            "best_dir": str(result.best_dir), "final_dir": str(result.final_dir)}))
    finally:
        dist.destroy_process_group()
