"""The training loop on a tiny model: exact resume after SIGKILL, atomic checkpoints, metrics, export round trips."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from e5studio.cli import main
from e5studio.engine.embedder import Embedder
from e5studio.errors import InputError
from e5studio.jobs.train.checkpoints import (
    complete_checkpoints,
    latest_checkpoint,
    load_checkpoint_state,
    remove_temporary,
    save_checkpoint_state,
)
from e5studio.jobs.train.settings import RunOptions, TrainSettings
from e5studio.jobs.train.trainer import Trainer, TrainRun
from e5studio.retrieval.evaluate import load_eval_set
from e5studio.settings import EngineSettings
from tests import stores
from tests.reference import sentence_transformers_embeddings

# 24 queries / batch 4 = 6 steps per epoch, 2 epochs; checkpoints every 2 steps and at epoch ends
TRAIN_FLAGS = ["--epochs", "2", "--batch-size", "4", "--train-n-passages", "3", "--lr", "1e-3", "--save-every", "2",
               "--query-max-length", "16", "--passage-max-length", "32", "--device", "cpu", "--threads", "1",
               "--no-progress"]
KILL_AT = 9  # after the checkpoint of step 8, in the middle of epoch 2 (steps 7-12)

KILLER = """
import os, signal, sys
from e5studio.jobs.train import commands
original = commands.StoreReporter.on_step
def on_step(self, step, total, loss):
    original(self, step, total, loss)
    if step == {kill_at}:
        os.kill(os.getpid(), signal.SIGKILL)
commands.StoreReporter.on_step = on_step
from e5studio.cli import main
sys.exit(main(sys.argv[1:]))
"""


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env["HF_HUB_OFFLINE"] = "1"
    return env


def e5studio(*args: str, script: str | None = None, data_dir: Path | None = None) -> subprocess.CompletedProcess[str]:
    """The CLI in a child process; ``data_dir``: the store it records in is that data directory's."""
    head = ["-c", script] if script else ["-m", "e5studio"]
    env = {**_env(), **(stores.store_env(data_dir) if data_dir is not None else {})}
    return subprocess.run([sys.executable, *head, *args], capture_output=True, text=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, toy_dir: Path, tiny_dropout_dir: Path) -> dict[str, Path]:
    """Run A uninterrupted; run B killed with SIGKILL at step 9, then resumed with --resume (in children)."""
    root = tmp_path_factory.mktemp("runs")
    data_dir = str(root / "store")
    common = ["--dataset", "toy", "--model", str(tiny_dropout_dir), "--eval-dir", str(toy_dir), "--data-dir",
              data_dir, *TRAIN_FLAGS]
    # the dataset and run A in this process (the CLI's main(), what the children below run; two process starts
    # fewer), with the store the children get and the thread count put back afterwards
    threads = torch.get_num_threads()
    with pytest.MonkeyPatch.context() as patch:
        for name, value in stores.store_env(Path(data_dir)).items():
            patch.setenv(name, value)
        try:
            assert main(["datasets", "add", "toy", str(toy_dir), "--train-n-passages", "3", "--data-dir",
                         data_dir]) == 0
            assert main(["train", *common, "--output", str(root / "a")]) == 0
        finally:
            torch.set_num_threads(threads)
    killed = e5studio("train", *common, "--output", str(root / "b"), script=KILLER.format(kill_at=KILL_AT),
                      data_dir=Path(data_dir))
    assert killed.returncode == -9, killed.stderr
    resumed = e5studio("train", *common, "--output", str(root / "b"), "--resume", data_dir=Path(data_dir))
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from step-00000008 (step 8)" in resumed.stderr
    return {"a": root / "a", "b": root / "b", "store": root / "store", "killed_stdout": root}


def _records(output: Path) -> list[dict[str, object]]:
    return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]


def test_resume_after_sigkill_ends_with_the_same_weights(runs: dict[str, Path]) -> None:
    for kind in ("final", "best"):
        a = load_file(str(runs["a"] / kind / "model.safetensors"))
        b = load_file(str(runs["b"] / kind / "model.safetensors"))
        assert a.keys() == b.keys()
        worst = max(float((a[k] - b[k]).abs().max()) for k in a)
        assert worst <= 1e-6, (kind, worst)
    base = load_file(str(runs["a"] / "final" / "model.safetensors"))
    assert base["embeddings.word_embeddings.weight"].abs().sum() > 0


def test_resumed_metrics_log_equals_the_uninterrupted_one(runs: dict[str, Path]) -> None:
    a, b = _records(runs["a"]), _records(runs["b"])
    assert [r["step"] for r in a if r["event"] == "step"] == list(range(1, 13))
    assert [(r["step"], r["epoch"]) for r in a if r["event"] == "eval"] == [(0, 0), (6, 1), (12, 2)]
    strip = ("groups_per_s", "seconds")
    assert [{k: v for k, v in r.items() if k not in strip} for r in a] == \
        [{k: v for k, v in r.items() if k not in strip} for r in b]
    assert all(set(r) >= {"ndcg@10", "mrr@10", "recall@100"} for r in a if r["event"] == "eval")
    assert (runs["a"] / "metrics.png").stat().st_size > 1000


def test_checkpoints_are_complete_and_retained(runs: dict[str, Path]) -> None:
    found = complete_checkpoints(runs["a"] / "checkpoints")
    assert [step for step, _ in found] == [10, 12]  # --keep-checkpoints 2 (default)
    state = load_checkpoint_state(found[-1][1])
    assert state["step"] == 12 and state["sampler"] == {"epoch": 2, "step_in_epoch": 0}
    assert set(state) >= {"model", "optimizer", "scheduler", "scaler", "rng", "history", "best", "fingerprint"}
    assert not [p for p in (runs["a"] / "checkpoints").iterdir() if p.name.startswith(".tmp-")]


def test_jobs_are_recorded_in_the_store(runs: dict[str, Path]) -> None:
    from e5studio.control.store import JOB_SUCCEEDED, Store

    with Store(stores.store_for(runs["store"])) as store:
        jobs = store.list_jobs("train")
    assert len(jobs) == 2  # the resumed run continued the killed run's job
    for job in jobs:
        assert job.status == JOB_SUCCEEDED and job.step == job.total_steps == 12 and job.progress == 1.0
        assert set(job.metrics) >= {"before", "after", "final_dir", "best_dir", "groups_per_s"}
        assert job.params["dataset"] == "toy@1" and job.params["batch_size"] == 4


# ------------------------------------------------------------------------------------------------ export


TEXTS = ["query: what about protein and cell", "passage: protein cell gene virus heart brain", "a longer passage: "
         + "insulin plasma neuron receptor " * 8]


def auto_model_embeddings(model_dir: Path, texts: list[str]) -> np.ndarray:
    """transformers.AutoModel + AutoTokenizer + the E5 model card's average pooling, then L2 normalisation."""
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model = AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tokenizer(texts, padding=True, truncation=True, max_length=64, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state  # [B, L, d]
    mask = batch["attention_mask"][..., None].bool()
    pooled = hidden.masked_fill(~mask, 0.0).sum(dim=1) / mask.sum(dim=1)
    return torch.nn.functional.normalize(pooled, dim=1).numpy()


def test_export_loads_in_e5studio_transformers_and_sentence_transformers(runs: dict[str, Path]) -> None:
    final = runs["a"] / "final"
    assert {p.name for p in final.iterdir()} >= {"config.json", "model.safetensors", "tokenizer.json", "vocab.txt",
                                                 "modules.json", "sentence_bert_config.json", "1_Pooling"}
    embedder = Embedder.load(EngineSettings(model=str(final), device="cpu"))
    ours = embedder.embed(TEXTS)
    reference_hf = auto_model_embeddings(final, TEXTS)
    reference_st = sentence_transformers_embeddings(final, TEXTS)
    np.testing.assert_allclose(ours, reference_hf, atol=1e-5, rtol=0)
    np.testing.assert_allclose(ours, reference_st, atol=1e-5, rtol=0)
    best = Embedder.load(EngineSettings(model=str(runs["a"] / "best"), device="cpu"))
    assert best.embed(TEXTS).shape == ours.shape


# ------------------------------------------------------------------------------------------------ in-process


def _job(toy_dir: Path, model: Path, output: Path, **changes: object) -> TrainRun:
    settings = TrainSettings(**{"epochs": 1, "batch_size": 4, "train_n_passages": 3, "query_max_length": 16,
                                "passage_max_length": 32, **changes})  # type: ignore[arg-type]
    return TrainRun(model=str(model), dataset_dir=toy_dir, output=output, settings=settings,
                    options=RunOptions(device="cpu", save_every=2, progress=False))


def test_existing_checkpoints_need_resume_and_resume_needs_the_same_settings(
        tmp_path: Path, toy_dir: Path, tiny_dropout_dir: Path) -> None:
    result = Trainer(_job(toy_dir, tiny_dropout_dir, tmp_path / "out")).run()
    assert result.steps == 6 and result.best_dir is None and (result.final_dir / "model.safetensors").is_file()
    with pytest.raises(InputError, match="already holds training checkpoints"):
        Trainer(_job(toy_dir, tiny_dropout_dir, tmp_path / "out")).run()
    with pytest.raises(InputError, match=r"hyperparameters differ from the checkpoint \(learning_rate\)"):
        Trainer(_job(toy_dir, tiny_dropout_dir, tmp_path / "out", learning_rate=1e-4)).run(resume=True)
    again = Trainer(_job(toy_dir, tiny_dropout_dir, tmp_path / "out")).run(resume=True)  # already finished
    assert again.steps == 6


def test_bad_settings_are_input_errors() -> None:
    with pytest.raises(InputError, match="temperature"):
        TrainSettings(temperature=0)
    with pytest.raises(InputError, match="precision"):
        TrainSettings(precision="int8")


def test_low_precision_is_refused_on_cpu(tmp_path: Path, toy_dir: Path, tiny_dropout_dir: Path) -> None:
    with pytest.raises(InputError, match="needs a CUDA device"):
        Trainer(_job(toy_dir, tiny_dropout_dir, tmp_path / "o", precision="bf16"))


def test_a_crash_while_writing_never_leaves_a_checkpoint_resume_would_pick(tmp_path: Path,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "checkpoints"
    save_checkpoint_state(root, 2, {"step": 2}, keep=5)

    def crash(obj: object, path: Path) -> None:
        Path(path).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint_state(root, 4, {"step": 4}, keep=5)
    monkeypatch.undo()
    assert latest_checkpoint(root) == root / "step-00000002"
    # what SIGKILL leaves: a temporary directory, and (never written by us) a step directory without its marker
    (root / ".tmp-step-00000006-999").mkdir()
    (root / ".tmp-step-00000006-999" / "state.pt").write_bytes(b"partial")
    (root / "step-00000008").mkdir()
    (root / "step-00000008" / "state.pt").write_bytes(b"partial")
    assert latest_checkpoint(root) == root / "step-00000002"
    assert load_checkpoint_state(root / "step-00000002")["step"] == 2
    remove_temporary(root)
    assert sorted(p.name for p in root.iterdir()) == ["step-00000002", "step-00000008"]


def test_retention_keeps_the_newest(tmp_path: Path) -> None:
    for step in (1, 2, 3, 4):
        save_checkpoint_state(tmp_path, step, {"step": step}, keep=2)
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [3, 4]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step-00000003", "step-00000004"]


def test_eval_set_loading(toy_dir: Path) -> None:
    evalset = load_eval_set(toy_dir)
    assert evalset.query_ids == [f"q{i}" for i in range(0, 24, 3)]
    assert evalset.qrels["q3"] == {"3": 1}
    assert len(evalset.passages) == 32
    assert load_eval_set(toy_dir, max_queries=2).query_ids == ["q0", "q3"]
    with pytest.raises(InputError, match="queries.dev.jsonl not found"):
        load_eval_set(toy_dir, split="dev")
