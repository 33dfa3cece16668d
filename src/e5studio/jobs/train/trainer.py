"""The E5 fine-tuning loop: one process, or several under ``torchrun`` (DDP, embeddings all-gathered).

Each step: the global batch of ``batch_size`` query groups (a pure function of seed, epoch and step, see
:mod:`.sampling`) is split evenly across ranks; each rank tokenises its slice (queries with ``query: ``,
passages with ``passage: ``, separate max lengths), packs queries and passages into one padding-free
batch, runs the encoder once, mean-pools and L2-normalises, all-gathers the query and passage embeddings
(its own slice keeps its autograd graph), and computes :func:`.loss.info_nce` over the whole global batch.
Every rank computes the same global loss; it backpropagates ``world_size * loss`` so that DDP's gradient
average equals the gradient of the global loss (each rank contributes the exact gradient through its own
embeddings). Gradients are clipped, AdamW steps, the LR follows linear warmup then linear decay.

Checkpoints (:mod:`.checkpoints`) carry every rank's RNG state, so dropout continues exactly after ``--resume``.
Rank 0 alone evaluates, logs and exports (:mod:`.handover`: which model is handed over, and the records that say
why); it broadcasts each evaluation record, so every rank keeps the same history.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as torch_dist

from e5studio.engine.checkpoint import load_checkpoint
from e5studio.engine.device import pick_device
from e5studio.engine.encoder import BertEncoder, PackedBatch, encode, load_encoder, pack
from e5studio.engine.tokenizer import Tokenizer
from e5studio.errors import InputError
from e5studio.jobs.train.checkpoints import (
    check_resumable,
    latest_checkpoint,
    load_checkpoint_state,
    remove_temporary,
    rng_state,
    save_checkpoint_state,
    set_rng_state,
)
from e5studio.jobs.train.evaluate import ModuleEvaluator
from e5studio.jobs.train.handover import Handover
from e5studio.jobs.train.loss import false_negative_mask, info_nce, score_distillation
from e5studio.jobs.train.passages import PassageStore, TrainData
from e5studio.jobs.train.report import MetricsLog, NullReporter, Progress, Reporter
from e5studio.jobs.train.sampling import Group, GroupSampler
from e5studio.jobs.train.settings import RunOptions, TrainSettings
from e5studio.jobspec.layout import BEST_DIR, CHECKPOINTS_DIR, FINAL_DIR, METRICS_FILE
from e5studio.retrieval.evaluate import EvalSet


@dataclass(frozen=True)
class TrainRun:
    """Everything one run needs: model, data, output, hyperparameters, options."""

    model: str
    dataset_dir: Path
    output: Path
    settings: TrainSettings = TrainSettings()
    options: RunOptions = RunOptions()
    # the first is the in-domain set, the others out-of-domain (selection.py); names (EvalSet.name) are unique
    evalsets: tuple[EvalSet, ...] = ()
    eval_corpus: Any = None  # float32 [passages, d]: the first set's passages by the start model (--eval-index)
    dataset_checksums: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DistContext:
    """This process's place in a ``torchrun`` job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> DistContext:
        """From torchrun's RANK / WORLD_SIZE / LOCAL_RANK variables."""
        try:
            return cls(int(env.get("RANK", 0)), int(env.get("WORLD_SIZE", 1)), int(env.get("LOCAL_RANK", 0)))
        except ValueError:
            raise InputError("RANK, WORLD_SIZE and LOCAL_RANK must be integers") from None


@dataclass
class TrainResult:
    final_dir: Path
    best_dir: Path | None
    history: list[dict[str, Any]]
    steps: int
    groups_per_s: float
    peak_memory_bytes: int | None = None  # CUDA only: peak memory allocated by torch during the run
    final: dict[str, Any] | None = None  # the final model's record (its interpolation weight and metrics)


# ---------------------------------------------------------------------------------------------- one step


@dataclass(frozen=True)
class StepInputs:
    """One rank's share of a step: its packed queries + passages, and the global loss targets."""

    batch: PackedBatch  # this rank's n_queries queries, then its passages, packed
    n_queries: int
    positive_index: torch.Tensor  # [B_global] int64, column of each query's positive among global passages
    exclude: torch.Tensor  # [B_global, N_global] bool, false negatives


def prepare_step(groups: Sequence[Group], passages: PassageStore, query_tokenizer: Tokenizer,
                 passage_tokenizer: Tokenizer, rank: int = 0, world_size: int = 1) -> StepInputs:
    """Tokenise and pack this rank's slice of the global batch ``groups``; build the global loss targets."""
    if len(groups) % world_size:
        raise InputError(f"the batch of {len(groups)} queries does not split evenly over {world_size} processes")
    k = len(groups[0].doc_ids)
    if any(len(g.doc_ids) != k for g in groups):
        raise InputError("every group of a step needs the same number of passages")
    doc_ids = [d for g in groups for d in g.doc_ids]  # [N_global]
    positive_index = [i * k for i in range(len(groups))]  # [B_global]
    exclude = false_negative_mask([g.positives for g in groups], doc_ids, positive_index)
    per_rank = len(groups) // world_size
    local = groups[rank * per_rank:(rank + 1) * per_rank]
    query_ids = query_tokenizer.encode([g.query for g in local], "query")
    passage_ids = passage_tokenizer.encode(passages.texts([d for g in local for d in g.doc_ids]), "passage")
    return StepInputs(pack(query_ids + passage_ids), len(local), torch.tensor(positive_index), exclude)


def gather_with_local_grad(x: torch.Tensor, dist: DistContext) -> torch.Tensor:
    """All ranks' ``x`` concatenated in rank order; this rank's slice keeps its gradient. [n, d] -> [W*n, d]"""
    if dist.world_size == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(dist.world_size)]
    torch_dist.all_gather(parts, x.detach().contiguous())
    parts[dist.rank] = x
    return torch.cat(parts)


@dataclass(frozen=True)
class Distillation:
    """The frozen base model whose in-batch scores the loss keeps the model near (``--distill-weight``)."""

    teacher: torch.nn.Module
    weight: float
    temperature: float


def step_loss(model: torch.nn.Module, inputs: StepInputs, dist: DistContext, device: torch.device,
              temperature: float, autocast_dtype: torch.dtype | None = None,
              distillation: Distillation | None = None) -> torch.Tensor:
    """The global loss of one step (fp32 scalar; identical on every rank): InfoNCE, plus ``distillation.weight``
    times the score distillation from the frozen base model when given."""
    batch = inputs.batch.to(device)
    embeddings = encode(model, batch, autocast_dtype)  # [Bl + Pl, d] fp32 unit rows
    queries = gather_with_local_grad(embeddings[:inputs.n_queries], dist)  # [B, d]
    passages = gather_with_local_grad(embeddings[inputs.n_queries:], dist)  # [N, d]
    exclude = inputs.exclude.to(device)
    loss = info_nce(queries, passages, inputs.positive_index.to(device), exclude, temperature)
    if distillation is None or distillation.weight == 0:
        return loss
    with torch.no_grad():
        base = encode(distillation.teacher, batch, autocast_dtype)  # [Bl + Pl, d]
        base_queries = gather_with_local_grad(base[:inputs.n_queries], dist)  # [B, d]
        base_passages = gather_with_local_grad(base[inputs.n_queries:], dist)  # [N, d]
    return loss + distillation.weight * score_distillation(queries, passages, base_queries, base_passages, exclude,
                                                           distillation.temperature)


# ---------------------------------------------------------------------------------------------- setup


def autocast_dtype_for(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype on CUDA (None = fp32); bf16/fp16 are refused on CPU."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            raise InputError(f"precision {precision} needs a CUDA device; on CPU training runs in fp32")
        return None
    if precision == "fp32":
        return None
    if precision == "fp16" or (precision == "auto" and not torch.cuda.is_bf16_supported()):
        return torch.float16
    return torch.bfloat16


def linear_schedule(warmup_steps: int, total_steps: int) -> Any:
    """LR multiplier: 0 -> 1 over ``warmup_steps``, then 1 -> 0 linearly at ``total_steps``."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / (warmup_steps + 1)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))
    return factor


def build_optimizer(model: torch.nn.Module, settings: TrainSettings) -> torch.optim.AdamW:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("bias") or "norm" in name else decay).append(p)
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=settings.learning_rate, betas=(0.9, 0.999), eps=1e-8)


# ---------------------------------------------------------------------------------------------- the loop


@dataclass
class _Optimisation:
    """The module being trained and what updates it."""

    encoder: BertEncoder
    model: torch.nn.Module  # the encoder, wrapped in DDP under torchrun
    optimizer: torch.optim.AdamW
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    distillation: Distillation | None = None  # --distill-weight > 0: the frozen base model


@dataclass
class _Position:
    """Where the run stands: steps done, evaluations, the best one, and this process's timing."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)  # eval records
    best: dict[str, Any] | None = None
    done_here: int = 0
    train_seconds: float = 0.0  # optimizer steps only (evaluation and checkpoints excluded)
    rate: float = 0.0
    resumed_from: str = ""  # the checkpoint folder restored, if any


class Trainer:
    """Runs one :class:`TrainRun`; construct it, then :meth:`run`."""

    def __init__(self, job: TrainRun, dist: DistContext = DistContext(), reporter: Reporter | None = None) -> None:
        self.job = job
        self.dist = dist
        self.reporter: Reporter = reporter or NullReporter()
        s = job.settings
        if s.batch_size % dist.world_size:
            raise InputError(f"--batch-size {s.batch_size} must be a multiple of the number of processes "
                             f"({dist.world_size})")
        device = pick_device(job.options.device)
        if device.type == "cuda" and dist.world_size > 1:
            device = torch.device("cuda", dist.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        self.autocast = autocast_dtype_for(s.precision, device)
        self.checkpoint = load_checkpoint(job.model)
        limit = self.checkpoint.config.max_position_embeddings
        self.passage_max_length = min(s.passage_max_length or self.checkpoint.max_length, limit)
        self.query_tokenizer = Tokenizer(self.checkpoint.path, min(s.query_max_length, limit))
        self.passage_tokenizer = Tokenizer(self.checkpoint.path, self.passage_max_length)
        self.data = TrainData.load(job.dataset_dir)
        self.sampler = GroupSampler(self.data, s.batch_size, s.train_n_passages, s.seed)
        self.total_steps = self.sampler.steps_per_epoch * s.epochs
        self.warmup_steps = math.ceil(s.warmup_ratio * self.total_steps)
        self.output = job.output
        self.checkpoints_dir = job.output / CHECKPOINTS_DIR
        self.log = MetricsLog(job.output / METRICS_FILE)

    def fingerprint(self) -> dict[str, Any]:
        """What must not change between a run and its resumption."""
        return {"settings": asdict(self.job.settings), "model": self.job.model,
                "dataset": dict(self.job.dataset_checksums), "world_size": self.dist.world_size}

    def run(self, resume: bool = False) -> TrainResult:
        """Build the model, restore a checkpoint (``resume``), evaluate the start, train every step left
        (evaluating and saving at epoch ends), hand over the final model."""
        opt = self._build()
        at = self._restore(opt, resume)
        progress = Progress(self.total_steps, at.step, self.job.options.progress and self.dist.is_main,
                            self.output if self.dist.is_main else None, self.sampler.steps_per_epoch)
        handover = self._handover(progress)
        if self.dist.is_main:
            self.reporter.on_start(self.total_steps, at.step)
            if resume:
                progress.write(f"resuming from {at.resumed_from} (step {at.step})" if at.resumed_from
                               else "no checkpoint to resume from: starting at step 0")
        if at.step == 0 and self.job.evalsets and not at.history:
            record = handover.evaluate_start(opt.encoder) if self.dist.is_main else {}
            at.history.append(self._reported(record, 0, 0))
        while at.step < self.total_steps:
            self._train_step(opt, at, progress)
            self._after_step(opt, at, handover)
        result = self._finish(opt, at, handover)
        progress.close()
        return result

    def _build(self) -> _Optimisation:
        distillation = None
        if self.job.settings.distill_weight > 0:  # the base model as it was read (also when resuming), frozen;
            # built before the seed is set, so the run's random stream (dropout masks) is the plain recipe's
            teacher = load_encoder(self.checkpoint).to(self.device).eval().requires_grad_(False)
            distillation = Distillation(teacher, self.job.settings.distill_weight,
                                        self.job.settings.distill_temperature)
        torch.manual_seed(self.job.settings.seed + self.dist.rank)  # dropout masks; restored exactly on resume
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        encoder = load_encoder(self.checkpoint)
        encoder.gradient_checkpointing = self.job.options.gradient_checkpointing
        encoder.to(self.device).train()
        model: torch.nn.Module = encoder
        if self.dist.world_size > 1:
            model = torch.nn.parallel.DistributedDataParallel(encoder, device_ids=None)
        optimizer = build_optimizer(encoder, self.job.settings)
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, linear_schedule(self.warmup_steps,
                                                                                  self.total_steps))
        scaler = torch.amp.GradScaler("cuda", enabled=self.autocast == torch.float16)
        return _Optimisation(encoder, model, optimizer, scheduler, scaler, distillation)

    def _handover(self, progress: Progress) -> Handover:
        """Evaluations and exports, for rank 0 to call."""
        options = self.job.options
        evaluator = ModuleEvaluator(self.checkpoint, options.eval_max_length or self.checkpoint.max_length,
                                    self.device, self.autocast, options.eval_batch_tokens)
        return Handover(self.job.model, self.job.evalsets, options, evaluator, self.log, self.output, progress,
                        self.job.eval_corpus)

    def _restore(self, opt: _Optimisation, resume: bool) -> _Position:
        """The newest checkpoint's state (``resume``), else a fresh start; refuses to overwrite a run."""
        if self.dist.is_main:
            remove_temporary(self.checkpoints_dir)
            remove_temporary(self.output)
        latest = latest_checkpoint(self.checkpoints_dir)
        if latest is not None and not resume:
            raise InputError(f"{self.output} already holds training checkpoints ({latest.name}); pass --resume "
                             "to continue that run, or choose another --output")
        if latest is None:
            if self.dist.is_main:
                self.log.reset()
            return _Position()
        state = load_checkpoint_state(latest)
        check_resumable(state.get("fingerprint", {}), self.fingerprint())
        opt.encoder.load_state_dict(state["model"])
        opt.optimizer.load_state_dict(state["optimizer"])
        opt.scheduler.load_state_dict(state["scheduler"])
        opt.scaler.load_state_dict(state["scaler"])
        set_rng_state(state["rng"], self.dist.rank)
        at = _Position(int(state["step"]), list(state["history"]), state["best"], resumed_from=latest.name)
        if self.dist.is_main:
            self.log.truncate_after(at.step)
        return at

    def _train_step(self, opt: _Optimisation, at: _Position, progress: Progress) -> None:
        """One optimizer step on the global batch; rank 0 logs it."""
        s, dist = self.job.settings, self.dist
        spe = self.sampler.steps_per_epoch
        epoch, in_epoch = divmod(at.step, spe)
        t0 = time.perf_counter()
        inputs = prepare_step(self.sampler.batch(epoch, in_epoch), self.data.passages, self.query_tokenizer,
                              self.passage_tokenizer, dist.rank, dist.world_size)
        loss = step_loss(opt.model, inputs, dist, self.device, s.temperature, self.autocast, opt.distillation)
        opt.scaler.scale(loss * dist.world_size).backward()
        opt.scaler.unscale_(opt.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(opt.encoder.parameters(),
                                                   s.max_grad_norm if s.max_grad_norm > 0 else math.inf)
        lr = opt.scheduler.get_last_lr()[0]
        opt.scaler.step(opt.optimizer)
        opt.scaler.update()
        opt.scheduler.step()
        opt.optimizer.zero_grad(set_to_none=True)
        at.step += 1
        at.done_here += 1
        seconds = time.perf_counter() - t0
        at.train_seconds += seconds
        at.rate = s.batch_size / max(seconds, 1e-9)
        if dist.is_main:
            value = float(loss.detach())
            self.log.append({"event": "step", "step": at.step, "epoch": round(at.step / spe, 4), "loss": value,
                             "lr": lr, "grad_norm": float(grad_norm), "groups_per_s": round(at.rate, 3)})
            progress.update(value, at.rate, epoch + 1)
            self.reporter.on_step(at.step, self.total_steps, value)

    def _after_step(self, opt: _Optimisation, at: _Position, handover: Handover) -> None:
        """At an epoch end: evaluate, and keep the best model (:mod:`.handover`); a checkpoint when one is due."""
        spe = self.sampler.steps_per_epoch
        epoch_end = at.step % spe == 0
        if epoch_end and self.job.evalsets:
            epoch = at.step // spe
            record = handover.evaluate_epoch(opt.encoder, at.step, epoch) if self.dist.is_main else {}
            record = self._reported(record, at.step, epoch)
            at.history.append(record)
            if self.dist.is_main:
                at.best = handover.keep_best(opt.encoder, record, at.best, at.history)
        save_every = self.job.options.save_every
        if epoch_end or (save_every and at.step % save_every == 0):
            self._save(at.step, opt, at.history, at.best)

    def _reported(self, record: dict[str, Any], step: int, epoch: int) -> dict[str, Any]:
        """Rank 0's evaluation ``record``, reported, on every rank (the others pass {} and wait for rank 0's
        broadcast), so every rank's history is the same."""
        if self.dist.is_main:
            self.reporter.on_eval(step, epoch, record)
        if self.dist.world_size > 1:
            box: list[Any] = [record]
            torch_dist.broadcast_object_list(box, src=0)
            record = box[0]
        return record

    def _finish(self, opt: _Optimisation, at: _Position, handover: Handover) -> TrainResult:
        """Rank 0 hands over the final model (:meth:`.Handover.hand_over`); every rank returns the result."""
        overall = self.job.settings.batch_size * at.done_here / at.train_seconds if at.done_here else at.rate
        final: dict[str, Any] | None = None
        if self.dist.is_main:
            final = handover.hand_over(opt.encoder, at.history, at.step, at.step // self.sampler.steps_per_epoch)
        if self.dist.world_size > 1:
            torch_dist.barrier()
        best_dir = self.output / BEST_DIR if at.best is not None else None
        peak = torch.cuda.max_memory_allocated(self.device) if self.device.type == "cuda" else None
        return TrainResult(self.output / FINAL_DIR, best_dir, at.history, at.step, overall, peak, final)

    def _save(self, step: int, opt: _Optimisation, history: list[dict[str, Any]],
              best: dict[str, Any] | None) -> None:
        rng = [rng_state()]
        if self.dist.world_size > 1:
            gathered: list[Any] = [None] * self.dist.world_size
            torch_dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.dist.is_main:
            state = {"step": step, "model": opt.encoder.state_dict(), "optimizer": opt.optimizer.state_dict(),
                     "scheduler": opt.scheduler.state_dict(), "scaler": opt.scaler.state_dict(), "rng": rng,
                     "history": history, "best": best, "fingerprint": self.fingerprint(),
                     "sampler": {"epoch": step // self.sampler.steps_per_epoch,
                                 "step_in_epoch": step % self.sampler.steps_per_epoch}}
            save_checkpoint_state(self.checkpoints_dir, step, state, self.job.options.keep_checkpoints)
