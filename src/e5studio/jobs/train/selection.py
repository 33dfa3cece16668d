"""Which model a fine-tuning run hands over, judged on its evaluation sets.

The first evaluation set is the in-domain one (what the run is tuned for); every other one is out-of-domain
and guards what the base model knew. A candidate (an epoch's weights, or an interpolation of the final weights
with the base weights) is *eligible* when it loses at most ``max_ood_loss`` nDCG@10 against the base model on
every out-of-domain set; among eligible candidates the one with the best in-domain nDCG@10 wins.

Interpolation (``final = a * tuned + (1 - a) * base``, "WiSE-FT" in the literature) moves every weight
partway back to the base model: in-domain gains shrink slowly while out-of-domain losses vanish quickly.
With ``--interpolate auto`` the weight ``a`` is searched by bisection between the base model (a = 0, always
eligible) and the tuned one (a = 1), evaluating each midpoint on all sets.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

METRIC = "ndcg@10"
# --interpolate auto for a run without evaluation sets (nothing to search on): the weight the README's section
# "Fine-tuning that keeps what the base model knew" chose (its table holds the figures)
AUTO_WITHOUT_SETS = 0.5
AUTO_STEPS = 3  # bisection steps of --interpolate auto (0.5, then 0.25 or 0.75, ...): a to within 1/8


@dataclass(frozen=True)
class Candidate:
    """One model the run could hand over, with its metrics on every set (``sets``: name -> metrics)."""

    label: str
    sets: Mapping[str, Mapping[str, float]]
    alpha: float = 1.0  # the interpolation weight (1: the tuned weights as they are)


def changes(candidate: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]],
            metric: str = METRIC) -> dict[str, float]:
    """Each set's change of ``metric`` against the base model."""
    return {name: float(candidate[name][metric]) - float(base[name][metric]) for name in base}


def worst_ood_loss(candidate: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]],
                   ood: Sequence[str]) -> float:
    """The largest nDCG@10 loss on an out-of-domain set (0 when none lost anything, or there are none)."""
    delta = changes(candidate, base)
    return max([0.0] + [-delta[name] for name in ood])


def eligible(candidate: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]],
             ood: Sequence[str], max_ood_loss: float) -> bool:
    return worst_ood_loss(candidate, base, ood) <= max_ood_loss + 1e-12


def better(a: Candidate, b: Candidate | None, base: Mapping[str, Mapping[str, float]], in_domain: str,
           ood: Sequence[str], max_ood_loss: float) -> bool:
    """Whether ``a`` beats ``b``: eligibility first, then in-domain nDCG@10; two ineligible candidates
    compare by their worst out-of-domain loss (the smaller wins)."""
    if b is None:
        return True
    a_ok, b_ok = eligible(a.sets, base, ood, max_ood_loss), eligible(b.sets, base, ood, max_ood_loss)
    if a_ok != b_ok:
        return a_ok
    if a_ok:
        return float(a.sets[in_domain][METRIC]) > float(b.sets[in_domain][METRIC])
    return worst_ood_loss(a.sets, base, ood) < worst_ood_loss(b.sets, base, ood)


def interpolate(tuned: Mapping[str, torch.Tensor], base: Mapping[str, torch.Tensor],
                alpha: float) -> dict[str, torch.Tensor]:
    """``alpha * tuned + (1 - alpha) * base`` for every floating-point tensor; other tensors (position ids)
    are taken from ``tuned``. The two state dicts must have the same keys and shapes."""
    if set(tuned) != set(base):
        raise ValueError(f"the tuned and base weights differ in names: {sorted(set(tuned) ^ set(base))[:5]}")
    out: dict[str, torch.Tensor] = {}
    for name, t in tuned.items():
        b = base[name].to(t.device)
        if b.shape != t.shape:
            raise ValueError(f"{name}: tuned shape {tuple(t.shape)} != base shape {tuple(b.shape)}")
        out[name] = torch.lerp(b.to(t.dtype), t, alpha) if t.is_floating_point() else t.clone()
    return out


def search_alpha(evaluate: Callable[[float], Mapping[str, Mapping[str, float]]],
                 tuned: Mapping[str, Mapping[str, float]], base: Mapping[str, Mapping[str, float]],
                 in_domain: str, ood: Sequence[str], max_ood_loss: float,
                 steps: int = AUTO_STEPS) -> tuple[Candidate, list[Candidate]]:
    """``--interpolate auto``: the best candidate among the tuned weights (a = 1), the base ones (a = 0) and
    the interpolations a bisection visits (``evaluate(a)`` measures one), and every candidate measured.

    The tuned weights win outright when they are eligible (no out-of-domain set lost more than allowed);
    otherwise the bisection keeps the largest ``a`` found eligible as its lower end."""
    top = Candidate("tuned", tuned, 1.0)
    bottom = Candidate("base", base, 0.0)
    if eligible(tuned, base, ood, max_ood_loss):
        return top, [top]
    measured: list[Candidate] = []
    lo, hi = 0.0, 1.0
    best: Candidate = bottom
    for _ in range(steps):
        alpha = round((lo + hi) / 2, 6)
        candidate = Candidate(f"a = {alpha:g}", evaluate(alpha), alpha)
        measured.append(candidate)
        if eligible(candidate.sets, base, ood, max_ood_loss):
            lo = alpha
        else:
            hi = alpha
        if better(candidate, best, base, in_domain, ood, max_ood_loss):
            best = candidate
    return best, measured


def record_sets(record: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The per-set metrics of a ``metrics.jsonl`` eval record (older records: one unnamed set)."""
    sets = record.get("sets")
    if isinstance(sets, dict) and sets:
        return {str(k): dict(v) for k, v in sets.items()}
    return {"eval": {k: float(v) for k, v in record.items() if "@" in k or k == "map"}}
