"""Golden metrics: every shipped preset, at a small size on the virtual clock, still gives the
results recorded from the code before a change (tests/golden/<preset>.json).

A safety net for refactors of the runtime. The run sizes, what is compared exactly and what with
a tolerance, and why: tests/golden/rayfl_golden.py. A deliberate change of results is recorded
again, on the code before it, with tests/golden/record.py.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

import pytest

import rayfl

sys.path.insert(0, str(Path(__file__).resolve().parent / "golden"))
import rayfl_golden as golden  # noqa: E402


@pytest.mark.parametrize("preset", rayfl.preset_names())
def test_preset_matches_its_golden(preset, ray_session, tmp_path):
    path = golden.golden_path(preset)
    if not path.is_file():
        pytest.fail(
            f"preset {preset!r} has no golden ({path}): record it on the code before your "
            f"change: {golden.RECORD_HINT} {preset}",
            pytrace=False,
        )
    expected = golden.read_golden(path)
    assert expected["format"] == golden.FORMAT, f"{path.name}: old format, record it again"
    observed = golden.run_preset(preset, tmp_path / preset)
    differs = golden.fingerprint_differences(expected["fingerprint"], golden.fingerprint())
    if differs:
        warnings.warn(
            f"{preset}: the final weights' sha256 is not compared: this machine's kernel "
            f"fingerprint differs from the recorded one in {', '.join(differs)}",
            stacklevel=1,
        )
    problems = golden.compare(expected, observed, same_kernels=not differs)
    if problems:
        pytest.fail(
            f"preset {preset!r} differs from its golden {path.name} (recorded from "
            f"{expected['recorded_from'][:12]}, overrides {' '.join(observed['overrides'])}):\n  "
            + "\n  ".join(problems)
            + f"\nIf the change is intended, record again: {golden.RECORD_HINT} {preset}",
            pytrace=False,
        )


def test_every_golden_belongs_to_a_preset():
    orphans = sorted(
        p.name for p in golden.GOLDEN_DIR.glob("*.json") if p.stem not in rayfl.preset_names()
    )
    assert not orphans, f"goldens of presets that no longer exist: {orphans}: delete them"
