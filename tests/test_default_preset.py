"""The default experiment (`rayfl run`, preset akafl-rj) learns: at least 90 % test accuracy."""

from __future__ import annotations

import pytest

import rayfl
from rayfl.cli import DEFAULT_PRESET


@pytest.mark.slow
def test_default_preset_reaches_90_percent(ray_session, tmp_path):
    assert DEFAULT_PRESET == "akafl-rj"
    result = rayfl.run(DEFAULT_PRESET, output=tmp_path / "default", progress=False)
    assert result.summary["iterations"] == result.config.iterations
    assert result.final_accuracy >= 0.90, result.summary
