"""Interrupts end ``rayfl`` with one line: SIGTERM stops a run like Ctrl-C, with exit 143.

Real processes and real signals, no mocks: ``python -m rayfl.cli`` is started, signalled at a
moment the test sees from outside (a file in the run folder, a library mapped into the process)
and its exit code, stderr and run folder are checked. SIGTERM is what Kubernetes, Slurm, spot
preemption and ``ray job stop`` send.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from rayfl import cli as rayfl_cli
from rayfl import interrupts
from rayfl.runtime.checkpoint import read_checkpoint

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


# --- the handler, in this process ---


def deliver(signum: int) -> None:
    """Sends ``signum`` to this process; Python runs its handler at the next bytecode."""
    os.kill(os.getpid(), signum)
    time.sleep(0.5)  # a handler that raises interrupts the sleep


def test_sigterm_raises_terminated_once_then_restore_puts_the_old_handler_back():
    previous = signal.getsignal(signal.SIGTERM)
    restore = interrupts.install()
    try:
        interrupts.install()()  # a second install changes nothing, nor does its restore
        with pytest.raises(interrupts.Terminated):
            deliver(signal.SIGTERM)
        assert interrupts.received() == signal.SIGTERM
        assert interrupts.exit_code() == 143 and interrupts.signal_name() == "SIGTERM"
        deliver(signal.SIGTERM)  # while the graceful stop runs, more SIGTERMs are ignored
    finally:
        restore()
    assert signal.getsignal(signal.SIGTERM) is previous
    # The command line installs it for the length of main() only.
    assert rayfl_cli.main(["presets"]) == 0
    assert signal.getsignal(signal.SIGTERM) is previous


def test_reinstall_takes_sigterm_back_only_for_the_command_line():
    previous = signal.getsignal(signal.SIGTERM)
    seen: list[int] = []

    def rays(signum, frame):  # stands in for the handler ray.init installs
        seen.append(signum)

    try:
        signal.signal(signal.SIGTERM, rays)
        interrupts.reinstall()  # a library caller (no install): its handler stays
        assert signal.getsignal(signal.SIGTERM) is rays and not interrupts.displaced()
        restore = interrupts.install()
        signal.signal(signal.SIGTERM, rays)  # ray.init, after the CLI's install
        assert interrupts.displaced()
        interrupts.reinstall()
        assert not interrupts.displaced()
        with pytest.raises(interrupts.Terminated):
            deliver(signal.SIGTERM)
        assert seen == []
        restore()
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_sigterm_does_what_a_custom_ctrl_c_handler_does():
    """Ray Tune handles Ctrl-C by saving its state and returning: SIGTERM then does the same."""
    previous = signal.getsignal(signal.SIGINT)
    seen: list[int] = []
    signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    restore = interrupts.install()
    try:
        deliver(signal.SIGTERM)  # no exception: the Ctrl-C handler ran instead
        assert seen == [signal.SIGINT] and interrupts.exit_code() == 143
    finally:
        restore()
        signal.signal(signal.SIGINT, previous)


# --- the command line, in a real process ---


class Cli:
    """``python -m rayfl.cli ARGS`` running in the background; stdout and stderr go to files
    (a pipe nobody reads could fill and block it)."""

    def __init__(self, tmp_path: Path, *args: str):
        stamp = time.monotonic_ns()
        self.out_path, self.err_path = tmp_path / f"out-{stamp}.txt", tmp_path / f"err-{stamp}.txt"
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "rayfl.cli", *args], stdout=out, stderr=err
            )

    def wait_until(self, ready, what: str, timeout: float = 180.0) -> None:
        """Polls ``ready()`` every 10 ms; fails if the process exits first or time runs out."""
        deadline = time.monotonic() + timeout
        while not ready():
            if self.proc.poll() is not None:
                pytest.fail(f"rayfl exited ({self.proc.returncode}) before {what}:\n{self.stderr}")
            if time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"no {what} after {timeout} s:\n{self.stderr}")
            time.sleep(0.01)

    def signal_and_wait(self, signum: int, timeout: float = 120.0) -> int:
        self.proc.send_signal(signum)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"rayfl still running {timeout} s after signal {signum}:\n{self.stderr}")

    @property
    def stdout(self) -> str:
        return self.out_path.read_text()

    @property
    def stderr(self) -> str:
        return self.err_path.read_text()

    def maps(self, needle: str) -> bool:
        """True once a file whose path contains ``needle`` is mapped into the process."""
        try:
            return needle in Path(f"/proc/{self.proc.pid}/maps").read_text()
        except OSError:
            return False


@pytest.fixture
def spawn(tmp_path):
    """Starts ``Cli`` processes; any still running at the end of the test is killed."""
    started: list[Cli] = []

    def start(*args: str) -> Cli:
        started.append(Cli(tmp_path, *args))
        return started[-1]

    yield start
    for cli in started:
        if cli.proc.poll() is None:
            cli.proc.kill()
            cli.proc.wait()


def assert_one_line(stderr: str, start: str) -> str:
    """The interrupt's message is the last line and nothing above it is a traceback or a dump."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith(start), stderr
    assert "Traceback" not in stderr, stderr
    assert "SIGTERM received" not in stderr, stderr  # the C++ core worker's stack dump
    assert "SIGINT received" not in stderr, stderr
    return lines[-1]


def run_args(run_dir: Path, *extra: str, iterations: int = 100_000) -> list[str]:
    return [
        "run",
        "tiny",
        "--output",
        str(run_dir),
        "--no-progress",
        "--set",
        f"iterations={iterations}",
        "--set",
        "checkpoint_every=5",
        "--set",
        "client.num_workers=1",
        *extra,
    ]


def checkpoint_iteration(run_dir: Path) -> int:
    return read_checkpoint(run_dir)["t"]


def metric_iterations(run_dir: Path) -> list[int]:
    return pq.read_table(run_dir / "metrics.parquet").column("iteration").to_pylist()


@pytest.mark.parametrize("own_ray", [True, False], ids=["own-ray", "address"])
def test_sigterm_mid_run_stops_like_ctrl_c_and_resumes(spawn, tmp_path, ray_address, own_ray):
    """Without --address the process's own ray.init installs Ray's SIGTERM handler (exit 15
    and a C++ stack dump); ensure_ray puts rayfl's back."""
    run_dir = tmp_path / "run"
    address = [] if own_ray else ["--address", ray_address]
    cli = spawn(*run_args(run_dir, *address))
    # Really iterating: the first periodic checkpoint (5 iterations) is on disk.
    cli.wait_until(lambda: (run_dir / "checkpoint.npz").is_file(), "checkpoint")
    code = cli.signal_and_wait(signal.SIGTERM)

    line = assert_one_line(cli.stderr, "rayfl: interrupted (SIGTERM)")
    assert code == 143, cli.stderr
    assert line.endswith(f"resume with: rayfl run --resume {run_dir}"), line
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "interrupted"
    assert summary["resume"] == f"rayfl run --resume {run_dir}"
    done = checkpoint_iteration(run_dir)
    assert 5 <= done < 100_000
    # The checkpoint matches the metrics: one row per iteration before it, none missing.
    assert metric_iterations(run_dir) == list(range(done))
    assert summary["iterations"] == done

    if own_ray:
        return  # the resume below is the same with either Ray; once is enough
    # The resume command goes on from there and finishes (shortened to 3 more iterations).
    again = subprocess.run(
        [sys.executable, "-m", "rayfl.cli", "run", "--resume", str(run_dir), "--no-plot"]
        + ["--no-progress", "--address", ray_address, "--set", f"iterations={done + 3}"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["status"] == "finished"
    assert metric_iterations(run_dir) == list(range(done + 3))
    assert checkpoint_iteration(run_dir) == done + 3


def test_sigterm_while_ray_starts(spawn, tmp_path):
    """SIGTERM while ray.init runs (Ray's own handler answers then): still one line and 143."""
    run_dir = tmp_path / "run"
    cli = spawn(*run_args(run_dir))
    # config.yaml is written just before ensure_ray starts Ray (seconds on a small machine).
    cli.wait_until(lambda: (run_dir / "config.yaml").is_file(), "config.yaml")
    code = cli.signal_and_wait(signal.SIGTERM)
    assert_one_line(cli.stderr, "rayfl: interrupted (SIGTERM)")
    assert code == 143, cli.stderr


@pytest.mark.skipif(not Path("/proc/self/maps").is_file(), reason="needs /proc")
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupt_while_importing(spawn, tmp_path, signum):
    """Ctrl-C or SIGTERM during start-up, while Ray and torch are being imported."""
    cli = spawn(*run_args(tmp_path / "run"))
    cli.wait_until(lambda: cli.maps("torch") or cli.maps("_raylet"), "Ray or torch imported")
    code = cli.signal_and_wait(signum)
    name = signal.Signals(signum).name
    assert_one_line(cli.stderr, f"rayfl: interrupted ({name})")
    assert code == 128 + signum, cli.stderr


def test_interrupt_while_drawing_the_figures(spawn, tmp_path, ray_address):
    """The run finished; Ctrl-C while its figures are drawn says so, in one line. Then SIGTERM
    during ``rayfl plot`` of the same folder."""
    run_dir = tmp_path / "run"
    cli = spawn(*run_args(run_dir, "--address", ray_address, iterations=10))
    # plot_run makes the plots folder, then imports matplotlib and draws 7 figures (seconds).
    cli.wait_until(lambda: (run_dir / "plots").is_dir(), "plots folder")
    code = cli.signal_and_wait(signal.SIGINT)

    line = assert_one_line(cli.stderr, "rayfl: interrupted (SIGINT) after the run finished")
    assert code == 130, cli.stderr
    assert f"rayfl plot {run_dir}" in line
    assert json.loads((run_dir / "summary.json").read_text())["status"] == "finished"
    assert "rayfl run summary" not in cli.stdout  # stopped before the end of the command

    figures = tmp_path / "figures"
    cli = spawn("plot", str(run_dir), "--out", str(figures))
    cli.wait_until(figures.is_dir, "figures folder")
    code = cli.signal_and_wait(signal.SIGTERM)
    assert_one_line(cli.stderr, "rayfl: interrupted (SIGTERM)")
    assert code == 143, cli.stderr  # (a finished `rayfl plot` exits with 0)
