"""Per-client state, kept by the server: SCAFFOLD's control variates, a personalised head, ...

A client task may carry state from one of a client's jobs to its next
(:meth:`~rayfl.clients.task.ClientTask.init_state`, :meth:`~rayfl.clients.task.ClientTask.finish`).
It lives here, with the server, and not in the worker actors: workers die and are restarted, and
any worker serves any client. So:

- the state travels *with the job* to whichever worker computes it, and the new state comes back
  with the update (``Update.state``, ``RoundUpdate.state``);
- the server stores it when it **accepts** the update (K-async: the update passed the checks and
  is aggregated, even if judgement then keeps the previous model; rounds: every trained client).
  A rejected update, a job dropped by remodel, or a job re-run after a worker death (it carries
  the state it was submitted with) leaves the old state. A client has one job at a time and its
  next job is dispatched only after its previous update was taken, so the state a job sees is
  well defined, and an update stays a pure function of (seed, client, version, state) on the
  virtual clock, whatever the lookahead window or the number of workers;
- :class:`ClientStates` is part of both engines' checkpoints, so a resumed run ends bit-identical.

States travel and are stored pickled (``bytes``, in memory only: Ray's own transport is pickle),
packed in the worker by :func:`pack`, which first checks that a checkpoint can store the state
without pickle (:mod:`rayfl.runtime.safestate`); the server never opens a client's state (it
stands in for the client's own disk), and bytes hold no reference into Ray's object store (a numpy
array returned by a worker would pin the whole result it came in). The store holds only the
clients that have state: a task without state (the default) sends and stores nothing.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from rayfl.errors import RayflError


def pack(where: str, state: Any) -> bytes | None:
    """A client's state as the bytes that travel and are stored (None: no state).

    Raises:
        RayflError: the state does not pickle (a checkpoint could not hold it), naming ``where``
            (``client.task='pkg.module:factory'``).
    """
    if state is None:
        return None
    from rayfl.runtime.safestate import UnsafeState, encode

    try:
        encode(state, {}, "client state")  # a checkpoint stores it without pickle: check now
    except UnsafeState as e:
        raise RayflError(f"{where}: the client state cannot be checkpointed: {e}") from None
    try:
        return pickle.dumps(state, protocol=5)
    except Exception as e:  # noqa: BLE001 - whatever pickling raises, the state is not storable
        reason = " ".join(f"{type(e).__name__}: {e}".split())
        raise RayflError(
            f"{where}: the client state (a {type(state).__name__}) cannot be checkpointed "
            f"({reason}): keep numpy arrays, numbers, tuples and dicts in a state"
        ) from None


def unpack(blob: bytes) -> Any:
    """The state :func:`pack` made."""
    return pickle.loads(blob)


class ClientStates:
    """The server's store of per-client state: client_id -> packed state, for the clients that
    have one (memory O(clients with state)). Picklable; engines checkpoint :meth:`checkpoint`."""

    def __init__(self) -> None:
        self._blobs: dict[int, bytes] = {}

    def __len__(self) -> int:
        return len(self._blobs)

    def blobs(self, client_ids: Iterable[int]) -> dict[int, bytes]:
        """The packed states of those of ``client_ids`` that have one (to send with their
        jobs); empty, at no cost, when no client has state."""
        if not self._blobs:
            return {}
        got = ((int(i), self._blobs.get(int(i))) for i in client_ids)
        return {i: b for i, b in got if b is not None}

    def blob(self, client_id: int) -> bytes | None:
        """One client's packed state, or None."""
        return self._blobs.get(int(client_id)) if self._blobs else None

    def accept(self, client_id: int, blob: bytes | None) -> None:
        """Stores the state that came back with an accepted update (None: the client has no
        state now)."""
        if blob is not None:
            self._blobs[int(client_id)] = blob
        elif self._blobs:
            self._blobs.pop(int(client_id), None)

    def get(self, client_id: int) -> Any:
        """A client's state, unpacked (None if it has none): for tests and analysis."""
        blob = self.blob(client_id)
        return None if blob is None else unpack(blob)

    def checkpoint(self) -> dict[int, Any]:
        """The store's content for a checkpoint: each client's state itself (a fresh copy, so
        later jobs do not change it), which the checkpoint file stores without pickle
        (:mod:`rayfl.runtime.safestate`)."""
        return {i: unpack(b) for i, b in self._blobs.items()}

    def restore(self, states: Mapping[int, Any], template: Callable[[int], Any]) -> None:
        """Replaces the content with a :meth:`checkpoint`'s, read back from a file: each state
        gets its classes from ``template(client_id)`` (the task's ``init_state``)."""
        from rayfl.runtime.safestate import UnsafeState, conform

        blobs = {}
        for i, state in states.items():
            try:
                blobs[int(i)] = pack(
                    "client.task", conform(state, template(int(i)), "client.task state")
                )
            except UnsafeState as e:
                raise RayflError(str(e)) from None
        self._blobs = {i: b for i, b in blobs.items() if b is not None}
