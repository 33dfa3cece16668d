"""Write the small retrieval sample that ``e5studio precision-check`` scores nDCG@10 on, derived from SciFact
(CC BY-NC 2.0, Wadden et al. 2020): 50 test queries, their relevant abstracts and 250 others, each abstract cut
to its first 700 characters. The shared data itself is never committed; this derived sample is small.

    python scripts/make_precision_sample.py /work/shared/data/scifact src/e5studio/retrieval/precision_sample
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

QUERIES, DISTRACTORS, CUT = 50, 250, 700


def main(source: Path, target: Path) -> None:
    passages = [json.loads(line)["contents"] for line in (source / "passages.jsonl").open(encoding="utf-8")]
    queries = {str(q["qid"]): q["query"] for q in map(json.loads, (source / "queries.test.jsonl").open())}
    qrels: dict[str, list[int]] = {}
    for line in (source / "qrels.test.tsv").open(encoding="utf-8"):
        qid, doc, grade = line.rstrip("\n").split("\t")
        if int(grade) > 0 and qid in queries:
            qrels.setdefault(qid, []).append(int(doc))
    chosen = sorted(qrels, key=int)[:QUERIES]
    relevant = sorted({d for q in chosen for d in qrels[q]})
    rng = random.Random(0)
    others = rng.sample(sorted(set(range(len(passages))) - set(relevant)), DISTRACTORS)
    kept = sorted(relevant + others)
    line_of = {doc: i for i, doc in enumerate(kept)}
    target.mkdir(parents=True, exist_ok=True)
    with (target / "passages.jsonl").open("w", encoding="utf-8") as f:
        for doc in kept:
            f.write(json.dumps({"contents": passages[doc][:CUT]}) + "\n")
    with (target / "queries.test.jsonl").open("w", encoding="utf-8") as f:
        for qid in chosen:
            f.write(json.dumps({"qid": qid, "query": queries[qid]}) + "\n")
    with (target / "qrels.test.tsv").open("w", encoding="utf-8") as f:
        for qid in chosen:
            for doc in qrels[qid]:
                f.write(f"{qid}\t{line_of[doc]}\t1\n")
    (target / "SOURCE.md").write_text(
        "Derived from SciFact (Wadden et al. 2020, CC BY-NC 2.0) by scripts/make_precision_sample.py: 50 test "
        "queries, their relevant abstracts and 250 others, each cut to 700 characters.\n", encoding="utf-8")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
