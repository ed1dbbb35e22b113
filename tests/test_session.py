"""The Ray session rayfl starts for a run (rayfl.runtime.session)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

# A fresh process (the test session's own Ray is already initialised here): it holds Ray's fixed
# dashboard-agent port itself, as a second Ray on the machine would, then lets rayfl start Ray.
_SECOND_RAY = textwrap.dedent(
    """
    import glob, os, socket
    import ray
    from rayfl.runtime.session import ensure_ray, shutdown_ray

    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        holder.bind(("0.0.0.0", 52365))
        holder.listen()
    except OSError:
        pass  # another Ray on this machine has it already: the same situation
    assert ensure_ray() is True
    assert ray.get(ray.put(7)) == 7
    logs = ray._private.worker._global_node.get_logs_dir_path()
    text = "".join(open(f).read() for f in glob.glob(os.path.join(logs, "dashboard_agent.log")))
    processes = sorted(ray._private.worker._global_node.all_processes)
    shutdown_ray()
    print("RETRIES", text.count("Failed to bind to port"))
    print("PROCESSES", *processes)
    """
)


def _fresh_python(code: str, cwd) -> subprocess.CompletedProcess:
    """``code`` in a new Python process with no Ray yet (not the test session's) and the
    default signal dispositions, as a terminal would start it."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    return subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=cwd,
        env=env,
        restore_signals=True,
    )


def test_a_second_local_ray_does_not_wait_for_the_taken_agent_port(tmp_path):
    """The agent of a Ray that rayfl starts binds a free port at once, even when Ray's fixed
    port 52365 is taken (before: six bind attempts over 3.3 s, with the raylet waiting), and
    ray.init does not start or wait for Ray's API server."""
    proc = _fresh_python(_SECOND_RAY, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RETRIES 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
    # No dashboard process: without the dashboard it would only report usage statistics, and
    # ray.init would wait for it to register.
    started = proc.stdout.split("PROCESSES", 1)[1].split()
    assert "raylet" in started and "dashboard" not in started, started
    # Ray's notice that token authentication is on: no news for a Ray rayfl starts and stops.
    assert "Token authentication" not in proc.stderr, proc.stderr[-2000:]


# SIGTERM arrives while ray.init still runs, after the driver's core worker connected (Ray's
# post-init hooks run there): the command line's graceful stop must still be what happens.
_SIGTERM_IN_RAY_INIT = textwrap.dedent(
    """
    import os, signal, time
    import ray
    from rayfl import interrupts
    from rayfl.runtime.session import ensure_ray

    interrupts.install()

    def sigterm_now():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)  # delivered while ray.init runs

    ray._private.worker._post_init_hooks.append(sigterm_now)
    try:
        ensure_ray()
    except interrupts.Terminated:
        print("TERMINATED after ray.init; Ray still up:", ray.is_initialized())
    else:
        print("NOT STOPPED")
    print("handler is rayfl's:", signal.getsignal(signal.SIGTERM) is interrupts._on_sigterm)
    """
)


def test_sigterm_while_ray_init_connects_is_held_and_raised_after(tmp_path):
    """Neither Ray's Python handler (sys.exit(15)) nor its C++ failure handler (a stack dump,
    then abort) answers: the signal is held until ray.init returns, the Ray it started is shut
    down, and Terminated reaches the caller (the CLI's one line and exit 143)."""
    proc = _fresh_python(_SIGTERM_IN_RAY_INIT, tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "TERMINATED after ray.init; Ray still up: False" in proc.stdout, proc.stderr[-2000:]
    assert "handler is rayfl's: True" in proc.stdout
    assert "SIGTERM received" not in proc.stderr, proc.stderr[-2000:]
