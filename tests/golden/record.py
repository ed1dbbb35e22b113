"""Records the golden results of the shipped presets: tests/golden/<preset>.json.

Record from PRISTINE code (the goldens are what the code did before a change), from outside the
working tree, with the pristine checkout first on the path:

    cd /tmp && PYTHONPATH=/path/to/pristine-rayfl python /work/main/tests/golden/record.py [PRESET ...]

Without PRESET it records every preset of ``rayfl presets``. It refuses a checkout whose rayfl/
has uncommitted changes (``--allow-dirty`` records anyway). It starts Ray like the tests'
``ray_session`` (2 CPUs, 1 pretend GPU) and checks that Ray's workers import the same rayfl.
For each preset it prints how far the run's threshold decisions were from flipping (judgement,
adaptive K's rounding, pow-d's loss ranking): the goldens hold on other CPUs
only if those margins dwarf the float drift between kernels (1e-7 to 1e-4 relative).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import rayfl_golden as golden  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("presets", nargs="*", help="presets to record (default: all)")
    parser.add_argument(
        "--allow-dirty", action="store_true", help="record from a rayfl/ with uncommitted changes"
    )
    args = parser.parse_args(argv)

    import rayfl

    root = Path(rayfl.__file__).resolve().parent.parent
    commit, dirty = _git_state(root)
    print(f"recording from rayfl at {root} (commit {commit})")
    if dirty and not args.allow_dirty:
        print(f"rayfl/ in {root} has uncommitted changes:\n{dirty}\nrecord from pristine code")
        return 2
    names = args.presets or rayfl.preset_names()
    unknown = sorted(set(names) - set(rayfl.preset_names()))
    if unknown:
        print(f"no such preset: {', '.join(unknown)} (see `rayfl presets`)")
        return 2

    # Ray's workers must import this rayfl too: they inherit PYTHONPATH from the driver.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(root), os.environ.get("PYTHONPATH")) if p
    )
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    import ray

    ray.init(num_cpus=2, num_gpus=1, include_dashboard=False, logging_level="ERROR")
    try:
        remote = ray.get(ray.remote(_rayfl_location).remote())
        if Path(remote).resolve() != Path(rayfl.__file__).resolve():
            print(f"Ray's workers import {remote}, not {rayfl.__file__}: fix PYTHONPATH")
            return 2
        fp = golden.fingerprint()
        with tempfile.TemporaryDirectory() as tmp:
            for name in names:
                started = time.perf_counter()
                observed = golden.run_preset(name, Path(tmp) / name)
                record = {
                    "format": golden.FORMAT,
                    "preset": name,
                    "recorded_from": commit,
                    "overrides": observed["overrides"],
                    "fingerprint": fp,
                    "weights": observed["weights"],
                    "summary": observed["summary"],
                    **{t: observed[t] for t in golden.TABLES if t in observed},
                }
                path = golden.golden_path(name)
                golden.write_golden(record, path)
                took = time.perf_counter() - started
                print(f"{name}: {took:.1f} s, {path.stat().st_size / 1024:.0f} KiB -> {path}")
                for line in margins(observed):
                    print(f"    {line}")
    finally:
        ray.shutdown()
    return 0


def _rayfl_location() -> str:
    import rayfl

    return rayfl.__file__


def _git_state(root: Path) -> tuple[str, str]:
    """(commit, uncommitted changes under rayfl/) of the checkout at ``root``."""

    def git(*args: str) -> str:
        try:
            return subprocess.run(
                ["git", "-C", str(root), *args], capture_output=True, text=True, check=True
            ).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return ""

    return git("rev-parse", "HEAD") or "unknown", git("status", "--porcelain", "--", "rayfl")


# --- how far the threshold decisions were from flipping ----------------------------------------


def margins(observed: dict[str, Any]) -> list[str]:
    """One line per kind of threshold decision the run took, with its smallest margin."""
    out = []
    m = observed.get("metrics", {})
    rows = [dict(zip(m, values, strict=True)) for values in zip(*m.values(), strict=True)]
    # judgement: keep w_t iff acc < A_{t-1} - theta_t, once active
    ewma, active, keep_margins = None, False, []
    for r in rows:
        acc = r.get("judge/accuracy")
        if acc is None:
            continue
        if active and ewma is not None:
            keep_margins.append(abs(acc - (ewma - r["judge/tolerance"])))
        ewma, active = r["judge/ewma"], r["judge/active"] == 1.0
    if keep_margins:
        out.append(
            f"judgement: {len(keep_margins)} accept/reject decisions, smallest "
            f"|acc - (ewma - tolerance)| = {min(keep_margins):.3g}"
        )
    # adaptive K: K = round(k_real)
    k_real = [r["agg/k_real"] for r in rows if r.get("agg/k_real") is not None]
    if k_real:
        closest = min(abs(k - math.floor(k) - 0.5) for k in k_real)
        out.append(
            f"adaptive K: smallest distance of k_real to a rounding boundary = {closest:.3g}"
        )
    rounds = observed.get("rounds", {})
    # pow-d: the M lossiest of the d candidates train
    gaps = []
    for losses, m_sel in zip(rounds.get("candidate_losses", []), rounds.get("m", []), strict=True):
        s = sorted(losses, reverse=True)
        if len(s) > m_sel:
            gaps.append(s[m_sel - 1] - s[m_sel])
    if gaps:
        out.append(f"pow-d: smallest loss gap at the M-th candidate = {min(gaps):.3g}")
    return out


if __name__ == "__main__":
    sys.exit(main())
