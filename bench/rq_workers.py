"""Real RQ workers for the benchmarks: N `python -m jobs.worker QUEUE` processes against the
bench's database and Redis, as on N worker machines (or N workers on one), and the chunk
jobs handed to them through RQ, timed from the first enqueue to the last job finished."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from redis import Redis
from rq import Worker
from rq.job import Job

from portal.tasks import queues

ROOT = Path(__file__).resolve().parent.parent


class Workers:
    """``count`` worker processes on ``queue``, their output in a temporary file each."""

    def __init__(self, count: int, queue: str, env: dict[str, str]):
        self.queue = queue
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen] = []
        base = {
            **os.environ,
            "BUILTIN_BILLING": "false",  # workers only: no scheduler beside them
            "LOG_LEVEL": "warning",
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        for n in range(count):
            log = Path(tempfile.mkstemp(prefix=f"bench-worker-{n}-", suffix=".log")[1])
            self.logs.append(log)
            with open(log, "w") as out:
                self.procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "jobs.worker", queue],
                        cwd=ROOT,
                        env=base,
                        stdout=out,
                        stderr=subprocess.STDOUT,
                    )
                )

    def wait_ready(self, redis: Redis, timeout: float = 180) -> None:
        """Until every worker listens on the queue (each has built the app and connected)."""
        deadline = time.monotonic() + timeout
        pids = {p.pid for p in self.procs}
        while True:
            listening = {
                w.pid for w in Worker.all(connection=redis) if self.queue in w.queue_names()
            }
            if pids <= listening:
                return
            self.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit("the RQ workers did not start:\n" + self.output())
            time.sleep(0.2)

    def check_alive(self) -> None:
        for proc in self.procs:
            if proc.poll() is not None:
                raise SystemExit(f"an RQ worker exited ({proc.returncode}):\n" + self.output())

    def output(self) -> str:
        return "\n".join(log.read_text()[-4000:] for log in self.logs)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for log in self.logs:
            log.unlink(missing_ok=True)


def run_jobs(
    app, workers: Workers, jobs: list[tuple[str, tuple, str]], timeout: float = 1800
) -> tuple[float, list]:
    """Enqueue ``jobs`` ((task, args, job id) each) on the workers' queue, wait for every one
    to finish; returns the wall time and their results. Stops the bench if one fails."""
    with app.app_context():
        redis = queues.redis_connection(app)
        started = time.perf_counter()
        ids = [
            queues.enqueue(workers.queue, task, *args, job_id=job_id).id
            for task, args, job_id in jobs
        ]
        deadline = time.monotonic() + timeout
        while True:
            with redis.pipeline() as pipe:
                for job_id in ids:
                    pipe.hget(Job.key_for(job_id), "status")
                statuses = [s.decode() if s else None for s in pipe.execute()]
            if None in statuses:  # Redis lost it (flushed by someone else?)
                raise SystemExit(f"a chunk job is gone from Redis: {statuses}")
            if "failed" in statuses:
                job = Job.fetch(ids[statuses.index("failed")], connection=redis)
                raise SystemExit(f"a chunk job failed:\n{job.latest_result().exc_string}")
            if all(s == "finished" for s in statuses):
                wall = time.perf_counter() - started
                break
            workers.check_alive()
            if time.monotonic() > deadline:
                raise SystemExit(f"the chunk jobs did not finish: {statuses}")
            time.sleep(0.05)
        results = [Job.fetch(job_id, connection=redis).return_value() for job_id in ids]
    return wall, results
