"""Arrival order (AKAFL-RJ spec section 2): the two clocks' job queues.

Job durations come from :class:`rayfl.speed.SpeedModel` (a seeded shifted exponential).

``VirtualQueue`` pops the K jobs with the earliest simulated finish times from a heap and
computes them lazily: only the ``lookahead`` earliest jobs are submitted to the workers, so the
queued work and the memory held do not grow with N. ``RealQueue`` holds the in-flight ObjectRefs
and takes the first K that finish on the cluster (``ray.wait``): an iteration costs O(jobs in
flight), which ``clock.concurrency`` bounds by C instead of N (:mod:`rayfl.server.sampling`);
a remodel's cancel is O(1).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from rayfl.server.compactqueue import LiveArrays, LiveJobs, PendingJobs
from rayfl.speed import SpeedModel
from rayfl.types import Job

_CHUNK = 1 << 20  # jobs per vectorised dispatch step: bounds the float64 temporaries

# (job, injected delay in seconds) -> handle (ObjectRef of an Update, 0)
Submit = Callable[[Job, float], tuple[Any, int]]


class VirtualQueue:
    """Jobs ordered by simulated finish time; computed lazily, a window at a time.

    ``submit_batch(jobs) -> handles`` hands jobs to the workers (one handle per job, in order);
    ``discard(handle)`` is called for a submitted job that was dropped before it was aggregated.
    The workers hold at least the ``lookahead`` earliest jobs, and every pending job that finishes
    before the latest submitted one (it will be aggregated before that one anyway).

    Jobs no worker has yet live in flat per-client arrays (:class:`PendingJobs`, ~12 bytes a
    client); only the submitted ones are :class:`Job` objects. ``current`` is a read-only
    mapping client_id -> live job over both.
    """

    def __init__(
        self,
        speed: SpeedModel,
        submit_batch: Callable[[list[Job]], list[Any]],
        lookahead: int,
        discard: Callable[[Any], None] = lambda handle: None,
        eager: bool = True,
        window: int | None = None,
    ):
        self.speed = speed
        self.eager = eager  # False: submit a job only when it is aggregated (staleness: nominal)
        self.submit_batch = submit_batch
        self.discard = discard
        self.lookahead = lookahead
        self.now = 0.0  # virtual time units
        self._pending = PendingJobs(speed.speed.size, window)  # not yet handed to a worker
        self._submitted: list[tuple[Job, Any]] = []  # heap of (job, handle)
        self._in_flight: dict[int, Job] = {}  # client_id -> its live submitted job
        self._horizon = -math.inf  # latest finish time ever submitted
        self.current: Mapping[int, Job] = LiveJobs(self._pending, self._in_flight)

    def __len__(self) -> int:
        return len(self.current)

    def dispatch(self, client_id: int, version: int) -> Job:
        """Starts a job now; its finish time is now + d."""
        job = Job(self.now + self.speed.duration(client_id, version), client_id, version)
        self._in_flight.pop(client_id, None)  # a live job it replaces goes stale
        self._pending.add(client_id, job.finish, version)
        return job

    def dispatch_many(self, client_ids: np.ndarray, version: int) -> np.ndarray:
        """:meth:`dispatch` for many distinct clients on one version, vectorised (every client
        at the start: seconds, not minutes, for 10,000,000); returns their finish times."""
        client_ids = np.asarray(client_ids, dtype=np.int64)
        if self._in_flight:  # live jobs they replace go stale (never at the start)
            for c in set(self._in_flight).intersection(client_ids.tolist()):
                del self._in_flight[c]
        finish = np.empty(client_ids.size)
        for lo in range(0, client_ids.size, _CHUNK):  # bounds the float64 temporaries
            ids = client_ids[lo : lo + _CHUNK]
            finish[lo : lo + _CHUNK] = self.now + self.speed.durations(ids, version)
            self._pending.add_many(ids, finish[lo : lo + _CHUNK], version)
        return finish

    def restore(self, job: Job, now: float) -> Job:
        """Puts a checkpointed live job back (same finish time); ``now`` is the saved clock."""
        self.restore_many(LiveArrays.of([job]), now)
        return job

    def restore_many(self, jobs: LiveArrays, now: float) -> np.ndarray:
        """Puts checkpointed live jobs back (same finish times); returns the finish times."""
        self.now = now
        self._pending.add_many(jobs.client, jobs.finish, jobs.version)
        return jobs.finish

    def drop(self, client_id: int) -> Job | None:
        """Forgets a client's live job (remodel); it is skipped when it surfaces. Returns it."""
        job = self._in_flight.pop(client_id, None)
        if job is not None:
            return job
        got = self._pending.remove(client_id)
        return None if got is None else Job(got[0], client_id, got[1])

    def live_jobs(self) -> LiveArrays:
        """Every live job, by client id: for a checkpoint."""
        clients, finish = self._pending.live()
        versions = self._pending.version[clients]
        if self._in_flight:
            sub = sorted(self._in_flight.values(), key=lambda j: j.client_id)
            clients = np.concatenate([clients, [j.client_id for j in sub]])
            finish = np.concatenate([finish, [j.finish for j in sub]])
            versions = np.concatenate([versions, [j.version for j in sub]])
            order = np.argsort(clients, kind="stable")
            clients, finish, versions = clients[order], finish[order], versions[order]
        return LiveArrays(finish, clients, versions)

    def take(self, k: int) -> list[tuple[Job, Any]]:
        """Pops the k earliest live jobs (submitting any not yet submitted) and advances ``now``."""
        out: list[tuple[Job, Any]] = []
        while len(out) < k:
            self._discard_dropped()
            top = self._pending.peek()
            if top is None and not self._submitted:
                break
            if top is not None and (
                not self._submitted
                or top < (self._submitted[0][0].finish, self._submitted[0][0].client_id)
            ):
                self.top_up(force=1)  # the earliest job is not submitted yet: submit it now
                continue
            out.append(heapq.heappop(self._submitted))
            del self._in_flight[out[-1][0].client_id]
        if out:
            self.now = max(self.now, out[-1][0].finish)
        return out

    def top_up(self, force: int = 0) -> None:
        """Submits the window's pending jobs, earliest first, in as few batches as possible."""
        self._discard_dropped()
        batch: list[Job] = []
        while (top := self._pending.peek()) is not None and (
            len(batch) < force
            or (
                self.eager
                and (len(self._submitted) + len(batch) < self.lookahead or top[0] <= self._horizon)
            )
        ):
            batch.append(Job(*self._pending.pop()))
        if batch:
            for job, handle in zip(batch, self.submit_batch(batch), strict=True):
                heapq.heappush(self._submitted, (job, handle))
                self._in_flight[job.client_id] = job
            self._horizon = max(self._horizon, batch[-1].finish)

    def _discard_dropped(self) -> None:
        while (
            self._submitted
            and self._in_flight.get(self._submitted[0][0].client_id) is not self._submitted[0][0]
        ):
            self.discard(heapq.heappop(self._submitted)[1])


class RealQueue:
    """In-flight ObjectRefs on the real cluster; the first K to finish are aggregated."""

    def __init__(
        self,
        speed: SpeedModel,
        submit: Submit,
        time_scale: float,
        discard: Callable[[Any], None] = lambda handle: None,
    ):
        import ray  # only the real clock needs ray.wait here

        self.discard = discard
        self._ray = ray
        self.speed = speed
        self.submit = submit
        self.time_scale = time_scale  # seconds of injected delay per virtual time unit
        self.start = time.perf_counter()
        self.now = 0.0  # wall seconds since start
        self._refs: dict[Any, tuple[Job, Any]] = {}  # ObjectRef -> (job, handle)
        self._ref_of: dict[int, Any] = {}  # client_id -> its job's ObjectRef (O(1) drop)
        self.current: dict[int, Job] = {}

    def __len__(self) -> int:
        return len(self.current)

    def dispatch(self, client_id: int, version: int, duration: float | None = None) -> Job:
        """Starts the client's job on ``version``; ``duration``: its virtual duration if
        already drawn (:meth:`SpeedModel.durations`, the same number)."""
        if duration is None:
            duration = self.speed.duration(client_id, version)
        delay = duration * self.time_scale
        job = Job(time.perf_counter() - self.start, client_id, version)
        handle = self.submit(job, delay)
        self._refs[handle[0]] = (job, handle)
        self._ref_of[client_id] = handle[0]
        self.current[client_id] = job
        return job

    def dispatch_many(self, client_ids: np.ndarray, version: int) -> np.ndarray:
        """:meth:`dispatch` for each client (one actor call each: the real clock keeps C jobs
        in flight, ``clock.concurrency``); returns their dispatch times. The durations are
        drawn in one vectorised step (a seeded Generator per job cost ~10 % of the server)."""
        durations = self.speed.durations(np.asarray(client_ids), version)
        return np.array(
            [
                self.dispatch(int(c), version, float(d)).finish
                for c, d in zip(client_ids, durations, strict=True)
            ]
        )

    def restore(self, job: Job, now: float) -> Job:
        """Real clock: a checkpointed client starts its job on the same version again."""
        return self.dispatch(job.client_id, job.version)

    def restore_many(self, jobs: LiveArrays, now: float) -> np.ndarray:
        """:meth:`restore` for each checkpointed job; returns their new dispatch times."""
        durations = self.speed.durations(jobs.client, jobs.version)
        return np.array(
            [
                self.dispatch(int(c), int(v), float(d)).finish
                for c, v, d in zip(jobs.client, jobs.version, durations, strict=True)
            ]
        )

    def live_jobs(self) -> LiveArrays:
        """Every live job, by client id: for a checkpoint."""
        return LiveArrays.of(sorted(self.current.values(), key=lambda j: j.client_id))

    def drop(self, client_id: int) -> Job | None:
        """Forgets a client's live job (remodel) in O(1): cancels it if it has not run."""
        job = self.current.pop(client_id, None)
        if job is not None:
            ref = self._ref_of.pop(client_id)
            _, handle = self._refs.pop(ref)
            self._ray.cancel(ref)  # stop it if it has not run; its result is dropped
            self.discard(handle)
        return job

    def take(self, k: int) -> list[tuple[Job, Any]]:
        refs = list(self._refs)
        ready, _ = self._ray.wait(refs, num_returns=min(k, len(refs)), fetch_local=True)
        out = []
        for ref in ready:
            job, handle = self._refs.pop(ref)
            del self.current[job.client_id]
            del self._ref_of[job.client_id]
            out.append((job, handle))
        self.now = time.perf_counter() - self.start
        return out

    def top_up(self) -> None:
        pass
