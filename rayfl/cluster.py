"""``rayfl cluster check``: the Ray cluster's nodes, and where a config's client workers would go.

The pool size is the engine's own (``rayfl.clients.worker.pool_size``); the spread over nodes
imitates Ray's ``SPREAD`` strategy (round robin over the nodes that still have room), which is
how ``make_pool`` places workers outside a placement group. Ray decides the real placement at
run time; ``summary.json``'s ``worker_nodes`` and updates.parquet's ``worker`` column say where
they ran.
"""

from __future__ import annotations

import math
import os
import socket
from collections.abc import Sequence
from typing import Any

from rayfl.errors import RayflError

# Resource keys that are not worth a column: Ray's built-ins and per-node labels.
_BUILTIN = {"CPU", "GPU", "memory", "object_store_memory"}


def check(config: str, overrides: Sequence[str] = (), address: str | None = None) -> str:
    """A printable report: the cluster's nodes and totals, and the config's worker placement.

    Connects to ``address`` (default: ``RAY_ADDRESS``, else the cluster on this machine) only if
    Ray is not initialised in this process, and disconnects only a connection it made.

    Raises:
        RayflError: the config is invalid, or no cluster is reachable.

    Example:
        >>> print(check("tiny", ["client.num_workers=2"], address="127.0.0.1:6379"))  # doctest: +SKIP
    """
    import ray

    from rayfl.config import load_config

    cfg = load_config(config, overrides)  # a bad config fails before any connection
    started = False
    if not ray.is_initialized():
        _probe(address or os.environ.get("RAY_ADDRESS"))
        try:
            ray.init(
                address=address or "auto",
                logging_level="ERROR",
                log_to_driver=False,
                include_dashboard=False,
            )
        except Exception as e:  # ConnectionError, auth errors, timeouts: all one line
            first = (str(e).strip().splitlines() or [e.__class__.__name__])[0]
            raise RayflError(
                f"no Ray cluster reachable at {address or 'auto'} ({first}): start one "
                "(ray start --head, or cluster/local.sh up) or pass --address HOST:PORT"
            ) from None
        started = True
    try:
        nodes = ray.nodes()
        totals = ray.cluster_resources()
    finally:
        if started:
            ray.shutdown()
    return format_report(cfg, nodes, totals)


def _probe(address: str | None) -> None:
    """Fails in seconds, not minutes, when a ``host:port`` address has nobody listening (Ray's
    own connect retries for about a minute)."""
    if not address or address == "auto" or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except (OSError, ValueError) as e:
        raise RayflError(
            f"no Ray cluster reachable at {address} ({e.__class__.__name__}: nothing listens "
            "there): start one (ray start --head, or cluster/local.sh up) or fix --address"
        ) from None


def format_report(cfg: Any, nodes: list[dict[str, Any]], totals: dict[str, float]) -> str:
    """The report of ``check`` from ``ray.nodes()`` and ``ray.cluster_resources()`` (no Ray)."""
    from rayfl.clients.worker import pool_size
    from rayfl.errors import ConfigError

    c = cfg.client
    lines = [f"Ray cluster: {sum(n['Alive'] for n in nodes)} nodes alive, {len(nodes)} known", ""]
    rows, capacity = _node_rows(nodes, c.num_cpus, c.num_gpus)
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    lines += [
        "",
        f"totals: {totals.get('CPU', 0):g} CPUs, {totals.get('GPU', 0):g} GPUs, "
        f"{totals.get('memory', 0) / 2**30:.1f} GiB memory, "
        f"{totals.get('object_store_memory', 0) / 2**30:.1f} GiB object store",
        "",
        f"experiment {cfg.name}: {cfg.data.num_clients} clients, per worker "
        f"num_cpus={c.num_cpus:g} num_gpus={c.num_gpus:g}; server num_cpus="
        f"{cfg.server.num_cpus:g} num_gpus={cfg.server.num_gpus:g}",
    ]
    try:
        n_workers = pool_size(cfg, totals)
    except ConfigError as e:
        lines.append(f"placement: does not fit: {e}")
        return "\n".join(lines)
    how = "client.num_workers" if c.num_workers is not None else "what the cluster fits"
    lines.append(f"pool: {n_workers} client workers ({how})")
    placed = spread(n_workers, capacity)
    alive = [r for r, n in zip(rows[1:], nodes, strict=True) if n["Alive"]]
    per_node = ", ".join(f"{r[0].split()[0]}: {k}" for r, k in zip(alive, placed, strict=True))
    lines.append(f"expected spread (Ray SPREAD): {per_node or '-'}")
    pending = n_workers - sum(placed)
    if pending > 0:
        lines.append(
            f"warning: {pending} workers do not fit any node and would wait for resources "
            "(an autoscaler adds nodes; otherwise lower client.num_cpus/num_gpus or "
            "client.num_workers)"
        )
    return "\n".join(lines)


def _node_rows(
    nodes: list[dict[str, Any]], num_cpus: float, num_gpus: float
) -> tuple[list[tuple[str, ...]], list[int]]:
    """The node table of :func:`format_report` (a header, then one row per node) and how many
    workers each live node fits (a huge number where there is no limit)."""
    rows = [("node", "ip", "CPUs", "GPUs", "custom resources", "alive", "fits")]
    capacity: list[int] = []
    for n in nodes:
        res = n.get("Resources", {}) if n["Alive"] else {}
        fit = workers_per_node(res, num_cpus, num_gpus) if n["Alive"] else 0
        custom = sorted(
            f"{k}={v:g}"
            for k, v in res.items()
            if k not in _BUILTIN and not k.startswith(("node:", "accelerator_type:"))
        )
        head = " (head)" if "node:__internal_head__" in res else ""
        rows.append(
            (
                n["NodeID"][:8] + head,
                n.get("NodeManagerAddress", "?"),
                f"{res.get('CPU', 0):g}",
                f"{res.get('GPU', 0):g}",
                ", ".join(custom) or "-",
                "yes" if n["Alive"] else "no",
                "any" if fit is None else str(fit),
            )
        )
        if n["Alive"]:
            capacity.append(fit if fit is not None else 1 << 30)
    return rows, capacity


def workers_per_node(resources: dict[str, float], num_cpus: float, num_gpus: float) -> int | None:
    """How many workers of ``num_cpus``/``num_gpus`` fit a node (None: no limit, both are 0)."""
    fits = []
    if num_cpus > 0:
        fits.append(math.floor(resources.get("CPU", 0.0) / num_cpus + 1e-9))
    if num_gpus > 0:
        fits.append(math.floor(resources.get("GPU", 0.0) / num_gpus + 1e-9))
    return min(fits) if fits else None


def spread(n: int, capacity: Sequence[int]) -> list[int]:
    """``n`` workers dealt round robin to nodes with room left (``capacity`` per node).

    >>> spread(5, [0, 2, 4])
    [0, 2, 3]
    """
    placed = [0] * len(capacity)
    left = n
    while left > 0:
        progress = False
        for i, cap in enumerate(capacity):
            if left > 0 and placed[i] < cap:
                placed[i] += 1
                left -= 1
                progress = True
        if not progress:
            break
    return placed
