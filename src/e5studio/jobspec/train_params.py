"""Every parameter of a fine-tuning run, written once.

``e5studio train``'s flags (:mod:`e5studio.jobs.train.commands`), the ``TrainSettings`` and ``RunOptions``
objects (:mod:`e5studio.jobs.train.settings`), the web form (:mod:`e5studio.web.jobs`) and the job runner's
validation (:mod:`e5studio.control.job_runner`) are all built from the tables below.
"""

from __future__ import annotations

import math

from e5studio.jobspec.params import Param, by_name, defaults
from e5studio.vocabulary import TRAIN_PRECISIONS

# chosen from measurements on SciFact (in-domain) + Cranfield and MED (out-of-domain): see README "Fine-tuning"
DEFAULT_INTERPOLATE = "auto"
DEFAULT_MAX_OOD_LOSS = 0.005

# What shapes the trained weights (a resumed run must use the same ones): TrainSettings.
HYPERPARAMETERS = by_name([
    Param("epochs", int, 3, "passes over the training queries; each epoch rotates positives and negatives",
          minimum=1),
    Param("batch_size", int, 32, "queries per optimizer step over all processes; each brings train_n_passages "
          "passages", minimum=1),
    Param("train_n_passages", int, 8, "passages per query: 1 positive + N-1 hard negatives", minimum=1),
    Param("lr", float, 2e-5, "peak learning rate (linear warmup, then linear decay)", minimum=0, above=True,
          setting="learning_rate"),
    Param("warmup_ratio", float, 0.1, "share of the steps spent warming the learning rate up", minimum=0,
          maximum=1),
    Param("weight_decay", float, 0.01, "AdamW weight decay (not applied to biases and LayerNorm weights)",
          minimum=0),
    Param("max_grad_norm", float, 1.0, "gradient clipping (0 disables)", minimum=0),
    Param("temperature", float, 0.01, "InfoNCE temperature (the E5 recipe uses 0.01)", minimum=0, above=True),
    Param("distill_weight", float, 0.0, "weight of the distillation from the frozen base model that keeps what it "
          "knew: KL divergence of the base's in-batch query-passage scores to the model's (0: the plain E5 "
          "recipe; 1 kept MiniLM's out-of-domain quality while gaining in-domain, see the README)", minimum=0),
    Param("distill_temperature", float, 0.05, "temperature of the scores compared by --distill-weight",
          minimum=0, above=True),
    Param("seed", int, 42, "random seed of sampling and initialisation", minimum=0, maximum=2**32),
    Param("query_max_length", int, 64, "queries are cut at this many tokens", minimum=2),
    Param("passage_max_length", int, 256, "passages are cut at this many tokens (the model reads up to 512)",
          minimum=2),
    Param("precision", str, "auto", "autocast on CUDA (auto: bf16 where supported, else fp16); CPU trains in fp32",
          choices=TRAIN_PRECISIONS),
])

# How a run executes; none of these change the trained weights: RunOptions (and the process's threads).
RUN_PARAMS = by_name([
    Param("save_every", int, 500, "a checkpoint every N steps (and at each epoch end); resume starts there",
          minimum=0, empty=""),
    Param("keep_checkpoints", int, 2, "complete checkpoints kept", minimum=1),
    Param("threads", int, None, "CPU threads of the training process", minimum=1, empty="one per core"),
])



def parse_interpolation(value: str) -> float | None:
    """``--interpolate``: a weight in (0, 1] (1: the tuned weights as they are), or None for ``auto``."""
    text = str(value).strip().lower()
    if text == "auto":
        return None
    try:
        alpha = float(text)
    except ValueError:
        alpha = math.nan
    if not 0.0 < alpha <= 1.0:  # nan fails too
        raise ValueError(f"--interpolate must be auto or a number in (0, 1], got {value!r}")
    return alpha


def _interpolation_ok(value: str) -> bool:
    try:
        parse_interpolation(value)
    except ValueError:
        return False
    return True


# Which model the run hands over; none of these change the training steps, only what is exported (and chosen)
# after them: the evaluation sets (``--eval-dir``, repeatable: the first is the in-domain set, the others guard
# general quality) judge every candidate.
SELECTION_PARAMS = by_name([
    Param("interpolate", str, DEFAULT_INTERPOLATE,
          "final = a * tuned + (1 - a) * base weights (keeps what the base model knew): a number a in (0, 1] "
          "(1 = no interpolation), or auto = the largest in-domain nDCG@10 among the a whose out-of-domain "
          "losses stay within --max-ood-loss, measured on the evaluation sets",
          text_rule="auto or a number in (0, 1]", text_check=_interpolation_ok),
    Param("max_ood_loss", float, DEFAULT_MAX_OOD_LOSS,
          "largest nDCG@10 loss against the base model allowed on any out-of-domain evaluation set when choosing "
          "the best epoch and the interpolation weight", minimum=0),
])

ALL_PARAMS = {**HYPERPARAMETERS, **RUN_PARAMS, **SELECTION_PARAMS}

# What the web UI and the job runner let a user set, in form order (the rest keep their defaults).
FORM_FIELDS = ("epochs", "batch_size", "train_n_passages", "lr", "temperature", "distill_weight", "warmup_ratio",
               "query_max_length",
               "passage_max_length", "seed", "save_every", "threads", "interpolate", "max_ood_loss")
TRAIN_PARAMS = {name: ALL_PARAMS[name] for name in FORM_FIELDS}

# The web form's label of each field (the parameter's name stays the field's name and the flag's).
FORM_LABELS = {
    "epochs": "Epochs", "batch_size": "Batch size (queries per step)", "train_n_passages": "Passages per query",
    "lr": "Learning rate", "temperature": "Temperature", "distill_weight": "Distillation weight",
    "warmup_ratio": "Warm-up share", "query_max_length": "Query length (tokens)",
    "passage_max_length": "Passage length (tokens)", "seed": "Random seed", "save_every": "Checkpoint every (steps)",
    "threads": "CPU threads", "interpolate": "Interpolation weight", "max_ood_loss": "Largest out-of-domain loss",
}
# Rarely changed: the web form folds them under "Advanced".
ADVANCED_FIELDS = frozenset({"warmup_ratio", "query_max_length", "passage_max_length", "seed", "save_every",
                             "threads", "interpolate", "max_ood_loss"})

# Base models whose measured defaults differ from the E5 recipe's. all-MiniLM-L6-v2 was trained with a softer
# temperature (scale 20) than E5: on it the E5 recipe's lr and temperature lose in-domain quality, these were
# measured better (README, "Fine-tuning": the lr/temperature table). The web form offers them for such a model.
SMALL_MODEL_HUB_IDS = ("sentence-transformers/all-MiniLM-L6-v2",)
SMALL_MODEL_DEFAULTS: dict[str, int | float | str] = {"lr": 1e-4, "temperature": 0.02}
SMALL_MODEL_SOURCE = "measured on all-MiniLM-L6-v2 (README: Fine-tuning)"


def train_param_defaults() -> dict[str, int | float | str | None]:
    """The form's train parameters and their defaults (None: the command's own choice)."""
    return defaults(TRAIN_PARAMS)
