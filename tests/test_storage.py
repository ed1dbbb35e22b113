"""Run folders on a storage URI (pyarrow filesystems): written, resumed, bad URIs refused."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest

import rayfl


def test_a_run_writes_to_a_uri_and_resumes_from_it(ray_session, tmp_path):
    uri = f"file://{tmp_path}/bucket/runs/one"
    overrides = ["client.num_workers=2", "iterations=20", "checkpoint_every=10"]
    result = rayfl.run("tiny", overrides=overrides, output=uri, progress=False)
    target = tmp_path / "bucket" / "runs" / "one"
    names = {p.name for p in target.iterdir()}
    assert {
        "config.yaml",
        "metrics.parquet",
        "updates.parquet",
        "summary.json",
        "model.pt",
        "checkpoint.npz",
    } <= names
    assert result.summary["storage"] == uri
    assert len(pq.read_table(target / "metrics.parquet")) == 20

    longer = rayfl.run(resume=uri, overrides=["iterations=30"], progress=False)
    assert len(pq.read_table(target / "metrics.parquet")) == 30
    assert longer.summary["iterations"] == 30

    with pytest.raises(rayfl.RayflError, match="already holds a run"):
        rayfl.run("tiny", overrides=overrides, output=uri, progress=False)


def test_an_unusable_uri_is_a_one_line_error(tmp_path):
    with pytest.raises(rayfl.RayflError, match="not usable") as e:
        rayfl.run("tiny", output="nosuchscheme://bucket/x", progress=False)
    assert "\n" not in str(e.value)
    with pytest.raises(rayfl.RayflError, match="no such folder"):
        rayfl.run(resume=f"file://{tmp_path}/missing", progress=False)
