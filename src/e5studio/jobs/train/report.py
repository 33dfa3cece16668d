"""What a train job shows: the metrics JSONL, the plot of loss and nDCG@10, the progress bar, and what it reports
to whoever runs it (:class:`Reporter`: the CLI records it in the control store).

``metrics.jsonl`` holds one JSON object per line: ``{"event": "step", "step", "epoch", "loss", "lr",
"grad_norm", "groups_per_s"}`` after every optimizer step and ``{"event": "eval", "step", "epoch",
"ndcg@10", "mrr@10", "recall@100", "map", "sets", "change", "seconds"}`` before training (step 0) and after
each epoch (the top-level metrics are the first, in-domain set's; ``sets``: every evaluation set's metrics;
``change``: each set's nDCG@10 change against the base model). At the end, ``{"event": "candidate", "alpha",
...}`` for every interpolation ``--interpolate auto`` measured and ``{"event": "final", "label", "alpha",
...}`` for the exported final model.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

from e5studio.jobspec.layout import PROGRESS_FILE
from e5studio.jobspec.progress import Progress as JobProgress


class MetricsLog:
    """Append-only JSONL of step and eval records; on resume, records after the checkpoint are dropped."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def records(self) -> list[dict[str, Any]]:
        if not self.path.is_file():
            return []
        out = []
        with self.path.open(encoding="utf-8") as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except ValueError:  # a line cut by a crash
                    continue
        return out

    def truncate_after(self, step: int) -> None:
        """Keep the records up to ``step`` (those the resumed run will not write again)."""
        kept = [r for r in self.records() if int(r.get("step", 0)) <= step]
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept), encoding="utf-8")
        os.replace(tmp, self.path)

    def reset(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("", encoding="utf-8")

    def append(self, record: dict[str, Any]) -> None:
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")


class Reporter(Protocol):
    """Receives progress on the main rank (the CLI records it in the control store)."""

    def on_start(self, total_steps: int, start_step: int) -> None: ...

    def on_step(self, step: int, total_steps: int, loss: float) -> None: ...

    def on_eval(self, step: int, epoch: int, metrics: Mapping[str, Any]) -> None: ...  # the eval record


class NullReporter:
    """Reports to nobody (a run outside the CLI, e.g. in tests)."""

    def on_start(self, total_steps: int, start_step: int) -> None:
        pass

    def on_step(self, step: int, total_steps: int, loss: float) -> None:
        pass

    def on_eval(self, step: int, epoch: int, metrics: Mapping[str, Any]) -> None:
        pass


def plot_metrics(records: list[dict[str, Any]], path: Path) -> bool:
    """Loss per step and nDCG@10 per evaluation as a PNG; False (nothing written) without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    steps = [r for r in records if r.get("event") == "step"]
    evals = [r for r in records if r.get("event") == "eval"]
    fig, (ax_loss, ax_eval) = plt.subplots(1, 2, figsize=(11, 4))
    ax_loss.plot([r["step"] for r in steps], [r["loss"] for r in steps], lw=0.8, color="tab:blue")
    ax_loss.set(xlabel="step", ylabel="InfoNCE loss", title="training loss")
    ax_loss.grid(alpha=0.3)
    names = list(evals[0]["sets"]) if evals and isinstance(evals[0].get("sets"), dict) else []
    finals = [r for r in records if r.get("event") == "final" and isinstance(r.get("sets"), dict)]
    if len(names) > 1:  # one line per evaluation set (the first is in-domain), the final model as a star
        for k, name in enumerate(names):
            colour = f"C{k}"
            points = [(r["step"], r["sets"][name]["ndcg@10"]) for r in evals if name in r.get("sets", {})]
            label = f"{name} (in-domain)" if k == 0 else name
            ax_eval.plot([p[0] for p in points], [p[1] for p in points], marker="o", color=colour, label=label)
            for r in finals[-1:]:
                if name in r["sets"]:
                    ax_eval.plot([r["step"]], [r["sets"][name]["ndcg@10"]], marker="*", markersize=12, color=colour,
                                 linestyle="none")
        if finals:
            ax_eval.plot([], [], marker="*", color="black", linestyle="none", label=finals[-1].get("label", "final"))
        ax_eval.legend(fontsize=7, loc="best")
    else:
        ax_eval.plot([r["step"] for r in evals], [r.get("ndcg@10", float("nan")) for r in evals], marker="o",
                     color="tab:green")
        for r in evals:
            ax_eval.annotate(f"ep {r['epoch']}: {r.get('ndcg@10', 0):.3f}", (r["step"], r.get("ndcg@10", 0)),
                             textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax_eval.set(xlabel="step", ylabel="nDCG@10", title="evaluation (before training and after each epoch)")
    ax_eval.grid(alpha=0.3)
    fig.tight_layout()
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
    return True


class Progress(JobProgress):
    """The train job's phases on the one progress type (:mod:`e5studio.jobspec.progress`): "evaluation before
    training", "epoch k of n" (steps, loss, query groups/s, ETA), "evaluation after epoch k" (passages, queries,
    scoring); the same in ``progress.json`` of the output folder for the web UI."""

    def __init__(self, total: int, initial: int, enabled: bool, output: Path | None = None,
                 steps_per_epoch: int | None = None) -> None:
        super().__init__("train", enabled=enabled, status_file=output / PROGRESS_FILE if output is not None else None)
        self._spe = steps_per_epoch or total
        self._epochs = max(1, -(-total // self._spe))
        self._epoch = 0
        self._at = initial

    def update(self, loss: float, groups_per_s: float, epoch: int) -> None:
        """One optimizer step of ``epoch`` (1-based) done."""
        phase = self.current
        if epoch != self._epoch or phase is None or not phase.name.startswith("epoch"):
            self._epoch = epoch
            phase = self.phase(f"epoch {epoch} of {self._epochs}", self._spe, "steps",
                               self._at - (epoch - 1) * self._spe)
        self._at += 1
        phase.note(f"loss {loss:.4f}, {groups_per_s:.1f} query groups/s")
        phase.advance(1)

    def evaluation(self, title: str) -> Callable[[str, int, int], None]:
        """A progress callback for the evaluation pipeline, shown as phases under ``title``."""
        return self.callback(_EVALUATION_PHASES, prefix=title, units={"scoring": "queries"})


_EVALUATION_PHASES = {"passages": "embedding passages", "queries": "embedding queries",
                      "scoring": "searching and scoring"}
