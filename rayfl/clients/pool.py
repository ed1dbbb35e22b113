"""A pool of client workers that outlives worker deaths (Ray restarts them, ``max_restarts``).

The workers are started with ``max_restarts`` and ``max_task_retries=0`` (:func:`make_pool`): when
one dies, its pending calls raise ``RayActorError`` at once and Ray restarts the actor from its
small constructor arguments. :class:`WorkerPool` then

- re-runs the failed call on a live worker (also when the call reached a restarted worker that
  has no data yet: ``NotAttachedError``; client work is a pure function of (seed, client,
  round or version), so the re-run gives the same result);
- pings the dead worker with ``attach(data)`` until Ray has restarted it and it has mapped the
  data again: ``ActorUnavailableError`` (or another ``RayActorError``) means "still restarting,
  ask again in a second", ``ActorDiedError`` means gone for good (``max_restarts`` used up);
- gives a worker work again once its ping came back.

The synchronous rounds (:mod:`rayfl.rounds.loop`) send all their worker calls through
:meth:`WorkerPool.map`. The K-async server (:mod:`rayfl.server.loop`) keeps its own job batches
and load counts and uses the pool for liveness only (``died``, ``live``, ``add``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import ray

from rayfl.clients.worker import NotAttachedError
from rayfl.errors import RayflError

T = TypeVar("T")

RESTART_TIMEOUT_S = 300.0  # how long to wait for a live worker when all are dead
MAX_RESUBMITS = 10  # tries of one call on live workers before the run gives up
REPING_S = 1.0  # seconds between pings of a worker that is still restarting


class WorkerPool:
    """Client worker actors, which of them are alive, and calls that survive a worker's death.

    Args:
        workers: the actor handles (``make_pool``), already attached to ``data``.
        data: the :class:`~rayfl.clients.worker.SharedData` a restarted worker attaches again.
        info: what each worker's ``attach`` returned (node, pid, device), if known.
        when_all_dead: the advice in the error raised when no worker comes back.
    """

    def __init__(
        self,
        workers: Sequence[Any],
        data: Any,
        info: Sequence[dict[str, Any]] | None = None,
        when_all_dead: str = "run again",
    ):
        self.workers = list(workers)
        self.data = data
        self.info = list(info) if info is not None else [{"index": i} for i in range(len(workers))]
        self.when_all_dead = when_all_dead
        self.alive = [True] * len(self.workers)  # False while Ray restarts a dead worker
        # incarnation of each worker: +1 at each death seen; a call records the one it went to,
        # so late failures of calls sent before a death are not taken for a new death
        self.epoch = [0] * len(self.workers)
        self.failures = 0  # worker deaths seen
        self._pings: dict[int, Any] = {}  # dead worker -> its attach() call, back once restarted
        self._reping: dict[int, float] = {}  # dead worker -> when to ping it again

    def __len__(self) -> int:
        return len(self.workers)

    # --- liveness -----------------------------------------------------------------------------

    def add(self, worker: Any) -> int:
        """A new worker (the cluster grew): it takes work once its ``attach`` comes back."""
        i = len(self.workers)
        self.workers.append(worker)
        self.alive.append(False)
        self.epoch.append(0)
        self.info.append({"index": i, "node_id": None, "pending": True})
        self._pings[i] = worker.attach.remote(self.data)
        return i

    def died(self, i: int, error: Exception, epoch: int | None = None) -> None:
        """Worker i's call failed: send it nothing until Ray has restarted it.

        ``epoch``: the worker's :attr:`epoch` when the call was sent. A call sent before a death
        already seen (its failure arrives late) changes nothing.
        """
        if epoch is not None and epoch < self.epoch[i]:
            return
        if self.alive[i]:
            self.epoch[i] += 1
            self.alive[i] = False
            self.failures += 1
            print(
                f"rayfl: client worker {i} died ({error.__class__.__name__}); its work is "
                "re-run on the live workers",
                flush=True,
            )
        if i not in self._pings and i not in self._reping:
            # Once Ray has restarted the actor this maps the data again; then it takes work.
            self._pings[i] = self.workers[i].attach.remote(self.data)

    def check_restarted(self) -> None:
        """Workers whose ping came back are alive again (Ray restarted them)."""
        now = time.perf_counter()
        for i, at in list(self._reping.items()):
            if now >= at:
                del self._reping[i]
                self._pings[i] = self.workers[i].attach.remote(self.data)
        if not self._pings:
            return
        ready, _ = ray.wait(list(self._pings.values()), num_returns=len(self._pings), timeout=0)
        for i, ping in list(self._pings.items()):
            if ping not in ready:
                continue
            del self._pings[i]
            try:
                self.info[i] = ray.get(ping)
                self.alive[i] = True
            except ray.exceptions.ActorDiedError:
                pass  # gone for good (max_restarts used up): it stays out of the pool
            except ray.exceptions.RayActorError:  # ActorUnavailableError: still restarting
                self._reping[i] = now + REPING_S

    def live(self) -> list[int]:
        """The live workers' indices; waits (up to RESTART_TIMEOUT_S) while all are restarting."""
        self.check_restarted()
        deadline = time.perf_counter() + RESTART_TIMEOUT_S
        while not any(self.alive):
            if time.perf_counter() > deadline:
                raise RayflError(
                    f"all {len(self.workers)} client workers died and none came back within "
                    f"{RESTART_TIMEOUT_S:.0f} s: check the cluster (ray status), raise "
                    f"client.max_restarts, and {self.when_all_dead}"
                )
            if self._pings:
                ray.wait(list(self._pings.values()), num_returns=1, timeout=1.0)
            else:
                time.sleep(0.2)
            self.check_restarted()
        return [i for i, ok in enumerate(self.alive) if ok]

    # --- calls --------------------------------------------------------------------------------

    def map(
        self,
        items: Sequence[T],
        submit: Callable[[Any, list[T]], Any],
        key: Callable[[T], int] = int,
        work: Callable[[int], float] | None = None,
    ) -> list[tuple[list[T], Any]]:
        """``submit(worker, part)`` for the items grouped by worker, all in flight at once.

        Item x goes to worker ``key(x) mod W`` (a client keeps its worker, and that worker its
        caches) while that worker is alive, else to a live one. With ``work`` (a client's cost),
        the clients are spread instead so that the live workers' totals are even
        (:func:`spread`): for a phase whose result does not depend on the worker and that uses
        no cache (training), where ``mod W`` left one worker 7 of 10 random clients and the
        round waited for it. A call whose worker died is re-run on a live worker, so the caller
        gets every part's result whatever died.

        Args:
            items: client ids, offers, ... (anything ``key`` maps to a client id).
            submit: (actor handle, the items for it) -> the ObjectRef of one actor call.
            key: the client id of an item.
            work: client id -> its cost (e.g. its data size), or None to keep ``mod W``.

        Returns:
            (part, result) per call, in the order of the parts' first items.

        Raises:
            RayflError: a call failed MAX_RESUBMITS times, or every worker stayed dead.
        """
        live = self.live()
        n = len(self.workers)
        placed = spread([int(key(x)) for x in items], work, live) if work is not None else {}
        parts: dict[int, list[T]] = {}
        for x in items:
            c = int(key(x))
            if work is not None:
                i = placed[c]
            else:
                i = c % n if self.alive[c % n] else live[c % len(live)]
            parts.setdefault(i, []).append(x)
        calls = [(i, part, submit(self.workers[i], part)) for i, part in parts.items()]
        return [(part, self._get(i, part, ref, submit)) for i, part, ref in calls]

    def _get(self, i: int, part: list[T], ref: Any, submit: Callable[[Any, list[T]], Any]) -> Any:
        """The result of ``ref`` (worker i's call on ``part``); re-runs it if the worker died."""
        epoch = self.epoch[i]
        for _ in range(MAX_RESUBMITS):
            try:
                return ray.get(ref)
            except (
                ray.exceptions.RayActorError,
                ray.exceptions.ObjectLostError,
                NotAttachedError,  # it died while idle and Ray restarted it before this call
            ) as e:
                self.died(i, e, epoch)
                i = self.live()[0]
                epoch = self.epoch[i]
                ref = submit(self.workers[i], part)
            except ray.exceptions.RayTaskError as e:
                raise user_error(e) from None
        raise RayflError(
            f"a call on {len(part)} clients failed {MAX_RESUBMITS} times on different workers: "
            "the cluster is losing workers faster than they restart; check `ray status`"
        )


def user_error(e: ray.exceptions.RayTaskError) -> BaseException:
    """The user's error a worker raised (a bad client task's one-line RayflError) as itself,
    without Ray's remote traceback around it; any other failure as it came."""
    return e.cause if isinstance(e.cause, RayflError) else e


def spread(
    clients: Sequence[int], work: Callable[[int], float], workers: Sequence[int]
) -> dict[int, int]:
    """client id -> worker, the workers' total work as even as the greedy rule makes it: the
    costliest client first, each to the least loaded worker (ties: the lower client id, the
    earlier worker), so the placement depends only on the clients and their costs.

    >>> spread([3, 1, 2, 0], lambda c: 1.0, [0, 1])
    {0: 0, 1: 1, 2: 0, 3: 1}
    """
    cost = {c: float(work(c)) for c in set(clients)}
    load = dict.fromkeys(workers, 0.0)
    out: dict[int, int] = {}
    for c in sorted(cost, key=lambda c: (-cost[c], c)):
        i = min(workers, key=lambda w: (load[w], w))
        out[c] = i
        load[i] += cost[c]
    return out
