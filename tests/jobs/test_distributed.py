"""Two CPU processes (gloo) against one: the same first-step loss and gradients; a whole run with evaluation (rank 0
evaluates and hands over, every rank ends with its records); torchrun end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from e5studio.jobs.train.trainer import DistContext
from tests import stores
from tests.jobs.ddp_worker import first_step, run_worker, worker


def test_two_processes_give_the_single_process_loss_and_gradients(
        tmp_path: Path, toy_dir: Path, tiny_nodropout_dir: Path) -> None:
    torch.set_num_threads(1)
    loss, grads = first_step(tiny_nodropout_dir, toy_dir, DistContext())
    mp.start_processes(worker, args=(2, str(tmp_path / "init"), str(tiny_nodropout_dir), str(toy_dir), str(tmp_path)),
                       nprocs=2, join=True, start_method="spawn")
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        assert got["loss"] == pytest.approx(loss, abs=1e-6)
        assert got["grads"].keys() == grads.keys()
        for name, grad in grads.items():  # equal up to fp32 summation order (each rank sums over its tokens)
            torch.testing.assert_close(got["grads"][name], grad, atol=1e-5, rtol=1e-4, msg=name)
    assert max(float(g.abs().max()) for g in grads.values()) > 1e-3  # the check is not vacuous


def test_rank_zero_evaluates_and_every_rank_gets_the_records(tmp_path: Path, toy_dir: Path,
                                                              tiny_nodropout_dir: Path) -> None:
    mp.start_processes(run_worker, args=(2, str(tmp_path / "init"), str(tiny_nodropout_dir), str(toy_dir),
                                         str(tmp_path)), nprocs=2, join=True, start_method="spawn")
    main, other = (json.loads((tmp_path / f"result{rank}.json").read_text()) for rank in (0, 1))
    records = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if r["event"] == "eval"]
    assert [(r["step"], r["epoch"]) for r in evals] == [(0, 0), (3, 1)]
    assert main["history"] == other["history"] == evals  # rank 0's records, broadcast as they were logged
    assert [r["alpha"] for r in records if r["event"] == "candidate"] == [0.5]  # measured by rank 0 alone
    # the choices are rank 0's: the final record and best/ (the others only train and wait at the barrier)
    assert main["final"]["alpha"] == 0.5 and other["final"] is None
    assert main["best_dir"] == str(tmp_path / "run" / "best") and main["steps"] == other["steps"] == 3
    for folder in ("best", "final"):
        assert (tmp_path / "run" / folder / "e5studio-evaluation.json").is_file()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("E5STUDIO_")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", **extra)
    return env


@pytest.mark.slow  # torchrun's launch; the two-process equality itself is checked above in the default suite
def test_torchrun_two_processes_train_like_one(tmp_path: Path, toy_dir: Path, tiny_nodropout_dir: Path) -> None:
    """The same command under torchrun: rank 0 alone logs and saves; the weights match a 1-process run."""
    data_dir = str(tmp_path / "store")
    store = stores.store_env(Path(data_dir))  # the data directory's store (PostgreSQL runs: $E5STUDIO_STORE)
    subprocess.run([sys.executable, "-m", "e5studio", "datasets", "add", "toy", str(toy_dir), "--data-dir", data_dir],
                   check=True, capture_output=True, env=_env(**store))
    flags = ["train", "--dataset", "toy", "--model", str(tiny_nodropout_dir), "--data-dir", data_dir, "--epochs", "1",
             "--batch-size", "8", "--train-n-passages", "3", "--query-max-length", "16", "--passage-max-length", "32",
             "--lr", "1e-3", "--device", "cpu", "--no-progress"]
    single = subprocess.run([sys.executable, "-m", "e5studio", *flags, "--output", str(tmp_path / "one"),
                             "--threads", "1"], capture_output=True, text=True, env=_env(**store), timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "e5studio", *flags, "--output", str(tmp_path / "two")],
                            capture_output=True, text=True, env=_env(**store), timeout=300)
    assert double.returncode == 0, double.stderr
    assert "2 process(es)" in double.stderr
    one_log = [json.loads(x) for x in (tmp_path / "one" / "metrics.jsonl").read_text().splitlines()]
    two_log = [json.loads(x) for x in (tmp_path / "two" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in two_log] == [1, 2, 3]  # written once, by rank 0
    for a, b in zip(one_log, two_log, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    one = load_file(str(tmp_path / "one" / "final" / "model.safetensors"))
    two = load_file(str(tmp_path / "two" / "final" / "model.safetensors"))
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
