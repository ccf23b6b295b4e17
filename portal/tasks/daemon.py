"""The billing daemon (`flask billing daemon`) and the built-in failover scheduler.

Both run the same loop: every heartbeat they record their status, hold or wait for the
leader lease and, while leading, create and enqueue the run of every due slot
(portal.services.scheduler explains why no slot runs twice). Several daemons may run; one
leads, the others stand by and take over when its lease expires.

The built-in scheduler is what a worker runs (``python -m jobs.daemon --builtin``, started
beside every worker): it pauses while any daemon's heartbeat is younger than
BUILTIN_BILLING_AFTER_MINUTES and schedules, through the same lease, when none is.

SIGTERM or SIGINT: no new cycle starts, the current one finishes, the lease is released,
the status becomes stopped, database connections are closed, exit 0.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from flask import Flask

from ..extensions import db
from ..models import DaemonState, SchedulerKind, SchedulerRole, utcnow
from . import clock as clock_module
from . import relay, scheduler

log = logging.getLogger("jobs.daemon")  # as operators know it: the process is jobs.daemon
MIN_WAIT = timedelta(milliseconds=200)


class Scheduler:
    """One scheduler process. ``clock`` is the real time (lease, heartbeat): the database
    server's unless a test passes its own; the schedule reads ``clock() + schedule_offset``,
    which ``--now`` sets for tests and replays. With the database's clock, a process whose
    own clock (``local_clock``) is more than clock.MAX_SKEW off does not lead, and says so."""

    def __init__(
        self,
        app: Flask,
        *,
        kind: SchedulerKind = SchedulerKind.DAEMON,
        clock: Callable[[], datetime] | None = None,
        local_clock: Callable[[], datetime] = utcnow,
        schedule_offset: timedelta = timedelta(0),
        instance: str | None = None,
        parent_pid: int | None = None,
    ):
        config = app.config
        self.app, self.kind, self.offset = app, kind, schedule_offset
        self.clock = clock or clock_module.database_now
        self.local_clock, self.check_skew = local_clock, clock is None
        self.skewed = False
        self.heartbeat = scheduler.duration(config["DAEMON_HEARTBEAT_SECONDS"])
        self.lease_ttl = scheduler.duration(config["DAEMON_LEASE_SECONDS"])
        self.builtin_after = scheduler.duration(config["BUILTIN_BILLING_AFTER_MINUTES"], "minutes")
        self.instance = instance or scheduler.instance_id()
        self.parent_pid = parent_pid
        self.epoch: int | None = None
        self.role = SchedulerRole.STANDBY
        self.registered = False
        self.stopping = threading.Event()
        self.relay_every = scheduler.duration(config["JOB_RELAY_SECONDS"])

    # -- one cycle ---------------------------------------------------------------------------
    def step(self) -> timedelta:
        """Heartbeat, lease, schedule. A failure is logged and recorded, never raised.
        Returns how long to wait before the next cycle."""
        now = self._now()
        try:
            if self._clock_is_off(now):
                return self._wait_after(now)
            if not self.registered:  # the status row exists before any run reports to it
                self._beat(now)
                self.registered = True
            if self.kind == SchedulerKind.BUILTIN and scheduler.daemon_alive(
                now=now, within=self.builtin_after
            ):
                self._pause(now)
            else:
                self._lead_or_stand_by(now)
            self._beat(now)
        except Exception as exc:
            # Not rollback(): an enqueue that fails after commit leaves the session committed.
            db.session.remove()
            log.error("cycle failed (the daemon keeps running): %s", exc)
            log.debug("the failed cycle's traceback", exc_info=exc)
            self._record_error(now, exc)
        return self._wait_after(now)

    def _now(self) -> datetime:
        try:
            return self.clock()
        except Exception as exc:  # the database is away: this cycle fails and is logged
            db.session.remove()
            log.debug("no database time (%s): using this machine's", exc)
            return self.local_clock()

    def _clock_is_off(self, now: datetime) -> bool:
        """A process whose clock is off by more than MAX_SKEW gives up the lead and stands
        by (its status row says why) until the clocks agree again."""
        if not self.check_skew:
            return False
        skew = self.local_clock() - now
        if abs(skew) <= clock_module.MAX_SKEW:
            if self.skewed:
                log.info("this machine's clock agrees with the database's again")
            self.skewed = False
            return False
        message = (
            f"this machine's clock differs from the database's by {skew.total_seconds():+.0f} s"
            f" (more than {clock_module.MAX_SKEW.total_seconds():.0f} s): not leading"
        )
        if not self.skewed:
            log.error("%s; fix the clock (NTP)", message)
        self.skewed = True
        try:
            self._release(now)
            self.role = SchedulerRole.STANDBY
            scheduler.heartbeat(
                self.instance,
                kind=self.kind,
                role=self.role,
                epoch=None,
                state=DaemonState.ERROR,
                now=now,
                error=message,
            )
            self.registered = True
            db.session.commit()
        except Exception as exc:
            db.session.remove()
            log.error("could not record the clock's skew: %s", exc)
        return True

    def _beat(self, now: datetime) -> None:
        scheduler.heartbeat(
            self.instance,
            kind=self.kind,
            role=self.role,
            epoch=self.epoch,
            state=DaemonState.RUNNING,
            now=now,
        )
        db.session.commit()

    def _pause(self, now: datetime) -> None:
        if self.role != SchedulerRole.PAUSED:
            log.info("a billing daemon is alive: built-in billing pauses")
        self._release(now)
        self.role = SchedulerRole.PAUSED

    def _lead_or_stand_by(self, now: datetime) -> None:
        if self.role == SchedulerRole.PAUSED:
            log.warning(
                "no billing daemon heartbeat for %s: built-in billing takes over",
                self.builtin_after,
            )
        epoch = scheduler.hold_lease(
            holder=self.instance, epoch=self.epoch, now=now, ttl=self.lease_ttl
        )
        db.session.commit()
        if epoch != self.epoch:
            if epoch is None:
                log.warning("lost the lease (epoch %s): standing by", self.epoch)
            else:
                log.info("leading the schedule (lease epoch %s)", epoch)
        self.epoch = epoch
        self.role = SchedulerRole.LEADER if epoch is not None else SchedulerRole.STANDBY
        if epoch is not None:
            self._schedule(now, epoch)

    def _schedule(self, now: datetime, epoch: int) -> None:
        log.debug("cycle: scheduling up to %s", self.schedule_now(now).isoformat())
        try:
            runs = scheduler.claim_due_runs(
                scheduler.periodic_jobs(),
                holder=self.instance,
                epoch=epoch,
                now=now,
                ttl=self.lease_ttl,
                until=self.schedule_now(now),
            )
            ids, names = [r.id for r in runs], [r.job_id for r in runs]
            db.session.commit()  # the runs are enqueued once this commits
        except scheduler.LeaseLost as exc:
            db.session.rollback()
            log.warning("%s: standing by", exc.message)
            self.epoch, self.role = None, SchedulerRole.STANDBY
            return
        if names:
            log.info("enqueued %s", ", ".join(names))
        scheduler.mark_enqueued(ids, now=now)
        db.session.commit()
        again = scheduler.sweep_runs(now=now, grace=self.heartbeat)
        again_names = [r.job_id for r in again]
        db.session.commit()
        if again_names:
            log.warning("enqueued again (the first enqueue was lost): %s", ", ".join(again_names))

    def relay_once(self) -> None:
        """While leading: move job requests to RQ (portal.tasks.relay). Logged, never raised."""
        if self.role != SchedulerRole.LEADER:
            return
        with self.app.app_context():
            try:
                counts = relay.relay(grace=2 * self.relay_every)
                if any(counts.values()):
                    log.debug("relay: %s", counts)
            except Exception as exc:
                log.warning("job relay failed (it tries again): %s", exc)
            finally:
                db.session.remove()

    def _relay_loop(self) -> None:
        while not self.stopping.wait(self.relay_every.total_seconds()):
            self.relay_once()

    def _record_error(self, now: datetime, exc: Exception) -> None:
        try:
            scheduler.heartbeat(
                self.instance,
                kind=self.kind,
                role=self.role,
                epoch=self.epoch,
                state=DaemonState.ERROR,
                now=now,
                error=str(exc),
            )
            db.session.commit()
        except Exception:  # the database itself may be what failed
            db.session.rollback()
            log.error("could not record the error in billing_daemon_status")

    def _release(self, now: datetime) -> None:
        if self.epoch is not None:
            if scheduler.release_lease(holder=self.instance, epoch=self.epoch, now=now):
                log.info("released the lease (epoch %s)", self.epoch)
            db.session.commit()
        self.epoch = None

    def schedule_now(self, now: datetime) -> datetime:
        return now + self.offset

    def _wait_after(self, now: datetime) -> timedelta:
        wait = self.heartbeat
        if self.role == SchedulerRole.LEADER:
            # Wake for the next due time if it comes before the next heartbeat.
            at = self.schedule_now(now)
            try:
                soonest = min((job.next_due(at) for job in scheduler.periodic_jobs()), default=None)
            except Exception:
                soonest = None
            if soonest is not None:
                wait = min(wait, soonest - at + timedelta(seconds=1))
        return max(wait - (self._now() - now), MIN_WAIT)

    # -- the process -------------------------------------------------------------------------
    def orphaned(self) -> bool:
        return self.parent_pid is not None and os.getppid() != self.parent_pid

    def run(self) -> None:
        log.info(
            "%s %s started (heartbeat %ss, lease %ss%s)",
            self._label(),
            self.instance,
            self.heartbeat.total_seconds(),
            self.lease_ttl.total_seconds(),
            f", schedule clock shifted by {self.offset}" if self.offset else "",
        )
        if self.kind == SchedulerKind.BUILTIN:
            # Give a daemon started alongside (make run) the time to beat first.
            self.stopping.wait(self.heartbeat.total_seconds())
        # The relay runs beside the schedule, more often than the heartbeat.
        relay_thread = threading.Thread(target=self._relay_loop, name="job-relay", daemon=True)
        relay_thread.start()
        while not self.stopping.is_set():
            if self.orphaned():
                log.warning("the worker that started this scheduler is gone: stopping")
                break
            wait = self.step()
            self.stopping.wait(wait.total_seconds())
        self.stopping.set()
        relay_thread.join(timeout=30)
        self.shutdown()

    def shutdown(self) -> None:
        now = self._now()
        try:
            self._release(now)
            self.role = SchedulerRole.STANDBY
            scheduler.heartbeat(
                self.instance,
                kind=self.kind,
                role=self.role,
                epoch=None,
                state=DaemonState.STOPPED,
                now=now,
            )
            db.session.commit()
        except Exception:
            db.session.rollback()
            log.exception("could not record the stop")
        finally:
            db.session.remove()
            db.engine.dispose()
        log.info("%s %s stopped", self._label(), self.instance)

    def stop(self, signum: int | None = None, _frame=None) -> None:
        if signum is not None:
            log.info(
                "%s received: finishing the current cycle, then stopping",
                signal.Signals(signum).name,
            )
        self.stopping.set()

    def _label(self) -> str:
        return "billing daemon" if self.kind == SchedulerKind.DAEMON else "built-in billing"


def parse_now(value: str | None) -> timedelta:
    """``--now 2026-11-21T18:30Z``: the schedule runs as if the time were that (and moves
    on from there); the offset to the real time."""
    if not value:
        return timedelta(0)
    try:
        at = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"must be an ISO 8601 time, not {value!r}") from None
    if at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    offset = at - utcnow()
    if offset > timedelta(0):
        # Jobs would process hours that have not happened yet.
        raise ValueError(f"must not be in the future, not {value!r}")
    return offset


def run(
    app: Flask,
    *,
    kind: SchedulerKind = SchedulerKind.DAEMON,
    now: str | None = None,
    once: bool = False,
    parent_pid: int | None = None,
) -> int:
    """Run a scheduler in this process until SIGTERM/SIGINT (or one cycle with ``once``)."""
    sched = Scheduler(app, kind=kind, schedule_offset=parse_now(now), parent_pid=parent_pid)
    signal.signal(signal.SIGTERM, sched.stop)
    signal.signal(signal.SIGINT, sched.stop)
    with app.app_context():
        if once:
            sched.step()
            sched.relay_once()
            sched.shutdown()
        else:
            sched.run()
    return 0


def start_builtin(app: Flask) -> subprocess.Popen | None:
    """Start the built-in failover scheduler beside a worker (None when BUILTIN_BILLING is
    off). It stops on SIGTERM and when the worker goes away."""
    if not app.config.get("BUILTIN_BILLING", True):
        return None
    return subprocess.Popen(
        [sys.executable, "-m", "jobs.daemon", "--builtin", "--parent-pid", str(os.getpid())]
    )


def stop_builtin(process: subprocess.Popen | None, timeout: float = 30) -> None:
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
