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
    shutdown_ray()
    print("RETRIES", text.count("Failed to bind to port"))
    """
)


def test_a_second_local_ray_does_not_wait_for_the_taken_agent_port(tmp_path):
    """The agent of a Ray that rayfl starts binds a free port at once, even when Ray's fixed
    port 52365 is taken (before: six bind attempts over 3.3 s, with the raylet waiting)."""
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    proc = subprocess.run(
        [sys.executable, "-c", _SECOND_RAY],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "RETRIES 0" in proc.stdout, proc.stdout + proc.stderr[-2000:]
