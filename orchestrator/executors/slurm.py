"""Run each trial as its own Slurm job: one ``srun`` process per trial on the controller's machine.

``srun -p … --gres=gpu:1 -c … --job-name orch-<sweep>-<trial> --comment 'orchestrate dir=RUN_DIR …' -- CMD``
asks slurmctld for an allocation, starts the trial's command on the node it gets, and forwards the trial's
stdout back over its own stdout: the controller reads the same protocol lines as from a local child (pruning
works across the cluster) and stays the only writer of the study. The trial runs in the project directory, with
its run directory at the same absolute path: the cluster's shared filesystem holds code, data and results, so
nothing is copied (docs/slurm.md argues srun over sbatch).

The trial is wrapped in ``sh -c`` that first prints the job's id as a protocol line; the controller records it
in the study (the ``remote`` attribute, as for an SSH trial), so a relaunch after the controller died cancels
the job it left (:meth:`SlurmExecutor.cleanup`).

Exit semantics: ``srun`` exits with the trial's exit code. When it is not 0 and the controller did not stop the
job, the job's state says why: PREEMPTED, NODE_FAIL, CANCELLED (an external ``scancel``), REQUEUED … mean the
cluster took the job away — not the trial's fault — so the job is marked ``job.lost`` and reported as 255, the
path a lost SSH host takes: the trial goes back to the queue (same parameters, no attempt counted) and resumes
from the checkpoint in its run directory. TIMEOUT (the job's time limit) is a failure: retried with the sweep's
``retries``, and a retry resumes from the checkpoint too, but a trial that can never finish in the time limit
does not loop for ever.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from orchestrator import slurm as sl
from orchestrator.executors._base import Executor, Job
from orchestrator.executors.local import _dies_with_parent
from orchestrator.slots import Slot
from orchestrator.spec.model import SlurmSpec
from orchestrator.trial import protocol
from orchestrator.trial.errors import UsageError

HOST = "slurm"  # the ``host`` of every Slurm slot (a lost job rests no slot: the queue decides where it runs)
#: prints the job's id as a protocol line, then becomes the trial (argv after the wrapper's name)
_WRAP = (
    'printf \'%s{"event":"info","slurm_job_id":"%s","slurm_node":"%s"}\\n\' "$ORCHESTRATE_PREFIX" '
    '"$SLURM_JOB_ID" "$(hostname)"; unset ORCHESTRATE_PREFIX; exec "$@"'
)
_QUEUED = re.compile(r"srun: job (\d+) queued and waiting for resources")
STATE_WAIT_S = 15.0  # after srun ended: how long to wait for slurmctld to settle the job's final state


def slots(spec: SlurmSpec) -> list[Slot]:
    """``slots: slurm``: ``max_concurrent`` slots, each one trial queued or running as a job."""
    kind = "gpu" if spec.gpus else "cpu"
    threads = spec.cpus_per_trial or 1
    return [Slot(id=f"slurm{i}", kind=kind, host=HOST, threads=threads) for i in range(spec.max_concurrent)]


def srun_args(spec: SlurmSpec) -> list[str]:
    """The resources of one trial's job, as srun options."""
    args = ["--nodes=1", "--ntasks=1"]
    if spec.partition:
        args.append(f"--partition={spec.partition}")
    if spec.account:
        args.append(f"--account={spec.account}")
    if spec.qos:
        args.append(f"--qos={spec.qos}")
    if spec.time:
        args.append(f"--time={spec.time}")
    if spec.gres:
        args.append(f"--gres={spec.gres}")
    if spec.cpus_per_trial:
        args.append(f"--cpus-per-task={spec.cpus_per_trial}")
    if spec.mem_per_trial:
        args.append(f"--mem={spec.mem_per_trial}")
    return args + list(spec.srun_flags)


def _srun_env(env: Mapping[str, str], spec: SlurmSpec) -> dict[str, str]:
    """The trial's environment as srun passes it on (``--export=ALL``), adjusted for the job.

    A controller started inside an allocation (``salloc``, an sbatch script) would otherwise start job steps of
    that allocation: its SLURM_* variables are dropped (SLURM_CONF kept), so each trial is a job of its own.
    With GPUs in the gres, Slurm sets CUDA_VISIBLE_DEVICES on the node; without, the trial sees none."""
    out = {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
    out.pop("CUDA_VISIBLE_DEVICES", None)
    if not spec.gpus:
        out["CUDA_VISIBLE_DEVICES"] = ""
    if spec.cpus_per_trial:
        out["OMP_NUM_THREADS"] = out["MKL_NUM_THREADS"] = str(spec.cpus_per_trial)
    out["ORCHESTRATE_PREFIX"] = protocol.PREFIX
    return out


class SlurmExecutor(Executor):
    def __init__(
        self,
        events: queue.Queue[tuple[str, Job, Any]],
        specs: Mapping[str, SlurmSpec] | None = None,
        default: SlurmSpec | None = None,
    ) -> None:
        super().__init__(events)
        sl.require()
        self.specs = dict(specs or {})  # sweep name → its slurm block (over the defaults)
        self.default = default or SlurmSpec()
        self._lock = threading.Lock()
        self._live: dict[str, tuple[Job, subprocess.Popen[bytes]]] = {}
        self._ids: dict[str, str] = {}  # job key → Slurm job id, once the job started
        self._stderr_at: dict[str, int] = {}  # job key → size of its stderr.log when srun started
        self._back: list[str] = []
        self.closed = False

    # ----- start -----
    def spec_for(self, env: Mapping[str, str]) -> SlurmSpec:
        return self.specs.get(env.get("ORCHESTRATE_SWEEP", ""), self.default)

    def command(self, job: Job, spec: SlurmSpec, cwd: Path) -> list[str]:
        return [
            "srun",
            *srun_args(spec),
            f"--job-name={sl.job_name(job.run_dir.path)}",
            f"--comment={sl.job_comment(job.run_dir.path)}",
            f"--chdir={cwd.resolve()}",
            "--input=none",
            "--",
            "sh",
            "-c",
            _WRAP,
            "orchestrate-trial",
            *job.argv,
        ]

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        job.run_dir.create()
        spec = self.spec_for(env)
        stdout_log = open(job.run_dir.stdout_log, "ab")  # noqa: SIM115 - owned by the reader thread
        try:
            stderr_log = open(job.run_dir.stderr_log, "ab")  # noqa: SIM115
        except OSError:
            stdout_log.close()
            raise
        job.started = time.time()
        with contextlib.suppress(OSError):
            self._stderr_at[job.key] = job.run_dir.stderr_log.stat().st_size
        try:
            argv, preexec = _dies_with_parent(self.command(job, spec, cwd), dict(os.environ), cwd)
            proc = subprocess.Popen(
                argv,
                cwd=str(cwd),
                env=_srun_env(env, spec),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=stderr_log,
                start_new_session=True,  # Ctrl-C reaches the controller only; it cancels the jobs itself
                preexec_fn=preexec,
            )
        except OSError as exc:
            stdout_log.close()
            stderr_log.write(f"orchestrate: cannot run srun: {exc}\n".encode())
            stderr_log.close()
            job.ended = time.time()
            self.events.put(("exit", job, 127))
            return
        stderr_log.close()
        job.handle = proc
        job.pid = proc.pid
        with self._lock:
            self._live[job.key] = (job, proc)
        threading.Thread(
            target=self._pump, args=(job, proc, stdout_log), daemon=True, name=f"srun-{job.key}"
        ).start()

    def _pump(self, job: Job, proc: subprocess.Popen[bytes], log: Any) -> None:
        assert proc.stdout is not None
        for raw in iter(proc.stdout.readline, b""):
            event = protocol.parse_line(raw.decode("utf-8", "replace"))
            if (
                event is not None
                and event.get("event") == protocol.EVENT_INFO
                and "slurm_job_id" in event
                and job.key not in self._ids
            ):  # the wrapper's first line (a trial saying the same later is only logged)
                self._started(job, event)
                continue
            with contextlib.suppress(OSError):  # a full disk loses log lines, never the events
                log.write(raw)
            if event is not None:
                with contextlib.suppress(OSError):
                    log.flush()
                self.events.put(("event", job, event))
        with contextlib.suppress(OSError):
            log.close()
        proc.stdout.close()
        rc = proc.wait()
        try:
            lost = self._why_lost(job, rc)
        except Exception as exc:  # slurmctld did not answer: the trial's exit code stands
            lost = None
            self._note(job, f"could not read the state of slurm job {self._ids.get(job.key)}: {exc}")
        with self._lock:
            self._live.pop(job.key, None)
            self._ids.pop(job.key, None)
            self._stderr_at.pop(job.key, None)
        job.ended = time.time()
        if lost is not None:
            job.lost = lost
            self._note(job, lost)
            rc = 255
        self.events.put(("exit", job, rc))

    def _started(self, job: Job, event: dict[str, Any]) -> None:
        job_id = str(event["slurm_job_id"])
        with self._lock:
            self._ids[job.key] = job_id
        self._note(
            job, f"slurm job {job_id} ({sl.job_name(job.run_dir.path)}) runs on {event.get('slurm_node')}"
        )
        # recorded in the study like an SSH trial's remote process: a relaunch cancels what a dead controller left
        info = {
            "event": protocol.EVENT_INFO,
            "remote_pid": job_id,
            "remote_run_dir": str(job.run_dir.path.resolve()),
            "slurm_job_id": job_id,
        }
        self.events.put(("event", job, info))
        if job.stopping is not None:  # stopped before its id was known: cancel it now
            self._signal(job, "TERM")

    def _why_lost(self, job: Job, rc: int) -> str | None:
        """Whether the cluster took the job away (preempted, node failure, scancel): the reason, else None."""
        job_id = self._ids.get(job.key) or self._queued_id(job)
        if rc == 0 or job.stopping is not None or job_id is None:
            return None
        deadline = time.monotonic() + STATE_WAIT_S
        info = sl.job_info(job_id)
        while info.get("JobState") in sl.LIVE_STATES and time.monotonic() < deadline:
            time.sleep(0.2)
            info = sl.job_info(job_id)
        state = info.get("JobState", "")
        if state in sl.LOST_STATES or info.get("Restarts", "0") not in ("0", ""):
            reason = info.get("Reason", "None")
            why = f"{state.lower()}" + (f", {reason}" if reason not in ("None", "") else "")
            return f"slurm job {job_id} ({sl.job_name(job.run_dir.path)}) was {why}"
        if state == "TIMEOUT":
            self._note(
                job,
                f"slurm job {job_id} reached its time limit ({info.get('TimeLimit')}): the trial failed; a retry "
                "resumes from its checkpoint; raise slurm.time for longer trials",
            )
        return None

    def _queued_id(self, job: Job) -> str | None:
        """The id of a job that ended before it started (cancelled while queued): srun said it on stderr."""
        try:
            with open(job.run_dir.stderr_log, "rb") as fh:
                fh.seek(self._stderr_at.get(job.key, 0))
                text = fh.read(1 << 20).decode("utf-8", "replace")
        except OSError:
            return None
        m = _QUEUED.search(text)
        return m.group(1) if m else None

    def _note(self, job: Job, text: str) -> None:
        with contextlib.suppress(OSError), open(job.run_dir.stderr_log, "ab") as fh:
            fh.write(f"orchestrate: {text}\n".encode())

    # ----- stop -----
    def stop(self, job: Job, grace: float = 10.0) -> None:
        proc = job.handle
        if proc is None or proc.poll() is not None:
            return
        threading.Thread(
            target=self._stop, args=(job, proc, grace), daemon=True, name=f"stop-{job.key}"
        ).start()

    def _stop(self, job: Job, proc: subprocess.Popen[bytes], grace: float) -> None:
        """SIGTERM to the trial (``scancel --signal=TERM``: it may save a checkpoint); the whole job cancelled
        after ``grace`` seconds; srun killed if it still waits 10 s later."""
        self._signal(job, "TERM")
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace)
            return
        self._signal(job, None)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
            return
        with contextlib.suppress(ProcessLookupError):
            proc.kill()

    def _signal(self, job: Job, signal: str | None) -> None:
        job_id = self._ids.get(job.key)
        if job_id is None:  # not started yet (queued): srun withdraws its request when terminated
            proc = job.handle
            if proc is not None and proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()
            return
        with contextlib.suppress(Exception):
            sl.cancel([job_id], signal)

    # ----- the scheduler's lost-host hooks -----
    def host_lost(self, name: str) -> None:
        """A preempted job rests no slot: the cluster's queue decides where its retry runs."""
        with self._lock:
            self._back.append(name)

    def hosts_back(self) -> list[str]:
        with self._lock:
            back, self._back = self._back, []
        return back

    # ----- a dead controller's jobs -----
    def cleanup(self, orphans: Sequence[dict[str, Any]]) -> list[str]:
        """Cancel the jobs of trials a dead controller left (``[{"host": "slurm", "run_dir", "pid": job id}]``)
        and wait until they left the queue, so that the re-run never shares a run directory with them."""
        dirs = [str(o["run_dir"]) for o in orphans if o.get("host") == HOST and o.get("run_dir")]
        if not dirs:
            return []
        try:
            jobs = sl.jobs_under(dirs)
            sl.cancel(j["id"] for j in jobs)
        except Exception as exc:
            return [f"could not cancel the slurm jobs a dead controller left: {exc}"]
        # until each one ends: gone from the queue, or COMPLETING (its processes were signalled; slurmstepd may
        # still try to reach a hung srun of the dead controller for a while, which holds no trial process)
        ids = {j["id"] for j in jobs}
        deadline = time.monotonic() + 120
        while ids and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                ids = {j["id"] for j in sl.my_jobs() if j["id"] in ids and j["state"] != "COMPLETING"}
            if ids:
                time.sleep(0.2)
        notes = [f"cancelled slurm job {j['id']} ({j['name']}) left by a dead controller" for j in jobs]
        if ids:
            notes.append(f"slurm job(s) {', '.join(sorted(ids))} still in the queue after scancel")
        return notes

    def close(self) -> None:
        """Cancel whatever still runs (the controller normally waits for every job to end first)."""
        self.closed = True
        with self._lock:
            live = list(self._live.values())
            ids = [self._ids[j.key] for j, _ in live if j.key in self._ids]
        with contextlib.suppress(Exception):
            sl.cancel(ids)
        for _, proc in live:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.terminate()


def launch_setup(
    defaults: Any, sweeps: Sequence[Any], file: Any = "the sweep file"
) -> tuple[list[Slot], dict[str, SlurmSpec]]:
    """``slots: slurm``: the launch's slots and its slurm blocks (sweep name → block; ``""``: the defaults').

    Each distinct block is checked first (``orchestrate slurm check``'s reading of sinfo, and Slurm's own
    ``srun --test-only``): a job Slurm refuses, or would keep pending for ever (a time limit above the
    partition's), stops the launch with exit code 2 instead of trials that fail or wait without end."""
    sl.require()
    base = getattr(defaults, "slurm", None) or SlurmSpec()
    specs = {"": base, **{s.name: (getattr(s, "slurm", None) or base) for s in sweeps}}
    where: dict[SlurmSpec, str] = {}  # each distinct block a sweep uses → the key it was written under
    for i, s in enumerate(sweeps):
        own = getattr(s, "slurm", None) is not None and s.slurm != base
        where.setdefault(specs[s.name], f"{s.key or f'sweeps[{i}]'}.slurm" if own else "defaults.slurm")
    for spec, key in where.items():
        problems = sl.check(spec, srun_args(spec))["problems"]
        if problems:
            line = f":{spec.line}" if spec.line else ""
            raise UsageError(
                f"{file}{line}: {key}: " + "; ".join(problems),
                hint=f"change the slurm: block (see `orchestrate slurm check {file}`)",
            )
    return slots(base), specs
