"""A Parquet table that grows by appending parts: each flush costs the new rows, not the file.

A run's ``metrics.parquet`` / ``updates.parquet`` / ``rounds.parquet`` used to be rewritten whole
at every flush (copy every earlier row group, add the new rows, rename): quadratic I/O over a long
run. A :class:`PartLog` writes each flush as a new part file in a hidden folder beside the table
(``.metrics.parquet.parts/part-g<generation>-<lo>-<hi>.parquet``, written to a temporary name and renamed, so a
crash between flushes leaves every part complete and readable), and :meth:`PartLog.compact`, run
when the run ends, folds the parts into the one file users read (the layout of earlier versions).

Parts are merged as they accumulate in the way of a binary counter (the last two parts merge while
the older one is at most twice the newer's size), so a run of any length holds O(log n) parts and
each row is rewritten O(log n) times. A part's name gives the range of appends it holds; a merge
writes the merged part before it deletes the two it replaces, and a reader skips a part whose
range another part covers, so a crash during a merge loses nothing and duplicates nothing.

Each compaction starts a new *generation*, recorded in the compacted file's metadata and in the
names of the parts written after it; a reader takes only the parts of the file's generation, so
parts left behind (a copy of the run folder on a storage URI keeps what the local folder has
deleted) never come back as duplicated rows.

Reading (:meth:`PartLog.table`) goes through ``pyarrow.dataset``-style schema unification: a
column that appears in a later part (the first evaluation's ``eval/accuracy``) is null before it,
and an int column that meets floats becomes float.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

ROW_GROUP_ROWS = 16_384  # rows per Parquet row group
READ_RETRIES = 20  # listings of the parts a reader tries while a writer merges them
_PART = re.compile(r"^part-g(\d{6})-(\d{8})-(\d{8})\.parquet$")
_GENERATION = b"rayfl.partlog.generation"


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Rows (dicts; a key missing from a row is a null there) as a table, columns in first-seen
    order."""
    columns: dict[str, None] = {}
    for r in rows:
        for key in r:
            columns.setdefault(key, None)
    return pa.table({c: [r.get(c) for r in rows] for c in columns})


def write_parquet(path: Path, table: pa.Table, generation: int | None = None) -> None:
    """Writes ``table`` to ``path`` atomically (a temporary file, then a rename); with
    ``generation``, records it in the file's metadata (see :class:`PartLog`)."""
    if generation is not None:
        meta = {**(table.schema.metadata or {}), _GENERATION: str(generation).encode()}
        table = table.replace_schema_metadata(meta)
    tmp = path.with_name(f".{path.name}.tmp")
    pq.write_table(table, tmp, row_group_size=ROW_GROUP_ROWS)
    os.replace(tmp, path)


def unify(tables: Sequence[pa.Table]) -> pa.Table:
    """One table from parts whose columns may differ (missing ones null, ints meeting floats
    become floats), in the order given."""
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return pa.table({})
    schema = pa.unify_schemas([t.schema for t in tables], promote_options="permissive")
    return pa.concat_tables([_conform(t, schema) for t in tables])


def _conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """``table`` with ``schema``'s columns, in its order and types (missing ones all null)."""
    columns = [
        table[f.name].cast(f.type) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


class PartLog:
    """The table at ``path`` plus the parts appended since it was last compacted."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.parts_dir = self.path.with_name(f".{self.path.name}.parts")

    # --- writing -------------------------------------------------------------------------------

    def append(self, rows: Sequence[Mapping[str, Any]]) -> None:
        """Writes ``rows`` as a new part (O(len(rows)) I/O, amortised O(log n) merges)."""
        if not rows:
            return
        self.parts_dir.mkdir(exist_ok=True)
        parts = self._parts()
        n = parts[-1][1] + 1 if parts else 0
        write_parquet(self._part_path(n, n), rows_table(rows))
        self._merge_tail()

    def _merge_tail(self) -> None:
        parts = self._parts()
        while len(parts) >= 2:
            (lo_a, _, a), (_, hi_b, b) = parts[-2], parts[-1]
            rows_a, rows_b = pq.read_metadata(a).num_rows, pq.read_metadata(b).num_rows
            if rows_a > 2 * rows_b:
                return
            merged = unify([pq.read_table(a), pq.read_table(b)])
            write_parquet(self._part_path(lo_a, hi_b), merged)  # before the two go
            a.unlink()
            b.unlink()
            parts = self._parts()

    def compact(self) -> None:
        """Folds every part into the table at ``path`` and removes the parts folder."""
        if not self._parts():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return
        write_parquet(self.path, self.table(), self.generation() + 1)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    def trim(self, column: str, before: int) -> None:
        """Drops every row whose ``column`` is ``before`` or more (a resumed run's rows after its
        checkpoint); leaves the table compacted."""
        table = self.table()
        if table.num_rows and column in table.column_names:
            keep = pc.less(table[column], before)
            if not pc.all(keep).as_py():
                table = table.filter(keep)
        if table.num_columns:
            write_parquet(self.path, table, self.generation() + 1)
        shutil.rmtree(self.parts_dir, ignore_errors=True)

    # --- reading -------------------------------------------------------------------------------

    def table(self) -> pa.Table:
        """The whole table: the compacted file, then the parts in append order.

        Safe to call while a run writes: a merge or compaction that deletes a part between the
        listing and the read makes it list again (the merged part or the file holds its rows)."""
        for _ in range(READ_RETRIES):
            try:
                tables = [pq.read_table(self.path)] if self.path.is_file() else []
                tables += [pq.read_table(p) for _, _, p in self._parts()]
                return unify(tables)
            except FileNotFoundError:
                continue
        raise RuntimeError(f"{self.path}: its parts kept changing while being read; retry")

    def rows(self) -> list[dict[str, Any]]:
        """The rows as dicts without their null entries (as they were written)."""
        return [{k: v for k, v in r.items() if v is not None} for r in self.table().to_pylist()]

    def last(self, column: str) -> Any:
        """The largest ``column`` value on disk (None if nothing is): appends come in increasing
        order, so the newest part (or the file) holds it."""
        parts = self._parts()
        path = parts[-1][2] if parts else self.path
        if not path.is_file():
            return None
        values = pq.read_table(path, columns=[column])[column]
        return pc.max(values).as_py() if len(values) else None

    def exists(self) -> bool:
        return self.path.is_file() or bool(self._parts())

    def generation(self) -> int:
        """The compacted file's generation (0 without a file or a recorded one)."""
        if not self.path.is_file():
            return 0
        meta = pq.read_schema(self.path).metadata or {}
        return int(meta.get(_GENERATION, b"0"))

    # --- parts ---------------------------------------------------------------------------------

    def _part_path(self, lo: int, hi: int) -> Path:
        return self.parts_dir / f"part-g{self.generation():06d}-{lo:08d}-{hi:08d}.parquet"

    def _parts(self) -> list[tuple[int, int, Path]]:
        """The live parts in order; a part covered by a wider one (a merge that crashed before
        deleting its inputs) is skipped."""
        if not self.parts_dir.is_dir():
            return []
        generation = self.generation()
        found = []
        for p in self.parts_dir.iterdir():
            m = _PART.match(p.name)
            if m and int(m.group(1)) == generation:  # older generations are in the file
                found.append((int(m.group(2)), -int(m.group(3)), p))
        found.sort()
        out: list[tuple[int, int, Path]] = []
        for lo, neg_hi, p in found:
            if out and lo <= out[-1][1]:
                continue  # inside the previous (wider) part's range
            out.append((lo, -neg_hi, p))
        return out
