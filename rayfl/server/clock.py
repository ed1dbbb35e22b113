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
from collections.abc import Callable
from typing import Any

from rayfl.speed import SpeedModel
from rayfl.types import Job

# (job, injected delay in seconds) -> handle (ObjectRef of an Update, 0)
Submit = Callable[[Job, float], tuple[Any, int]]


class VirtualQueue:
    """Jobs ordered by simulated finish time; computed lazily, a window at a time.

    ``submit_batch(jobs) -> handles`` hands jobs to the workers (one handle per job, in order);
    ``discard(handle)`` is called for a submitted job that was dropped before it was aggregated.
    The window holds at least the ``lookahead`` earliest jobs, and every pending job that finishes
    before the latest submitted one (it will be aggregated before that one anyway).
    """

    def __init__(
        self,
        speed: SpeedModel,
        submit_batch: Callable[[list[Job]], list[Any]],
        lookahead: int,
        discard: Callable[[Any], None] = lambda handle: None,
        eager: bool = True,
    ):
        self.speed = speed
        self.eager = eager  # False: submit a job only when it is aggregated (staleness: nominal)
        self.submit_batch = submit_batch
        self.discard = discard
        self.lookahead = lookahead
        self.now = 0.0  # virtual time units
        self._pending: list[Job] = []  # heap of jobs not yet handed to a worker
        self._submitted: list[tuple[Job, Any]] = []  # heap of (job, handle)
        self._horizon = -math.inf  # latest finish time ever submitted
        self.current: dict[int, Job] = {}  # client_id -> its live job

    def __len__(self) -> int:
        return len(self.current)

    def dispatch(self, client_id: int, version: int) -> Job:
        """Starts a job now; its finish time is now + d."""
        job = Job(self.now + self.speed.duration(client_id, version), client_id, version)
        heapq.heappush(self._pending, job)
        self.current[client_id] = job
        return job

    def restore(self, job: Job, now: float) -> Job:
        """Puts a checkpointed live job back (same finish time); ``now`` is the saved clock."""
        self.now = now
        heapq.heappush(self._pending, job)
        self.current[job.client_id] = job
        return job

    def drop(self, client_id: int) -> Job | None:
        """Forgets a client's live job (remodel); it is skipped when it surfaces. Returns it."""
        return self.current.pop(client_id, None)

    def take(self, k: int) -> list[tuple[Job, Any]]:
        """Pops the k earliest live jobs (submitting any not yet submitted) and advances ``now``."""
        out: list[tuple[Job, Any]] = []
        while len(out) < k:
            self._discard_dropped()
            if not self._pending and not self._submitted:
                break
            if self._pending and (not self._submitted or self._pending[0] < self._submitted[0][0]):
                self.top_up(force=1)  # the earliest job is not submitted yet: submit it now
                continue
            out.append(heapq.heappop(self._submitted))
            del self.current[out[-1][0].client_id]
        if out:
            self.now = max(self.now, out[-1][0].finish)
        return out

    def top_up(self, force: int = 0) -> None:
        """Submits the window's pending jobs, earliest first, in as few batches as possible."""
        self._discard_dropped()
        batch: list[Job] = []
        while self._pending and (
            len(batch) < force
            or (
                self.eager
                and (
                    len(self._submitted) + len(batch) < self.lookahead
                    or self._pending[0].finish <= self._horizon
                )
            )
        ):
            job = heapq.heappop(self._pending)
            if self.current.get(job.client_id) is job:
                batch.append(job)
        if batch:
            for job, handle in zip(batch, self.submit_batch(batch), strict=True):
                heapq.heappush(self._submitted, (job, handle))
            self._horizon = max(self._horizon, batch[-1].finish)

    def _discard_dropped(self) -> None:
        while (
            self._pending and self.current.get(self._pending[0].client_id) is not self._pending[0]
        ):
            heapq.heappop(self._pending)
        while (
            self._submitted
            and self.current.get(self._submitted[0][0].client_id) is not self._submitted[0][0]
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

    def dispatch(self, client_id: int, version: int) -> Job:
        delay = self.speed.duration(client_id, version) * self.time_scale
        job = Job(time.perf_counter() - self.start, client_id, version)
        handle = self.submit(job, delay)
        self._refs[handle[0]] = (job, handle)
        self._ref_of[client_id] = handle[0]
        self.current[client_id] = job
        return job

    def restore(self, job: Job, now: float) -> Job:
        """Real clock: a checkpointed client starts its job on the same version again."""
        return self.dispatch(job.client_id, job.version)

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
