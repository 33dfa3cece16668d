"""Which model a run hands over: the combined score, weight interpolation with the base model, the auto search,
and a real run on the tiny model with an in-domain and an out-of-domain evaluation set."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from e5studio.engine.checkpoint import load_checkpoint, read_weights
from e5studio.engine.encoder import load_encoder
from e5studio.errors import InputError
from e5studio.jobs.train.checkpoints import latest_checkpoint, load_checkpoint_state
from e5studio.jobs.train.commands import load_eval_sets
from e5studio.jobs.train.evaluate import ModuleEvaluator, evaluate_module
from e5studio.jobs.train.handover import Handover
from e5studio.jobs.train.report import MetricsLog
from e5studio.jobs.train.selection import Candidate, better, eligible, interpolate, search_alpha, worst_ood_loss
from e5studio.jobs.train.settings import RunOptions, TrainSettings
from e5studio.jobs.train.trainer import Trainer, TrainRun
from e5studio.jobspec.deploy_gate import IN_DOMAIN, OUT_OF_DOMAIN, read_evaluation
from e5studio.jobspec.layout import EVALUATION_FILE
from e5studio.jobspec.train_params import parse_interpolation
from tests.jobs.toy import toy_dataset

BASE = {"in": {"ndcg@10": 0.50}, "ood": {"ndcg@10": 0.40}}


def sets(in_domain: float, ood: float) -> dict[str, dict[str, float]]:
    return {"in": {"ndcg@10": in_domain}, "ood": {"ndcg@10": ood}}


def test_eligibility_and_the_combined_score() -> None:
    assert worst_ood_loss(sets(0.6, 0.39), BASE, ["ood"]) == pytest.approx(0.01)
    assert worst_ood_loss(sets(0.6, 0.45), BASE, ["ood"]) == 0.0  # a gain is no loss
    assert eligible(sets(0.6, 0.396), BASE, ["ood"], 0.005) and not eligible(sets(0.6, 0.39), BASE, ["ood"], 0.005)
    strong_but_forgetful = Candidate("a", sets(0.70, 0.38))
    modest_and_safe = Candidate("b", sets(0.55, 0.399))
    stronger_safe = Candidate("c", sets(0.58, 0.398))
    args = (BASE, "in", ["ood"], 0.005)
    assert better(modest_and_safe, strong_but_forgetful, *args)  # eligibility first
    assert not better(strong_but_forgetful, modest_and_safe, *args)
    assert better(stronger_safe, modest_and_safe, *args)  # then in-domain nDCG@10
    assert better(Candidate("d", sets(0.4, 0.39)), strong_but_forgetful, *args)  # both out: the smaller loss
    assert better(strong_but_forgetful, None, *args)
    # without out-of-domain sets every candidate is eligible: plain in-domain nDCG@10 (the old rule)
    assert better(strong_but_forgetful, stronger_safe, BASE, "in", [], 0.005)


def test_interpolation_is_the_weighted_mean_of_floating_tensors() -> None:
    tuned = {"w": torch.tensor([1.0, 3.0]), "ids": torch.tensor([0, 1])}
    base = {"w": torch.tensor([-1.0, 1.0]), "ids": torch.tensor([0, 1])}
    mixed = interpolate(tuned, base, 0.25)
    torch.testing.assert_close(mixed["w"], torch.tensor([-0.5, 1.5]))
    assert torch.equal(mixed["ids"], tuned["ids"])
    torch.testing.assert_close(interpolate(tuned, base, 1.0)["w"], tuned["w"])
    with pytest.raises(ValueError, match="differ in names"):
        interpolate(tuned, {"w": base["w"]}, 0.5)
    with pytest.raises(ValueError, match="shape"):
        interpolate(tuned, {**base, "w": torch.zeros(3)}, 0.5)


def test_auto_search_bisects_to_the_largest_eligible_weight() -> None:
    seen: list[float] = []

    def evaluate(a: float) -> dict[str, dict[str, float]]:  # in-domain gain grows with a, the loss with a^2
        seen.append(a)
        return sets(0.50 + 0.10 * a, 0.40 - 0.02 * a * a)

    chosen, measured = search_alpha(evaluate, evaluate(1.0), BASE, "in", ["ood"], 0.005)
    assert seen == [1.0, 0.5, 0.75, 0.625]  # a = 0.5 loses exactly 0.005: allowed; 0.625 and 0.75 are not
    assert chosen.alpha == 0.5 and chosen.sets["in"]["ndcg@10"] == pytest.approx(0.55)
    assert [c.alpha for c in measured] == [0.5, 0.75, 0.625]


def test_auto_search_keeps_tuned_weights_that_lose_nothing_and_falls_back_to_the_base() -> None:
    def never(a: float) -> dict[str, dict[str, float]]:
        raise AssertionError("no interpolation should be measured")

    chosen, measured = search_alpha(never, sets(0.6, 0.41), BASE, "in", ["ood"], 0.005)
    assert (chosen.alpha, measured) == (1.0, [Candidate("tuned", sets(0.6, 0.41), 1.0)])
    chosen, measured = search_alpha(lambda a: sets(0.6, 0.30), sets(0.7, 0.2), BASE, "in", ["ood"], 0.005)
    assert chosen.alpha == 0.0 and [c.alpha for c in measured] == [0.5, 0.25, 0.125]  # every one loses 0.1


def test_interpolate_parameter() -> None:
    assert parse_interpolation("auto") is None and parse_interpolation(" AUTO ") is None
    assert parse_interpolation("0.5") == 0.5 and parse_interpolation("1") == 1.0
    for bad in ("0", "1.5", "-0.2", "nan", "half", ""):
        with pytest.raises(ValueError, match="--interpolate must be auto or a number in"):
            parse_interpolation(bad)
    with pytest.raises(InputError, match="--interpolate"):
        RunOptions(interpolate="2")
    with pytest.raises(InputError, match="max_ood_loss"):
        RunOptions(max_ood_loss=-0.1)


# ------------------------------------------------------------------------------------------------ a real run


class _Lines:
    """What the hand-over writes on the progress output (no progress bars)."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def evaluation(self, title: str) -> None:
        return None

    def write(self, message: str) -> None:
        self.lines.append(message)


def test_the_handover_measures_changes_against_the_logged_base(tmp_path: Path, toy_dir: Path,
                                                               tiny_nodropout_dir: Path) -> None:
    checkpoint = load_checkpoint(str(tiny_nodropout_dir))
    encoder = load_encoder(checkpoint).eval()
    evalsets = load_eval_sets([str(toy_dir)], None)
    log = MetricsLog(tmp_path / "metrics.jsonl")
    log.reset()
    shown = _Lines()

    def handover() -> Handover:  # a new one per phase, as a resumed run starts with only the log
        return Handover(str(tiny_nodropout_dir), evalsets, RunOptions(device="cpu"),
                        ModuleEvaluator(checkpoint, 32, torch.device("cpu")), log, tmp_path, shown)  # type: ignore[arg-type]

    start = handover().evaluate_start(encoder)
    direct = evaluate_module(encoder, checkpoint, 32, evalsets[0], torch.device("cpu"))
    assert start["sets"] == {"data": direct} and start["ndcg@10"] == direct["ndcg@10"]
    assert (start["event"], start["step"], start["change"]) == ("eval", 0, {"data": 0.0})
    torch.manual_seed(0)
    with torch.no_grad():  # another model: an epoch's weights
        for weight in encoder.parameters():
            weight.add_(0.5 * torch.randn_like(weight))
    after = handover().evaluate_epoch(encoder, 6, 1)
    delta = after["ndcg@10"] - start["ndcg@10"]
    assert delta != 0 and after["change"] == {"data": round(delta, 5)} and (after["step"], after["epoch"]) == (6, 1)
    assert [r["event"] for r in log.records()] == ["eval", "eval"] and log.records()[1] == after
    assert shown.lines[-1].startswith("evaluation after epoch 1 (step 6) data: ndcg@10 ")
    assert shown.lines[-1].endswith(f"(nDCG@10 {after['change']['data']:+.4f} vs base)")
    log.reset()  # a metrics log that lost the evaluation before training: no base to measure against
    with pytest.raises(InputError, match="the evaluation before training is missing"):
        handover().evaluate_epoch(encoder, 6, 1)


@pytest.fixture(scope="module")
def ood_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A second toy collection (other seed: other texts) standing for an out-of-domain set."""
    return toy_dataset(tmp_path_factory.mktemp("ood") / "data", seed=7)


def _run(toy_dir: Path, ood_dir: Path, model: Path, output: Path, interpolate_: str) -> Trainer:
    settings = TrainSettings(epochs=2, batch_size=4, train_n_passages=3, query_max_length=16, passage_max_length=32,
                             learning_rate=1e-3)
    evalsets = load_eval_sets([str(toy_dir), str(ood_dir)], None)
    job = TrainRun(model=str(model), dataset_dir=toy_dir, output=output, settings=settings,
                   options=RunOptions(device="cpu", save_every=0, progress=False, interpolate=interpolate_,
                                      max_ood_loss=0.0),
                   evalsets=evalsets)
    return Trainer(job)


def _records(output: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("interpolate_", ["0.5", "auto"])
def test_a_run_with_two_sets_exports_the_interpolated_final_model(tmp_path: Path, toy_dir: Path, ood_dir: Path,
                                                                  tiny_dropout_dir: Path, interpolate_: str) -> None:
    trainer = _run(toy_dir, ood_dir, tiny_dropout_dir, tmp_path / "out", interpolate_)
    names = [e.name for e in trainer.job.evalsets]
    assert names == ["data", "data-2"]  # two folders called "data": the second one gets a suffix
    result = trainer.run()
    records = _records(tmp_path / "out")
    evals = [r for r in records if r["event"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in evals] == [(0, 0), (6, 1), (12, 2)]
    for r in evals:  # every set, every evaluation; the first set's metrics also at the top level
        assert set(r["sets"]) == set(names) and r["ndcg@10"] == r["sets"]["data"]["ndcg@10"]  # type: ignore[index]
        for name in names:
            expected = r["sets"][name]["ndcg@10"] - evals[0]["sets"][name]["ndcg@10"]  # type: ignore[index]
            assert r["change"][name] == pytest.approx(expected, abs=1e-5)  # type: ignore[index]
    (final,) = [r for r in records if r["event"] == "final"]
    alpha = float(final["alpha"])  # type: ignore[arg-type]
    candidates = [r for r in records if r["event"] == "candidate"]
    if interpolate_ == "0.5":
        assert alpha == 0.5 and [c["alpha"] for c in candidates] == [0.5]
    elif candidates:  # auto: the tuned weights lost on the out-of-domain set (allowed loss 0): a bisection ran
        assert [c["alpha"] for c in candidates][0] == 0.5 and len(candidates) == 3
        assert alpha in {0.0, *[c["alpha"] for c in candidates]}
    else:  # auto: the tuned weights lost nothing out of domain: kept as they are
        assert alpha == 1.0 and evals[-1]["sets"]["data-2"]["ndcg@10"] >= evals[0]["sets"]["data-2"]["ndcg@10"]  # type: ignore[index]
    assert result.final is not None and result.final["alpha"] == alpha
    # the exported weights are exactly a * (the last epoch's weights) + (1 - a) * (the base weights)
    tuned = load_checkpoint_state(latest_checkpoint(tmp_path / "out" / "checkpoints"))["model"]  # type: ignore[arg-type]
    base = read_weights(load_checkpoint(str(tiny_dropout_dir)))
    exported = read_weights(load_checkpoint(str(result.final_dir)))
    assert set(exported) == set(tuned) and (result.final_dir / "model.safetensors").is_file()
    expected = interpolate(tuned, base, alpha) if alpha > 0 else base
    for name, value in exported.items():
        torch.testing.assert_close(value, expected[name].float(), rtol=0, atol=1e-6)
    # the evaluation the deploy gate reads: roles, the base model's and this model's metrics on both sets
    evaluation = read_evaluation(str(result.final_dir))
    assert evaluation is not None and (result.final_dir / EVALUATION_FILE).is_file()
    assert [(s.name, s.role) for s in evaluation.sets] == [("data", IN_DOMAIN), ("data-2", OUT_OF_DOMAIN)]
    for s in evaluation.sets:
        assert s.base == evals[0]["sets"][s.name]  # type: ignore[index]
        assert s.model == final["sets"][s.name]  # type: ignore[index]
    assert evaluation.details["alpha"] == alpha and evaluation.base_model == str(tiny_dropout_dir)
    assert (tmp_path / "out" / "metrics.png").stat().st_size > 1000  # a line per set, the final model marked
    best = read_evaluation(str(tmp_path / "out" / "best"))
    assert best is not None and best.label.startswith("best epoch")
