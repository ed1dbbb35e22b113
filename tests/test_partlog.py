"""PartLog: appends cost the new rows, every part is a complete file, merges keep O(log n) parts,
and neither a crash during a merge nor parts left from an older generation duplicate a row."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pytest

from rayfl.partlog import PartLog, rows_table, write_parquet


def rows(start: int, stop: int) -> list[dict]:
    return [{"iteration": t, "loss": 1.0 / (t + 1)} for t in range(start, stop)]


def test_appends_hold_log_n_parts_and_read_back_in_order(tmp_path):
    log = PartLog(tmp_path / "m.parquet")
    for start in range(0, 1000, 10):
        log.append(rows(start, start + 10))
        assert len(log._parts()) <= 10  # ~log2(100 appends) + 1
    assert [r["iteration"] for r in log.rows()] == list(range(1000))
    for _, _, part in log._parts():
        pq.read_table(part)  # each part is a complete Parquet file on its own
    log.compact()
    assert not log.parts_dir.exists()
    assert pq.read_table(tmp_path / "m.parquet").column("iteration").to_pylist() == list(
        range(1000)
    )


def test_late_columns_and_ints_meeting_floats(tmp_path):
    log = PartLog(tmp_path / "m.parquet")
    log.append([{"iteration": 0, "lr": 1}])
    log.append([{"iteration": 1, "lr": 0.5, "acc": 0.9}])
    table = log.table()
    assert table.column("lr").to_pylist() == [1.0, 0.5]
    assert table.column("acc").to_pylist() == [None, 0.9]


def test_a_merge_that_crashed_before_deleting_its_inputs_duplicates_nothing(tmp_path):
    log = PartLog(tmp_path / "m.parquet")
    log.append(rows(0, 8))
    log.append(rows(8, 16))  # merged with the first: one part 0-1
    (merged,) = [p for _, _, p in log._parts()]
    # what a crash between writing a merge and deleting its inputs leaves: inputs beside it
    write_parquet(
        log.parts_dir / merged.name.replace("00000000-00000001", "00000000-00000000"),
        rows_table(rows(0, 8)),
    )
    write_parquet(
        log.parts_dir / merged.name.replace("00000000-00000001", "00000001-00000001"),
        rows_table(rows(8, 16)),
    )
    assert [r["iteration"] for r in log.rows()] == list(range(16))


def test_parts_of_an_older_generation_are_ignored(tmp_path):
    log = PartLog(tmp_path / "m.parquet")
    log.append(rows(0, 5))
    stale = tmp_path / "stale"
    shutil.copytree(log.parts_dir, stale)
    log.compact()
    assert log.generation() == 1
    shutil.copytree(stale, log.parts_dir)  # e.g. pulled back from a storage URI's copy
    log.append(rows(5, 7))
    assert [r["iteration"] for r in log.rows()] == list(range(7))


def test_trim_drops_late_rows_and_compacts(tmp_path):
    log = PartLog(tmp_path / "m.parquet")
    for start in range(0, 30, 3):
        log.append(rows(start, start + 3))
    log.trim("iteration", 11)
    assert not log.parts_dir.exists()
    assert [r["iteration"] for r in log.rows()] == list(range(11))
    log.append(rows(11, 13))
    assert [r["iteration"] for r in log.rows()] == list(range(13))


@pytest.mark.parametrize("n", [0, 1])
def test_empty_logs(tmp_path, n):
    log = PartLog(tmp_path / "m.parquet")
    for _ in range(n):
        log.append([])
    assert log.rows() == [] and not log.exists()
    log.compact()
    assert not (tmp_path / "m.parquet").exists()


def test_a_reader_sees_a_prefix_while_a_writer_merges_parts(tmp_path):
    """Reading a run's table while it is written (a user watching metrics.parquet, a test waiting
    for rows): a merge deleting a part between the reader's listing and its read is retried."""
    import threading
    import time

    path = tmp_path / "m.parquet"
    writer_log, reader_log = PartLog(path), PartLog(path)
    done = threading.Event()

    def write() -> None:  # an append every few ms: a run flushes at most every 5 s
        for start in range(0, 3000, 5):
            writer_log.append(rows(start, start + 5))
            time.sleep(0.003)
        done.set()

    thread = threading.Thread(target=write)
    thread.start()
    seen = 0
    try:
        while not done.is_set():
            if not reader_log.exists():
                continue
            got = reader_log.table().column("iteration").to_pylist()
            assert got == list(range(len(got)))  # a prefix, never a duplicate or a gap
            assert len(got) >= seen
            seen = len(got)
    finally:
        thread.join()
    assert seen > 0
