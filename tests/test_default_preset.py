"""The default experiment (`rayfl run`, preset akafl-rj) learns, and its judgement does what it
is for: reject the occasional bad candidate near convergence, not hold the model back.

With the paper-size judgement schedule the quick preset's judgement started on the early chance
plateau on some CPUs and then kept the previous model for 754 of 1,200 iterations (final
0.8784); the preset now scales the schedule to T = 1,200 (issue 15, item 2; docs/reproduction.md
"Judgement in the default run"). This runs the preset as shipped, the same run as the README's
first command: it is the one test of the full default size. Not at a reduced size, because there
it tests nothing: at T = 600 (the schedule scaled the same way, eval_every 6) judgement never
started (measured 2026-12-02; the run is the first 600 iterations of the default one, 0.9044 at
the end): D_t < eps_m holds only once the model has converged, from about iteration 1,000 on.
"""

from __future__ import annotations

import pytest

import rayfl
from rayfl.cli import DEFAULT_PRESET

# "A small share": the paper keeps 138 of 5,000 models (2.8 %); the shipped preset kept 12 of
# the 181 iterations after judgement started (6.6 %) on this repository's machine. The failure
# this guards against kept 754 of 1,200.
MAX_MAINTAINED_SHARE = 0.15


@pytest.mark.slow
def test_default_preset_learns_and_judgement_keeps_a_small_share(ray_session, tmp_path):
    assert DEFAULT_PRESET == "akafl-rj"
    result = rayfl.run(DEFAULT_PRESET, output=tmp_path / "default", progress=False)
    summary = result.summary
    assert summary["iterations"] == result.config.iterations
    assert result.final_accuracy >= 0.9, summary

    metrics = result.metrics.to_pandas()
    active = metrics[metrics["judge/active"] == 1.0]
    judgement = result.config.aggregation.control["judgement"]
    earliest = judgement["t_min_fraction"] * result.config.iterations
    if len(active):  # it may not start at all: then it cannot hold the model back either
        assert active["iteration"].min() >= earliest
        assert summary["maintained"] <= MAX_MAINTAINED_SHARE * len(active), summary
    assert summary["maintained"] == 0 or len(active)
