"""The controller's side of sharing a study with other controllers (next to ``claims.py`` and ``leases.py``).

A controller that runs out of work while other controllers still run or hold points of its sweeps waits for
them, re-reading the study now and then, and takes their points over when one dies (on another host: its
heartbeat is older than its lease). If this controller itself was silent past its lease and another took its
trials over, it stops. ``Controller`` mixes this in; the state it uses (``runners``, ``leases``, ``pause`` …)
is the controller's.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from orchestrator import faults as fl
from orchestrator import optuna_compat as oc
from orchestrator import storage as st
from orchestrator.executors import Executor
from orchestrator.trial.errors import RunError


class _TakenOver(RunError):
    """Another controller took this one's trials over (it was silent for longer than its lease)."""


class Coordination:
    """Methods of ``Controller`` that deal with other controllers sharing its studies."""

    runners: list[Any]
    leases: Any
    pause: Any
    opts: Any
    display: Any
    executor: Executor
    free: list[Any]
    trials: dict[str, Any]
    stopping: bool
    _next_watch: float
    _next_rescan: float
    _said_waiting: bool

    def _say_notes(self) -> None:
        """Say what the sweeps noted while reading the studies (takeovers)."""
        for r in self.runners:
            for note in r.notes:
                self.display.message(note)
            r.notes.clear()

    def _watch_others_unless_paused(self) -> None:
        """``_watch_others`` while the storage answers; a storage fault half-way pauses the controller and
        puts back the queues ``_recover`` was rebuilding (the next watch after the pause reads them again)."""
        if self.pause.blocking(fl.STORAGE):
            return
        saved = [
            (r, deque(r.pending), dict(r.resume_from), r.finished, set(r.elsewhere)) for r in self.runners
        ]
        blocked = [set(r.claims.blocked_by) if r.claims is not None else set() for r in self.runners]
        try:
            self._watch_others()
        except Exception as exc:
            cause = fl.transient(exc)
            if cause is None:
                raise
            for (r, pending, resume, finished, elsewhere), by in zip(saved, blocked, strict=True):
                r.pending, r.resume_from, r.finished, r.elsewhere = pending, resume, finished, elsewhere
                if r.claims is not None:
                    r.claims.blocked_by = by
            self.pause.trip(fl.STORAGE, cause, "read the studies for other controllers' points")

    def _watch_others(self) -> None:
        """Take over the points of another controller that died; notice if this one was silent past its lease.

        At most every second a few cheap reads (the heartbeat table); the studies are re-read when a controller
        this one waits for died, or every lease/3 (1-10 s) while slots are free (to see its points finish).
        """
        if self.leases is None:
            return
        now = time.monotonic()
        if now < self._next_watch:
            return
        self._next_watch = now + min(1.0, self.opts.lease_s / 5)
        if self.leases.lapsed is not None:
            self._check_lapse()
        owners = {o for r in self.runners for o in r.waiting_on()}
        if not owners:
            return
        dead = any(not st.owner_alive(o, self.leases) for o in owners)
        if not dead and (now < self._next_rescan or not self.free):
            return
        self._next_rescan = now + min(max(self.opts.lease_s / 3, 1.0), 10.0)
        orphans: list[dict[str, Any]] = []
        for r in self.runners:
            if r.waiting_on():
                before = len(r.orphans)
                r._recover()
                orphans += r.orphans[before:]
        self._say_notes()
        if orphans:
            for note in self.executor.cleanup(orphans):
                self.display.message(note)

    def _waiting_for_others(self) -> bool:
        """Nothing of ours runs, but other live controllers run or hold points these sweeps need: wait (and
        ``_watch_others`` takes their points over if one dies)."""
        if self.stopping or self.leases is None:
            return False
        owners = sorted({o for r in self.runners for o in r.waiting_on()})
        if owners and not self._said_waiting:
            self._said_waiting = True
            names = ", ".join(o.rsplit(":", 1)[0] for o in owners)
            self.display.message(
                f"waiting for other controller(s) running points of these sweeps ({names}); "
                f"a controller whose heartbeat stops for longer than its lease has its points taken over"
            )
        return bool(owners)

    def _check_lapse(self) -> None:
        """This controller could not write its heartbeat for longer than its lease (suspended, database away):
        another may have judged it dead and taken its trials over. If so, stop (it re-runs them)."""
        from optuna.trial import TrialState

        try:
            gone = [
                rt
                for rt in self.trials.values()
                if oc.storage(rt.sweep.study).get_trial(oc.trial_id(rt.trial)).state != TrialState.RUNNING
            ]
        except Exception:  # the database is away again: look at the next watch
            return
        if gone:
            raise self._taken_over(f"{len(gone)} of its trial(s)")
        self.display.message(
            f"this controller's heartbeat stopped for {self.leases.lapsed:.0f} s (longer than its lease, "
            f"{self.opts.lease_s:g} s); none of its trials was taken over"
        )
        self.leases.lapsed = None

    def _taken_over(self, what: str) -> _TakenOver:
        lapsed = self.leases.lapsed if self.leases is not None else None
        why = (
            f"this controller's heartbeat stopped for {lapsed:.0f} s, longer than its lease "
            f"({self.opts.lease_s:g} s), and another controller sharing the storage took over {what}"
            if lapsed is not None
            else f"another controller sharing the storage took over {what}"
        )
        return _TakenOver(
            why + ": stopping",
            hint="it re-runs what it took over; run `orchestrate launch` again to help with the rest "
            "(a longer --lease / defaults.lease suits machines that sleep)",
        )
