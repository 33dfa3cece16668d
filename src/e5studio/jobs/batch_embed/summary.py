"""The summary of an embed-corpus run: vectors, shards, model, this run's throughput, rejects, index, sinks."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from e5studio.jobspec.layout import INDEX_DIR, REJECTS_FILE


@dataclass(frozen=True)
class EmbedCorpusResult:
    """What a run did, for the summary printed at its end."""

    output: Path
    manifest: dict[str, Any]
    run: dict[str, Any]
    sinks: list[dict[str, Any]]

    def summary(self) -> str:
        m, run = self.manifest, self.run
        rejects = m["rejects"]
        lines = [
            f"embed-corpus: {m['count']:,} vectors (dim {m['dim']}) in "
            f"{sum(1 for s in m['shards'] if s.get('file'))} shard(s) -> {self.output}",
            f"  model {m['model']['name']} (sha256 {m['model']['sha256'][:12]}), input type "
            f"{m['settings']['input_type'] or 'none (texts as given)'}, max length {m['settings']['max_length']}",
            (f"  this run ({run['engine']}): {run['passages']:,} passages, {run['tokens']:,} tokens in "
             f"{run['seconds']:.1f} s: {run['passages_per_s']:,.1f} passages/s, {run['tokens_per_s']:,.0f} tokens/s"
             + (f"; resumed at window {run['resumed_at_window']}" if run.get("resumed_at_window") else ""))
            if run["passages"] or not run.get("already_complete")
            else "  this run: nothing to embed (already complete)",
            f"  rejected: {rejects['count']:,} bad record(s)"
            + (f" -> {self.output / REJECTS_FILE} (first: line {rejects['first']['line']}: "
               f"{rejects['first']['reason']})" if rejects["count"] else ""),
        ]
        if m.get("index"):
            lines.append(f"  index: {self.output / INDEX_DIR} ({m['index']['kind']}, {m['index']['count']:,} vectors);"
                         f" search with: e5studio search {self.output} \"query text\"")
        for sink in self.sinks:
            lines.append(f"  sink {sink['sink']}: {sink['inserted']:,} inserted, {sink['updated']:,} updated, "
                         f"{sink['unchanged']:,} unchanged; table {sink['table']} has {sink['rows']:,} rows")
        return "\n".join(lines)
