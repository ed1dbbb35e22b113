"""A K-async run with the chain on the torch backend (aggregation.backend=torch, on the CPU here;
on a GPU server the same code runs on its device), on a real Ray.

The chain here has no threshold (K-async's mean and FedAdam), so the virtual clock makes the
same discrete decisions on both backends and only the floats may differ (another summation
order); a resumed torch run must equal an unbroken one bit for bit, its optimizer state having
gone through a numpy checkpoint.
"""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

import rayfl
from rayfl.runtime.checkpoint import read_checkpoint

OVERRIDES = [
    "iterations=48",
    "eval.every=16",
    "client.num_workers=2",
    "aggregation.rules=[mean, weighted_sum, constant_lr]",
    "aggregation.optimizer={fedadam: {tau: 0.01}}",
    "aggregation.lr=0.01",
]
EXACT = ["iteration", "agg/k", "agg/staleness_mean", "agg/staleness_max", "sys/virtual_time"]


class Stop(KeyboardInterrupt):
    """Ctrl-C, as the driver sees it."""


def _run(tmp_path, name, backend, **kwargs):
    overrides = [*OVERRIDES, f"aggregation.backend={backend}", *kwargs.pop("more", [])]
    return rayfl.run("tiny", overrides=overrides, output=tmp_path / name, progress=False, **kwargs)


def test_torch_backend_matches_numpy_and_resumes_bit_identically(ray_session, tmp_path):
    on_numpy = _run(tmp_path, "numpy", "numpy")
    on_torch = _run(tmp_path, "torch", "torch")
    assert on_numpy.summary["aggregation_backend"] == "numpy"
    assert on_torch.summary["aggregation_backend"] == "torch (cpu)"
    a, b = on_numpy.metrics.to_pandas(), on_torch.metrics.to_pandas()
    for column in EXACT:
        assert a[column].tolist() == b[column].tolist(), column
    np.testing.assert_allclose(b["train/loss"], a["train/loss"], rtol=1e-4)
    np.testing.assert_allclose(on_torch.weights, on_numpy.weights, rtol=1e-3, atol=1e-5)

    def ctrl_c(rows):
        if rows[-1]["iteration"] >= 2:
            raise Stop

    broken = tmp_path / "broken"
    with pytest.raises(Stop):
        _run(tmp_path, "broken", "torch", more=["checkpoint_every=50"], callback=ctrl_c)
    assert read_checkpoint(broken)["t"] < 48  # it stopped early: the resume has work to do
    resumed = rayfl.run("tiny", resume=broken, progress=False)
    assert resumed.weights.tobytes() == on_torch.weights.tobytes()
    metrics = pq.read_table(broken / "metrics.parquet").to_pandas()
    assert list(metrics["iteration"]) == list(range(48))
