"""Which model a fine-tuning run hands over, and the records that say why (rank 0 only).

The loop (:mod:`.trainer`) calls on this module at three moments of a run with evaluation sets (the first
in-domain, the others out-of-domain):

- before training: the base model's evaluation, which every later change is measured against;
- after each epoch: an ``eval`` record, and ``best/`` exported when the epoch beats the best one so far by the
  rules of :mod:`.selection`;
- at the end: ``final/``, the last epoch's weights interpolated with the base weights as ``--interpolate``
  says (``auto``: the bisection of :func:`.selection.search_alpha`, each midpoint a ``candidate`` record),
  then a ``final`` record.

Every evaluation is a line of ``metrics.jsonl`` (:mod:`.report`) and redraws the plot; each exported folder
gets the deploy gate's record (:func:`e5studio.jobspec.deploy_gate.write_evaluation`). A run without
evaluation sets only exports ``final/`` (interpolated all the same) and the plot.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from e5studio.engine.checkpoint import Checkpoint, read_weights
from e5studio.engine.encoder import BertEncoder
from e5studio.errors import InputError
from e5studio.jobs.train.checkpoints import export_model
from e5studio.jobs.train.evaluate import ModuleEvaluator
from e5studio.jobs.train.report import MetricsLog, Progress, plot_metrics
from e5studio.jobs.train.selection import (
    AUTO_WITHOUT_SETS,
    Candidate,
    better,
    changes,
    eligible,
    interpolate,
    record_sets,
    search_alpha,
)
from e5studio.jobs.train.settings import RunOptions
from e5studio.jobspec.deploy_gate import IN_DOMAIN, OUT_OF_DOMAIN, ModelEvaluation, SetResult, write_evaluation
from e5studio.jobspec.layout import BEST_DIR, FINAL_DIR, PLOT_FILE
from e5studio.jobspec.train_params import parse_interpolation
from e5studio.retrieval.evaluate import EvalSet

Sets = dict[str, dict[str, float]]  # evaluation set name -> metric -> value


def _candidate(record: Mapping[str, Any]) -> Candidate:
    return Candidate(str(record.get("label", "")), record_sets(record), float(record.get("alpha", 1.0)))


@dataclass
class Handover:
    """Rank 0's evaluations and exports of one run. ``history`` arguments are the run's ``eval`` records so far,
    the base model's (step 0) first."""

    base_model: str  # the model the run started from, as named (the deploy gate records it)
    evalsets: tuple[EvalSet, ...]
    options: RunOptions
    evaluator: ModuleEvaluator
    log: MetricsLog
    output: Path
    progress: Progress
    eval_corpus: Any = None  # the first set's passages by the start model (--eval-index), for the base only
    _base: dict[str, Any] | None = field(default=None, init=False)

    @property
    def checkpoint(self) -> Checkpoint:
        return self.evaluator.checkpoint

    # -- evaluations -----------------------------------------------------------------------------------

    def evaluate_start(self, encoder: BertEncoder) -> dict[str, Any]:
        """The base model's ``eval`` record (step 0); its changes are zero by definition."""
        t0 = time.perf_counter()
        title = "evaluation before training"
        sets = self._measure(encoder, title, self.eval_corpus)
        record = self._log({"event": "eval", "step": 0, "epoch": 0}, sets, {}, sets, t0)
        self._show(title, 0, sets, None)
        return record

    def evaluate_epoch(self, encoder: BertEncoder, step: int, epoch: int) -> dict[str, Any]:
        """The ``eval`` record after ``epoch``, with each set's change against the base model."""
        t0 = time.perf_counter()
        title = f"evaluation after epoch {epoch}"
        sets = self._measure(encoder, title, None)
        record = self._log({"event": "eval", "step": step, "epoch": epoch}, sets, {}, self._base_sets(), t0)
        self._show(title, step, sets, record["change"])
        return record

    def _evaluate_candidate(self, encoder: BertEncoder, step: int, epoch: int, alpha: float) -> Sets:
        """The ``candidate`` record of the interpolation weighted ``alpha`` (its weights in ``encoder``)."""
        t0 = time.perf_counter()
        title = f"interpolation a = {alpha:g}"
        sets = self._measure(encoder, title, None)
        record = self._log({"event": "candidate", "step": step, "epoch": epoch}, sets, {"alpha": alpha},
                           self._base_sets(), t0)
        self._show(title, step, sets, record["change"])
        return record_sets(record)

    def _measure(self, encoder: BertEncoder, title: str, first_corpus: Any) -> Sets:
        """Every set's metrics, each set's progress shown under ``title``."""
        sets: Sets = {}
        for i, evalset in enumerate(self.evalsets):
            shown = title if len(self.evalsets) == 1 else f"{title} on {evalset.name}"
            sets[evalset.name] = self.evaluator(encoder, evalset, progress=self.progress.evaluation(shown),
                                                corpus=first_corpus if i == 0 else None)
        return sets

    def _log(self, head: Mapping[str, Any], sets: Sets, extra: Mapping[str, Any], base: Sets,
             t0: float) -> dict[str, Any]:
        """The record (the first set's metrics at its top level, every set's under ``sets``, nDCG@10 changes
        against ``base`` under ``change``), appended to the metrics log."""
        record = {**head, **sets[self.evalsets[0].name], "sets": sets, **extra}
        record["change"] = {k: round(v, 5) for k, v in changes(sets, base).items()}
        record["seconds"] = round(time.perf_counter() - t0, 2)
        self.log.append(record)
        return record

    def _show(self, title: str, step: int, sets: Sets, change: Mapping[str, float] | None) -> None:
        """One line per set on the progress output (``change`` None for the base model itself); the plot redrawn."""
        for name, metrics in sets.items():
            shown = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items())
            delta = f"  (nDCG@10 {change[name]:+.4f} vs base)" if change is not None else ""
            self.progress.write(f"{title} (step {step}) {name}: {shown}{delta}")
        self.plot()

    def plot(self) -> None:
        plot_metrics(self.log.records(), self.output / PLOT_FILE)

    def _base_sets(self) -> Sets:
        """The evaluation before training, read once from the metrics log (a resumed run reads it back)."""
        if self._base is None:
            self._base = next((r for r in self.log.records() if r.get("event") == "eval" and r.get("step") == 0),
                              None)
        if self._base is None:
            raise InputError(f"{self.log.path}: the evaluation before training is missing; train into a new "
                             "--output")
        return record_sets(self._base)

    # -- best/ and final/ ------------------------------------------------------------------------------

    def _judging(self, history: Sequence[Mapping[str, Any]]) -> tuple[Sets, str, list[str], float]:
        """(base metrics per set, the in-domain set, the out-of-domain sets, the allowed loss)."""
        names = [e.name for e in self.evalsets]
        return record_sets(history[0]), names[0], names[1:], self.options.max_ood_loss

    def keep_best(self, encoder: BertEncoder, record: dict[str, Any], best: dict[str, Any] | None,
                  history: Sequence[Mapping[str, Any]]) -> dict[str, Any] | None:
        """The better of the epoch ``record`` and ``best`` (:func:`.selection.better`); a new best's weights
        (those in ``encoder``) are exported to ``best/`` with their evaluation."""
        current = _candidate(best) if best is not None else None
        if not better(_candidate(record), current, *self._judging(history)):
            return best
        best_dir = export_model(encoder, self.checkpoint, self.output / BEST_DIR)
        self._write_evaluation(best_dir, history, record, f"best epoch ({record['epoch']})")
        return record

    def hand_over(self, encoder: BertEncoder, history: Sequence[Mapping[str, Any]], step: int,
                  epoch: int) -> dict[str, Any] | None:
        """Export ``final/`` (``encoder`` holds the last step's weights and is left holding the final ones) and
        the plot; returns the final model's record (None when the last step was not evaluated)."""
        final = self._final_weights(encoder, history, step, epoch)
        final_dir = export_model(encoder, self.checkpoint, self.output / FINAL_DIR)
        if final is not None:
            self._write_evaluation(final_dir, history, final, final["label"])
        self.plot()
        return final

    def _final_weights(self, encoder: BertEncoder, history: Sequence[Mapping[str, Any]], step: int,
                       epoch: int) -> dict[str, Any] | None:
        """Load the final weights into ``encoder``: the tuned ones, or their interpolation with the base
        model's; returns the final model's record (None without an evaluation of the last step)."""
        alpha = parse_interpolation(self.options.interpolate)
        evaluated = bool(self.evalsets) and len(history) >= 2 and history[-1].get("step") == step
        if alpha is None and not evaluated:
            alpha = AUTO_WITHOUT_SETS
            self.progress.write(f"--interpolate auto without evaluation sets: a = {alpha:g} (the default measured "
                                "on SciFact, Cranfield and MED)")
        if alpha == 1.0:
            return self._final_record(history[-1], 1.0, "final (tuned weights)") if evaluated else None
        tuned = {k: v.detach().clone() for k, v in encoder.state_dict().items()}
        base = read_weights(self.checkpoint)

        def measure(a: float) -> Sets:
            encoder.load_state_dict(interpolate(tuned, base, a))
            return self._evaluate_candidate(encoder, step, epoch, a)

        sets: Sets
        if alpha is None:
            base_sets, in_domain, ood, max_loss = self._judging(history)
            chosen, _ = search_alpha(measure, record_sets(history[-1]), base_sets, in_domain, ood, max_loss)
            alpha, sets = chosen.alpha, {k: dict(v) for k, v in chosen.sets.items()}
            self.progress.write(f"--interpolate auto: a = {alpha:g} (in-domain {in_domain} nDCG@10 "
                                f"{sets[in_domain]['ndcg@10']:.4f}; out-of-domain losses within {max_loss:g}: "
                                f"{eligible(sets, base_sets, ood, max_loss)})")
        else:
            sets = measure(alpha) if evaluated else {}
        encoder.load_state_dict(interpolate(tuned, base, alpha) if alpha > 0 else base)
        if not evaluated:
            return None
        label = f"final (a = {alpha:g})" if alpha < 1 else "final (tuned weights)"
        return self._final_record({**history[-1], "sets": sets}, alpha, label)

    def _final_record(self, source: Mapping[str, Any], alpha: float, label: str) -> dict[str, Any]:
        sets = record_sets(source)
        first = sets[self.evalsets[0].name]
        record = {"event": "final", "step": source["step"], "epoch": source["epoch"], "label": label,
                  "alpha": alpha, **first, "sets": sets}
        self.log.append(record)
        return record

    def _write_evaluation(self, directory: Path, history: Sequence[Mapping[str, Any]], record: Mapping[str, Any],
                          label: str) -> None:
        base_sets, in_domain, _, _ = self._judging(history)
        sets = record_sets(record)
        write_evaluation(directory, ModelEvaluation(
            base_model=self.base_model, label=label,
            sets=tuple(SetResult(e.name, IN_DOMAIN if e.name == in_domain else OUT_OF_DOMAIN, str(e.directory),
                                 base_sets[e.name], sets[e.name]) for e in self.evalsets),
            details={"step": record.get("step"), "epoch": record.get("epoch"), "alpha": record.get("alpha", 1.0),
                     "max_ood_loss": self.options.max_ood_loss}))
