"""RunLog: rows go to disk as they come, append atomically, and truncate for a resumed run."""

from __future__ import annotations

import pyarrow.parquet as pq

from rayfl.metrics import METRICS_FILE, UPDATES_FILE, RunLog, read_rows


def _rows(start: int, stop: int) -> tuple[list[dict], list[dict]]:
    metrics = []
    updates = []
    for t in range(start, stop):
        row = {"iteration": t, "agg/k": 2, "train/loss": 1.0 / (t + 1)}
        if t % 3 == 0:
            row["eval/accuracy"] = t / 100
        metrics.append(row)
        updates += [{"iteration": t, "client_id": c, "staleness": t % 2} for c in range(2)]
    return metrics, updates


def test_flush_appends_and_keeps_only_pending_rows(tmp_path):
    log = RunLog(tmp_path)
    for start in range(0, 30, 10):
        log.extend(*_rows(start, start + 10))
        assert log.flush()
        assert log._metrics == [] and log._updates == []  # nothing kept once on disk
    metrics, updates = _rows(0, 30)
    assert read_rows(tmp_path / METRICS_FILE) == metrics  # nulls dropped again, order kept
    assert read_rows(tmp_path / UPDATES_FILE) == updates
    assert log.rows() == metrics
    assert log.iterations_done == 30
    assert log.last == metrics[-1]
    assert log.last_eval()["iteration"] == 27


def test_columns_that_appear_later_and_ints_that_meet_floats(tmp_path):
    log = RunLog(tmp_path)
    log.extend([{"iteration": 0, "agg/lr": 1}], [])  # no eval column yet; lr an int
    log.flush()
    log.extend([{"iteration": 1, "agg/lr": 0.5, "eval/accuracy": 0.9}], [])
    log.flush()
    log.compact()  # the run's end: one file, as users read it
    table = pq.read_table(tmp_path / METRICS_FILE)
    assert table.column("agg/lr").to_pylist() == [1.0, 0.5]
    assert table.column("eval/accuracy").to_pylist() == [None, 0.9]


def test_unforced_flush_backs_off(tmp_path):
    log = RunLog(tmp_path)
    log.extend(*_rows(0, 5))
    assert log.flush(force=False)  # the first one always goes
    log.extend(*_rows(5, 10))
    assert not log.flush(force=False)  # less than 5 s later: skipped, rows kept
    assert len(read_rows(tmp_path / METRICS_FILE)) == 5
    assert len(log.rows()) == 10
    assert log.flush()


def test_load_truncates_to_the_checkpoint(tmp_path):
    log = RunLog(tmp_path)
    log.extend(*_rows(0, 20))
    log.flush()
    resumed = RunLog(tmp_path)
    resumed.load(before_iteration=12)
    assert [r["iteration"] for r in read_rows(tmp_path / METRICS_FILE)] == list(range(12))
    assert {r["iteration"] for r in read_rows(tmp_path / UPDATES_FILE)} == set(range(12))
    assert resumed.iterations_done == 12
    assert resumed.last["iteration"] == 11
    assert resumed.last_eval()["iteration"] == 9
    resumed.extend(*_rows(12, 15))
    resumed.flush()
    assert read_rows(tmp_path / METRICS_FILE) == _rows(0, 15)[0]


def test_trim_drops_pending_and_written_rows(tmp_path):
    log = RunLog(tmp_path)
    log.extend(*_rows(0, 6))
    log.flush()
    log.extend(*_rows(6, 9))
    log.trim(4)
    log.flush()
    assert [r["iteration"] for r in read_rows(tmp_path / METRICS_FILE)] == [0, 1, 2, 3]
    assert log.iterations_done == 4
    assert log.last["iteration"] == 3


def test_load_of_a_run_without_files(tmp_path):
    log = RunLog(tmp_path)
    log.load(before_iteration=0)
    assert log.rows() == [] and log.last is None and log.iterations_done == 0


def test_compaction_leaves_one_file_per_table(tmp_path):
    log = RunLog(tmp_path)
    for start in range(0, 35, 5):
        rows = [{"iteration": t, "x": t} for t in range(start, start + 5)]
        if start >= 20:  # a column that appears after the first parts are written
            for r in rows:
                r["y"] = 0.5
        log.extend(rows, [{"iteration": start, "client_id": 0}])
        log.flush()
    assert not (tmp_path / METRICS_FILE).exists()  # parts only, until the run ends
    assert log.rows() == read_rows(tmp_path / METRICS_FILE)
    log.compact()
    assert sorted(p.name for p in tmp_path.iterdir()) == [METRICS_FILE, UPDATES_FILE]
    table = pq.read_table(tmp_path / METRICS_FILE)
    assert table.column("iteration").to_pylist() == list(range(35))
    assert table.column("y").to_pylist() == [None] * 20 + [0.5] * 15


def test_a_flush_interrupted_after_its_append_duplicates_nothing(tmp_path):
    """SIGTERM arrives as a KeyboardInterrupt at any point: between a part's append and the
    clear of the pending rows, the rows are on disk and still pending."""
    log = RunLog(tmp_path)
    log.extend(*_rows(0, 5))
    log.flush()
    log.extend(*_rows(5, 10))
    for name, pending in ((METRICS_FILE, log._metrics), (UPDATES_FILE, log._updates)):
        log.files[name].append(pending)  # the append happened, the clear did not
    log.extend(*_rows(10, 12))
    log.flush()
    assert [r["iteration"] for r in read_rows(tmp_path / METRICS_FILE)] == list(range(12))
    assert len(read_rows(tmp_path / UPDATES_FILE)) == 24
