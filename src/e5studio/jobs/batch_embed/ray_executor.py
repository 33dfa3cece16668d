"""``--engine ray``: the same windows, shards and manifest as the local executor, computed on Ray Data.

The driver plans the input's windows (byte ranges of ``window_size`` lines, or row ranges; one pass over
the bytes, no parsing), drops those the manifest already lists, and hands the rest to Ray Data as one row
per window. ``map_batches`` runs :class:`WindowEmbedder` in an actor pool: each actor loads one engine
(``Embedder``) once, then for every window reads its lines, tokenises, embeds (length-sorted micro-batches)
and writes the shard itself. The driver records each finished shard in the manifest as results stream
back, in whatever order they finish; a crash loses only windows in flight, and the rerun (with either
engine) embeds what the manifest does not list.

Cluster use: start Ray on every node (``ray start --head`` on one, ``ray start --address HEAD:6379`` on the
others), install e5studio (and the model, or hub access) on every node, put the input and the output folder
on a filesystem every node sees at the same path, and run
``e5studio embed-corpus ... --engine ray --ray-address auto --workers N [--gpus-per-worker 1]``. Without
``--ray-address`` a local Ray instance is started for the job.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from e5studio.errors import E5StudioError, InputError
from e5studio.jobs.batch_embed.manifest_state import ManifestState
from e5studio.jobs.batch_embed.progress import EmbedTally
from e5studio.jobs.batch_embed.reader import InputSpec, Reject, WindowSpec, plan_windows, read_window
from e5studio.jobs.batch_embed.runner import EmbedCorpusSettings
from e5studio.jobs.batch_embed.windows import WindowResult, bad_records_error, embed_window, prepare_window
from e5studio.jobs.batch_embed.writer import ShardInfo
from e5studio.settings import EngineSettings


@dataclass(frozen=True)
class RayOptions:
    """address: ``None`` starts a local Ray; ``auto`` or ``ray://host:port`` joins a running cluster.
    workers: actors in the pool (one engine each). gpus_per_worker: 0 on CPU; 1 gives each actor a GPU.
    cpus_per_worker: CPU cores reserved per actor (its torch threads)."""

    address: str | None = None
    workers: int = 1
    gpus_per_worker: float = 0.0
    cpus_per_worker: float = 1.0
    num_cpus: int | None = None  # local instance only: cores Ray may use (default: all)

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise InputError("--workers must be at least 1")
        if self.gpus_per_worker < 0 or self.cpus_per_worker <= 0:
            raise InputError("--gpus-per-worker must be >= 0 and --cpus-per-worker > 0")


def _result_to_json(result: WindowResult) -> str:
    return json.dumps({"spec": result.spec.to_json(), "shard": asdict(result.shard) if result.shard else None,
                       "rejects": [r.to_json() for r in result.rejects], "tokens": result.tokens,
                       "device": result.device, "seconds": result.seconds})


def _result_from_json(raw: str) -> WindowResult:
    obj = json.loads(raw)
    shard = ShardInfo(**obj["shard"]) if obj["shard"] else None
    rejects = [Reject(r["line"], r["reason"], r["excerpt"]) for r in obj["rejects"]]
    return WindowResult(WindowSpec.from_json(obj["spec"]), shard, rejects, int(obj["tokens"]), obj["device"],
                        float(obj["seconds"]))


class WindowEmbedder:
    """A Ray Data actor: one engine, many windows. Input rows: window specs; output: one JSON result each."""

    def __init__(self, input: dict[str, Any], engine: dict[str, Any], input_type: str | None, output: str,
                 bad_records: str) -> None:
        from e5studio.engine.embedder import Embedder

        self.spec = InputSpec(Path(input["path"]), input["format"], input["text_field"], input["id_field"])
        self.embedder = Embedder.load(EngineSettings(**engine))
        self.input_type = input_type
        self.output = Path(output)
        self.bad_records = bad_records

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = []
        for i in range(len(batch["index"])):
            wspec = WindowSpec(*(int(batch[k][i]) for k in ("index", "first", "count", "start", "end")))
            window = read_window(self.spec, wspec)
            if window.rejects and self.bad_records == "fail":
                result = WindowResult(wspec, None, window.rejects, 0, self.embedder.device)
            else:
                result = embed_window(self.embedder, prepare_window(self.embedder, window, self.input_type),
                                      self.output)
            results.append(_result_to_json(result))
        return {"result": np.array(results, dtype=object)}


def _unwrap(exc: BaseException) -> BaseException:
    """The E5StudioError inside a Ray task error, if there is one."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, E5StudioError):
            return seen
        seen = getattr(seen, "cause", None) or seen.__cause__
    return exc


class RayExecutor:
    """The :class:`~.runner.WindowExecutor` for ``--engine ray``."""

    executor_name = "ray"

    def __init__(self, options: RayOptions) -> None:
        self.options = options

    def __call__(self, settings: EmbedCorpusSettings, state: ManifestState, progress: EmbedTally) -> int:
        plans = plan_windows(settings.input, settings.window_size)
        done = state.done
        pending = [p for p in plans if p.index not in done]
        if not pending:
            return len(plans)
        import ray
        import ray.data

        started = False
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
            if self.options.address is None and self.options.num_cpus is not None:
                kwargs["num_cpus"] = self.options.num_cpus
            ray.init(address=self.options.address, **kwargs)
            started = True
        try:
            context = ray.data.DataContext.get_current()
            context.enable_progress_bars = False
            opts = self.options
            spec = settings.input
            engine = asdict(settings.engine)
            if engine["threads"] is None and not opts.gpus_per_worker:
                engine["threads"] = max(1, int(opts.cpus_per_worker))  # one torch thread per reserved core
            windows = ray.data.from_items([p.to_json() for p in pending], override_num_blocks=len(pending))
            ds = windows.map_batches(
                WindowEmbedder, batch_size=1, compute=ray.data.ActorPoolStrategy(size=opts.workers),
                num_cpus=opts.cpus_per_worker, num_gpus=opts.gpus_per_worker or None,
                fn_constructor_kwargs={
                    "input": {"path": str(spec.path.resolve()), "format": spec.format,
                              "text_field": spec.text_field, "id_field": spec.id_field},
                    "engine": engine, "input_type": settings.input_type,
                    "output": str(settings.output.resolve()), "bad_records": settings.bad_records,
                })
            try:
                for row in ds.iter_rows():
                    result = _result_from_json(row["result"])
                    if result.rejects and settings.bad_records == "fail":
                        raise bad_records_error(settings.input, result.rejects)
                    state.commit(result)
                    progress.update(result)
            except E5StudioError:
                raise
            except Exception as exc:  # noqa: BLE001 - Ray wraps worker errors; surface ours unwrapped
                inner = _unwrap(exc)
                if inner is not exc:
                    raise inner from None
                raise
        finally:
            if started:
                ray.shutdown()
        return len(plans)
