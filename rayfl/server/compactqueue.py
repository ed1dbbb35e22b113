"""The virtual clock's pending jobs in flat arrays: ~12 bytes per client, whatever N.

With every client always training (AKAFL-RJ), the virtual clock holds one live job per client.
A Python heap of job objects costs ~250 bytes per client (2.5 GB at N = 10,000,000); here a
job that no worker has yet is two array entries, its finish time (float64, +inf: none) and its
version (int32), and only a *window* of the earliest ones sits in a small Python heap of
``(finish, client_id)`` pairs. When the window runs dry it is refilled with the next
``window`` earliest jobs, found by a chunked ``np.partition`` over the finish times: O(N) work
once per ``window`` jobs taken, so with a window proportional to N the cost per job stays flat.

The order is exactly the heap order of :class:`rayfl.types.Job` (finish, client_id, version):
a client has at most one live job, so (finish, client_id) already decides, and ties in the
finish time are broken by the client id as before. Invariant: every pending job whose finish
is <= ``bound`` has an entry in the window heap; an entry whose (finish) no longer matches its
client's array entry is stale (the job was dropped or taken) and is skipped when it surfaces.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from rayfl.types import Job

_CHUNK = 1 << 20  # clients per numpy pass of a refill: bounds its temporaries to ~10 MB
MIN_WINDOW = 4096  # jobs per refill at least (small N: the window is the whole set)
WINDOW_PER_CLIENTS = 256  # and at least N / 256, so refills cost O(1) per job taken


def default_window(num_clients: int) -> int:
    """The window of :class:`PendingJobs` for ``num_clients``: max(4096, N / 256)."""
    return max(MIN_WINDOW, num_clients // WINDOW_PER_CLIENTS)


class PendingJobs:
    """At most one pending job per client, popped in (finish, client_id) order."""

    def __init__(self, num_clients: int, window: int | None = None):
        self.num_clients = num_clients
        self.window = window or default_window(num_clients)
        self.finish = np.full(num_clients, np.inf)  # (N,) virtual time units; inf: none
        self.version = np.zeros(num_clients, dtype=np.int32)  # (N,) valid where finish < inf
        self.count = 0  # pending jobs
        self._heap: list[tuple[float, int]] = []  # (finish, client_id): the window
        self._bound = -math.inf  # every pending job with finish <= bound has a heap entry

    def __len__(self) -> int:
        return self.count

    def get(self, client_id: int) -> tuple[float, int] | None:
        """(finish, version) of the client's pending job, or None."""
        if not 0 <= client_id < self.num_clients:
            return None
        f = float(self.finish[client_id])
        return None if f == math.inf else (f, int(self.version[client_id]))

    def add(self, client_id: int, finish: float, version: int) -> None:
        """Makes (finish, version) the client's pending job (replacing one it had)."""
        if self.finish[client_id] == math.inf:
            self.count += 1
        self.finish[client_id] = finish
        self.version[client_id] = version
        if finish <= self._bound:
            heapq.heappush(self._heap, (finish, client_id))

    def add_many(
        self, client_ids: np.ndarray, finish: np.ndarray, version: np.ndarray | int
    ) -> None:
        """:meth:`add` for many clients at once (vectorised); ``client_ids`` must be distinct,
        ``version`` one per client or one for all."""
        client_ids = np.asarray(client_ids, dtype=np.int64)
        self.count += int(np.count_nonzero(self.finish[client_ids] == np.inf))
        self.finish[client_ids] = finish
        self.version[client_ids] = version
        early = np.flatnonzero(np.asarray(finish) <= self._bound)  # rare after the start
        for j in early.tolist():
            heapq.heappush(self._heap, (float(self.finish[client_ids[j]]), int(client_ids[j])))

    def remove(self, client_id: int) -> tuple[float, int] | None:
        """Forgets the client's pending job; returns its (finish, version), or None."""
        got = self.get(client_id)
        if got is not None:
            self.finish[client_id] = np.inf
            self.count -= 1
        return got

    def peek(self) -> tuple[float, int] | None:
        """(finish, client_id) of the earliest pending job, or None when there is none."""
        heap = self._heap
        while True:
            while heap and self.finish[heap[0][1]] != heap[0][0]:
                heapq.heappop(heap)  # stale: the job was dropped, taken or replaced
            if heap:
                return heap[0]
            if self.count == 0:
                return None
            self._refill()

    def pop(self) -> tuple[float, int, int]:
        """Removes the earliest pending job: (finish, client_id, version)."""
        top = self.peek()
        if top is None:
            raise IndexError("pop from no pending jobs")
        finish, client_id = heapq.heappop(self._heap)
        version = int(self.version[client_id])
        self.finish[client_id] = np.inf
        self.count -= 1
        return finish, client_id, version

    def _refill(self) -> None:
        """Fills the empty window with every pending job up to the ``window``-th earliest
        finish time F (ties included), and raises ``bound`` to F: O(N), chunked."""
        w = min(self.window, self.count)
        best = [
            np.partition(part, w - 1)[:w] if part.size > w else part
            for part in self._chunks(self.finish)
        ]  # the w earliest overall are among each chunk's w earliest
        candidates = np.concatenate(best)
        bound = float(np.partition(candidates, w - 1)[w - 1])  # finite: w <= count
        chosen = np.concatenate(
            [lo + np.flatnonzero(part <= bound) for lo, part in self._chunks_at(self.finish)]
        )
        # a sorted list is a valid heap; in place: peek() holds the list
        self._heap[:] = sorted(zip(self.finish[chosen].tolist(), chosen.tolist(), strict=True))
        self._bound = bound

    @staticmethod
    def _chunks(a: np.ndarray) -> list[np.ndarray]:
        return [a[lo : lo + _CHUNK] for lo in range(0, a.size, _CHUNK)]

    @staticmethod
    def _chunks_at(a: np.ndarray) -> list[tuple[int, np.ndarray]]:
        return [(lo, a[lo : lo + _CHUNK]) for lo in range(0, a.size, _CHUNK)]

    def live(self) -> tuple[np.ndarray, np.ndarray]:
        """(client ids ascending, their finish times): every pending job, for a checkpoint."""
        clients = np.concatenate(
            [lo + np.flatnonzero(part != np.inf) for lo, part in self._chunks_at(self.finish)]
        )
        return clients, self.finish[clients]


class LiveJobs(Mapping[int, Job]):
    """client_id -> live job, read-only, over the pending arrays and the submitted jobs.

    ``get``, ``in`` and ``len`` are O(1); iterating lists every live client (O(N): a
    checkpoint uses :meth:`PendingJobs.live` instead)."""

    def __init__(self, pending: PendingJobs, in_flight: dict[int, Job]):
        self._pending = pending
        self._in_flight = in_flight

    def __getitem__(self, client_id: int) -> Job:
        job = self._in_flight.get(client_id)
        if job is not None:
            return job
        got = self._pending.get(int(client_id))
        if got is None:
            raise KeyError(client_id)
        return Job(got[0], int(client_id), got[1])

    def __contains__(self, client_id: object) -> bool:
        if client_id in self._in_flight:
            return True
        return (
            isinstance(client_id, (int, np.integer))
            and self._pending.get(int(client_id)) is not None
        )

    def __len__(self) -> int:
        return len(self._in_flight) + self._pending.count

    def __iter__(self) -> Iterator[int]:
        yield from self._in_flight
        clients, _ = self._pending.live()
        yield from clients.tolist()


class LiveArrays(NamedTuple):
    """Live jobs as three ``(n,)`` arrays: the checkpoint's form (no object per job)."""

    finish: np.ndarray  # float64 virtual time units (real clock: dispatch wall seconds)
    client: np.ndarray  # int client ids
    version: np.ndarray  # int versions

    @classmethod
    def of(cls, jobs: Iterable[Job | tuple[float, int, int]]) -> LiveArrays:
        """From jobs or (finish, client_id, version) tuples (checkpoints of rayfl <= 0.x)."""
        rows = [
            tuple(j) if isinstance(j, tuple) else (j.finish, j.client_id, j.version) for j in jobs
        ]
        if not rows:
            return cls(np.zeros(0), np.zeros(0, np.int64), np.zeros(0, np.int64))
        finish, client, version = zip(*rows, strict=True)
        return cls(
            np.array(finish, np.float64), np.array(client, np.int64), np.array(version, np.int64)
        )

    def state(self) -> dict[str, np.ndarray]:
        """The checkpoint's value: plain arrays (ids as int32 where they fit: 4 bytes a job)."""
        return {
            "finish": np.asarray(self.finish, np.float64),
            "client": _narrow(self.client),
            "version": _narrow(self.version),
        }

    @classmethod
    def from_state(cls, value: Any) -> LiveArrays:
        """What :meth:`state` made, or a list of (finish, client_id, version) tuples (the
        checkpoints written before the arrays)."""
        if isinstance(value, Mapping):
            return cls(
                np.asarray(value["finish"], np.float64),
                np.asarray(value["client"], np.int64),
                np.asarray(value["version"], np.int64),
            )
        return cls.of(value)


def _narrow(a: np.ndarray) -> np.ndarray:
    a = np.asarray(a)
    fits = a.size == 0 or (a.min() >= 0 and a.max() < 2**31)
    return a.astype(np.int32 if fits else np.int64)
