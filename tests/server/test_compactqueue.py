"""The compact virtual queue pops exactly what a plain heap of Jobs pops.

The reference below is the virtual clock's queue as it was before the flat arrays (a heapq of
every live job, a dict client -> job): both queues get the same random stream of dispatches,
takes, top-ups, remodel drops and restores, with many ties in the finish times, and must take
the same jobs, submit the same batches and discard the same handles. No Ray.
"""

from __future__ import annotations

import heapq
import math
from typing import Any

import numpy as np
import pytest

from rayfl.server.clock import VirtualQueue
from rayfl.server.compactqueue import LiveArrays, PendingJobs
from rayfl.types import Job


class ReferenceQueue:
    """The virtual clock's queue before the flat arrays (rayfl <= 0.x), verbatim in logic."""

    def __init__(self, speed, submit_batch, lookahead, discard, eager=True):
        self.speed, self.submit_batch, self.lookahead = speed, submit_batch, lookahead
        self.discard, self.eager = discard, eager
        self.now = 0.0
        self._pending: list[Job] = []
        self._submitted: list[tuple[Job, Any]] = []
        self._horizon = -math.inf
        self.current: dict[int, Job] = {}

    def dispatch(self, client_id, version):
        job = Job(self.now + self.speed.duration(client_id, version), client_id, version)
        heapq.heappush(self._pending, job)
        self.current[client_id] = job
        return job

    def restore(self, job, now):
        self.now = now
        heapq.heappush(self._pending, job)
        self.current[job.client_id] = job

    def drop(self, client_id):
        return self.current.pop(client_id, None)

    def take(self, k):
        out = []
        while len(out) < k:
            self._discard_dropped()
            if not self._pending and not self._submitted:
                break
            if self._pending and (not self._submitted or self._pending[0] < self._submitted[0][0]):
                self.top_up(force=1)
                continue
            out.append(heapq.heappop(self._submitted))
            del self.current[out[-1][0].client_id]
        if out:
            self.now = max(self.now, out[-1][0].finish)
        return out

    def top_up(self, force=0):
        self._discard_dropped()
        batch = []
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

    def _discard_dropped(self):
        while (
            self._pending and self.current.get(self._pending[0].client_id) is not self._pending[0]
        ):
            heapq.heappop(self._pending)
        while (
            self._submitted
            and self.current.get(self._submitted[0][0].client_id) is not self._submitted[0][0]
        ):
            self.discard(heapq.heappop(self._submitted)[1])


class TieSpeed:
    """Durations from three values only, so many jobs finish at the same time."""

    def __init__(self, n: int, values: tuple[float, ...] = (1.0, 2.0, 3.0)):
        self.speed = np.ones(n)
        self.values = values

    def duration(self, client_id: int, version: int) -> float:
        return self.values[(client_id * 7 + version * 13) % len(self.values)]

    def durations(self, client_ids, version) -> np.ndarray:
        v = np.broadcast_to(np.asarray(version), np.shape(client_ids))
        return np.array([self.duration(int(c), int(x)) for c, x in zip(client_ids, v, strict=True)])


class Recorder:
    """submit_batch / discard of one queue: what was submitted and discarded, in order."""

    def __init__(self):
        self.log: list[tuple[str, Any]] = []
        self.n = 0

    def submit(self, jobs):
        self.log.append(("submit", [(j.finish, j.client_id, j.version) for j in jobs]))
        self.n += len(jobs)
        return [("h", self.n - len(jobs) + i) for i in range(len(jobs))]

    def discard(self, handle):
        self.log.append(("discard", handle))


def _pair(n, lookahead, window, eager=True, values=(1.0, 2.0, 3.0)):
    speed = TieSpeed(n, values)
    rec_ref, rec_new = Recorder(), Recorder()
    ref = ReferenceQueue(speed, rec_ref.submit, lookahead, rec_ref.discard, eager)
    new = VirtualQueue(speed, rec_new.submit, lookahead, rec_new.discard, eager, window=window)
    return ref, new, rec_ref, rec_new


def _jobs(taken):
    return [(j.finish, j.client_id, j.version) for j, _ in taken]


def _same_live(ref, new):
    assert len(ref.current) == len(new.current)
    assert dict(ref.current) == {c: new.current[c] for c in ref.current}
    assert sorted(new.current) == sorted(ref.current)
    arrays = new.live_jobs()
    assert arrays.client.tolist() == sorted(ref.current)
    assert arrays.finish.tolist() == [ref.current[c].finish for c in sorted(ref.current)]


def _drive(ref, new, rng, n, steps, t0=1):
    """The server loop's pattern: take K, re-dispatch them on t, remodel some, top up."""
    for t in range(t0, t0 + steps):
        k = int(rng.integers(1, 6))
        a, b = ref.take(k), new.take(k)
        assert _jobs(a) == _jobs(b) and [h for _, h in a] == [h for _, h in b]
        assert ref.now == new.now
        ref.top_up()
        new.top_up()
        for job, _ in a:  # the reporting clients start on the newest version
            assert ref.dispatch(job.client_id, t) == new.dispatch(job.client_id, t)
        for c in rng.choice(n, size=int(rng.integers(0, 3)), replace=False).tolist():
            old_ref, old_new = ref.drop(c), new.drop(c)  # remodel: drop, resend
            assert old_ref == old_new
            if old_ref is not None or rng.random() < 0.5:
                assert ref.dispatch(c, t) == new.dispatch(c, t)
        if rng.random() < 0.3:  # a rejected update: the client is dispatched again
            c = int(rng.integers(n))
            if c not in ref.current:
                assert ref.dispatch(c, t) == new.dispatch(c, t)
        if rng.random() < 0.7:  # else the next take comes straight after the dispatches, as
            ref.top_up()  # after a rejected update in the server's loop
            new.top_up()


@pytest.mark.parametrize("seed", range(8))
@pytest.mark.parametrize(
    ("window", "lookahead", "eager"), [(2, 3, True), (5, 8, True), (3, 4, False)]
)
def test_same_order_as_a_plain_heap(seed, window, lookahead, eager):
    n = 40
    rng = np.random.default_rng(seed)
    ref, new, rec_ref, rec_new = _pair(n, lookahead, window, eager)
    for c in range(n):
        ref.dispatch(c, 0)
    new.dispatch_many(np.arange(n), 0)
    _same_live(ref, new)
    ref.top_up()
    new.top_up()
    _drive(ref, new, rng, n, 150)
    _same_live(ref, new)
    assert rec_ref.log == rec_new.log


@pytest.mark.parametrize("seed", range(4))
def test_restore_continues_the_same_order(seed):
    n = 30
    rng = np.random.default_rng(seed)
    ref, new, _, _ = _pair(n, 4, 3)
    for c in range(n):
        ref.dispatch(c, 0)
    new.dispatch_many(np.arange(n), 0)
    _drive(ref, new, rng, n, 40)
    # checkpoint the compact queue as arrays, restore into a fresh one; the reference goes on
    saved = LiveArrays.from_state(new.live_jobs().state())
    _, fresh, _, _ = _pair(n, 4, 3)
    fresh.restore_many(saved, new.now)
    fresh.top_up()
    ref2, _, _, _ = _pair(n, 4, 3)
    for f, c, v in zip(
        saved.finish.tolist(), saved.client.tolist(), saved.version.tolist(), strict=True
    ):
        ref2.restore(Job(f, c, v), new.now)
    ref2.top_up()
    _drive(ref2, fresh, np.random.default_rng(100 + seed), n, 60, t0=41)
    # restoring the legacy form (a list of tuples) gives the same arrays
    legacy = list(
        zip(saved.finish.tolist(), saved.client.tolist(), saved.version.tolist(), strict=True)
    )
    again = LiveArrays.from_state(legacy)
    assert all(np.array_equal(x, y) for x, y in zip(again, saved, strict=True))


def test_pending_jobs_window_refills_in_order_with_ties():
    p = PendingJobs(10, window=3)
    finish = np.array([5.0, 1.0, 1.0, 3.0, 1.0, 2.0, 9.0, 3.0, 2.0, 1.0])
    p.add_many(np.arange(10), finish, np.zeros(10, dtype=np.int64))
    p.remove(6)
    order = [p.pop()[:2] for _ in range(len(p))]
    assert order == sorted((f, c) for c, f in enumerate(finish.tolist()) if c != 6)
    assert p.peek() is None and len(p) == 0


def test_pending_jobs_late_add_inside_the_window():
    p = PendingJobs(6, window=2)
    p.add_many(np.arange(5), np.array([1.0, 2.0, 3.0, 4.0, 5.0]), np.zeros(5, np.int64))
    assert p.pop() == (1.0, 0, 0)  # the window now holds finish <= 2
    p.add(5, 1.5, 7)  # earlier than the window's bound: it must come next
    p.add(0, 2.0, 3)  # ties with client 1: client id decides
    assert [p.pop() for _ in range(3)] == [(1.5, 5, 7), (2.0, 0, 3), (2.0, 1, 0)]
