"""Fine-tuning datasets: each registered version of a named dataset, with its counts and checksums."""

from __future__ import annotations

from dataclasses import asdict, dataclass

import sqlalchemy as sa

from e5studio.control.database import Database, as_lookup, check_name, new_id, now
from e5studio.control.schema import datasets
from e5studio.errors import InputError, NotFoundError


@dataclass(frozen=True)
class Dataset:
    """One registered version of a fine-tuning dataset (passages.jsonl + train.jsonl in ``path``)."""

    id: str
    name: str
    version: int
    path: str
    description: str
    passages: int
    queries: int
    positives: int
    negatives: int
    passages_sha256: str
    train_sha256: str
    parent_id: str | None
    created_at: str

    @property
    def ref(self) -> str:
        """``name@version``, accepted wherever a dataset is named."""
        return f"{self.name}@{self.version}"


def _dataset(row: sa.RowMapping) -> Dataset:
    return Dataset(**{str(k): v for k, v in row.items()})


_D = datasets.c


class DatasetTable(Database):
    def add_dataset(self, name: str, path: str, *, passages: int, queries: int, positives: int, negatives: int,
                    passages_sha256: str, train_sha256: str, parent_id: str | None = None,
                    description: str = "") -> Dataset:
        """Record a validated dataset as the next version of ``name`` (version 1 for a new name).

        Registering the same files (path and both checksums) as the newest version returns that version.
        """
        check_name("dataset", name)
        with self._write() as conn:
            latest = conn.execute(sa.select(datasets).where(_D.name == name).order_by(_D.version.desc())
                                  .limit(1)).mappings().first()
            if latest is not None and (latest["path"], latest["passages_sha256"], latest["train_sha256"]) == (
                    path, passages_sha256, train_sha256):
                return _dataset(latest)
            dataset = Dataset(id=new_id(), name=name, version=(latest["version"] + 1) if latest else 1, path=path,
                              description=description, passages=passages, queries=queries, positives=positives,
                              negatives=negatives, passages_sha256=passages_sha256, train_sha256=train_sha256,
                              parent_id=parent_id, created_at=now())
            conn.execute(datasets.insert().values(**asdict(dataset)))
        return dataset

    def get_dataset(self, ref: str) -> Dataset:
        """A dataset by id, by ``name@version``, or by name (its newest version)."""
        name, _, version = ref.rpartition("@") if "@" in ref else (ref, "", "")
        newest = sa.select(datasets).where(_D.name == as_lookup(name)).order_by(_D.version.desc()).limit(1)
        with self._read() as conn:
            row = conn.execute(sa.select(datasets).where(_D.id == as_lookup(ref))).mappings().first()
            if row is None and version:
                if not version.isdigit():
                    raise InputError(f"dataset reference {ref!r}: the version after '@' must be a number")
                row = conn.execute(sa.select(datasets).where(_D.name == as_lookup(name), _D.version == int(version))
                                   ).mappings().first()
            elif row is None:
                row = conn.execute(newest).mappings().first()
        if row is None:
            raise NotFoundError(f"dataset {ref!r} not found: record one with `e5studio datasets add NAME DIR` "
                                "(or on the web UI's Datasets page; `e5studio datasets list` shows those recorded)")
        return _dataset(row)

    def list_datasets(self) -> list[Dataset]:
        """Every version of every dataset, by name then version."""
        return [_dataset(row) for row in self._read_all(sa.select(datasets).order_by(_D.name, _D.version))]
