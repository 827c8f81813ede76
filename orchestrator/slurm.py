"""Talking to a Slurm cluster through its own commands (srun, squeue, scontrol, scancel, sinfo).

Nothing here keeps state: the executor (orchestrator/executors/slurm.py) and ``orchestrate slurm check`` call
these. Every trial's job carries a name and a comment that identify it without the controller's memory:

- name ``orch-<sweep>-<trial dir>[-fold<k>]`` — what ``squeue`` shows people;
- comment ``orchestrate dir=<absolute run dir> ctl=<host>:<pid>`` — which trial, which controller.

A relaunch finds a dead controller's jobs by the run directories of the trials it left (recorded in the study),
matched against the comments of the user's jobs, and cancels them before the trials run again.
"""

from __future__ import annotations

import getpass
import os
import re
import shutil
import socket
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from orchestrator.trial.errors import RunError, UsageError

COMMANDS = ("srun", "squeue", "scontrol", "scancel", "sinfo")
#: job states after which a trial resumes elsewhere instead of failing: the cluster took the job away
LOST_STATES = frozenset(
    {
        "PREEMPTED",
        "NODE_FAIL",
        "BOOT_FAIL",
        "CANCELLED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "SUSPENDED",
    }
)
#: states of a job that has not reached its end yet
LIVE_STATES = frozenset(
    {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "RESIZING", "SIGNALING", "STAGE_OUT"}
)
TIMEOUT = 30.0  # seconds for one query to slurmctld


def require() -> None:
    """The Slurm client commands are on PATH, or a UsageError that says what to install."""
    missing = [c for c in COMMANDS if shutil.which(c) is None]
    if missing:
        raise UsageError(
            f"slots: slurm needs the Slurm client commands, and {', '.join(missing)} is not on PATH",
            hint="run orchestrate on a login node of the cluster (where srun and squeue work), "
            "or use slots: auto / cpu:N / hosts",
        )


def _run(argv: Sequence[str], timeout: float = TIMEOUT) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL
        )
    except FileNotFoundError as exc:
        raise RunError(f"{argv[0]}: not found", hint="is this a Slurm login node?") from exc
    except subprocess.TimeoutExpired as exc:
        raise RunError(f"{' '.join(argv[:2])}: no answer from Slurm in {timeout:g} s") from exc


# ----- names --------------------------------------------------------------------------------------------
_UNSAFE = re.compile(r"[^A-Za-z0-9_.+-]+")


def job_name(run_dir: Path) -> str:
    """``orch-<sweep>-<trial dir>[-fold<k>]`` from a trial's run directory (runs/<sweep>/<trial>[/fold<k>])."""
    parts = [run_dir.parent.name, run_dir.name]
    if run_dir.name.startswith("fold") and run_dir.parent.parent.name:
        parts = [run_dir.parent.parent.name, run_dir.parent.name, run_dir.name]
    return "orch-" + "-".join(_UNSAFE.sub("_", p) for p in parts if p)[:120]


def controller_tag() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def job_comment(run_dir: Path) -> str:
    return f"orchestrate dir={Path(run_dir).resolve()} ctl={controller_tag()}"


def comment_dir(comment: str) -> str | None:
    m = re.search(r"\bdir=(\S+)", comment or "")
    return m.group(1) if m else None


# ----- jobs ---------------------------------------------------------------------------------------------
def my_jobs() -> list[dict[str, str]]:
    """The user's jobs in the queue: ``[{"id", "name", "state", "comment"}]`` (orchestrate's and others)."""
    proc = _run(["squeue", "-h", "-u", getpass.getuser(), "-o", "%A|%j|%T|%k"])
    if proc.returncode != 0:
        raise RunError(f"squeue failed: {proc.stderr.strip() or proc.returncode}")
    jobs = []
    for line in proc.stdout.splitlines():
        parts = line.split("|", 3)
        if len(parts) == 4:
            jobs.append(dict(zip(("id", "name", "state", "comment"), parts, strict=True)))
    return jobs


def job_info(job_id: str) -> dict[str, str]:
    """``scontrol show job ID`` as a dict (empty once Slurm forgot the job, MinJobAge after its end)."""
    proc = _run(["scontrol", "-o", "show", "job", str(job_id)])
    if proc.returncode != 0:
        return {}
    info: dict[str, str] = {}
    for word in proc.stdout.split():
        k, sep, v = word.partition("=")
        if sep and k not in info:
            info[k] = v
    return info


def cancel(job_ids: Iterable[str], signal: str | None = None) -> None:
    ids = [str(j) for j in job_ids if j]
    if not ids:
        return
    argv = ["scancel", *(["--signal", signal] if signal else []), *ids]
    _run(argv)


def jobs_under(dirs: Iterable[str]) -> list[dict[str, str]]:
    """The user's orchestrate jobs whose run directory is one of ``dirs`` or below one (a trial's folds)."""
    roots = [str(Path(d).resolve()) for d in dirs if d]
    found = []
    for job in my_jobs():
        where = comment_dir(job["comment"])
        if where is None or not job["comment"].startswith("orchestrate "):
            continue
        if any(where == r or where.startswith(r.rstrip("/") + "/") for r in roots):
            found.append(job)
    return found


# ----- cluster report (orchestrate slurm check) -----------------------------------------------------------
def seconds(limit: str | None) -> float | None:
    """A Slurm time (``90``, ``1:30:00``, ``2-00:00:00``, ``infinite``) in seconds; None: no limit."""
    if limit is None:
        return None
    text = limit.strip().lower()
    if text in ("infinite", "unlimited", "n/a", ""):
        return None
    days = 0
    if "-" in text:
        d, text = text.split("-", 1)
        days = int(d)
        nums = [int(x) for x in text.split(":")]
        nums += [0] * (3 - len(nums))  # D-HH, D-HH:MM, D-HH:MM:SS
        h, m, s = nums
    else:
        nums = [int(x) for x in text.split(":")]
        if len(nums) == 1:
            h, m, s = 0, nums[0], 0  # minutes
        elif len(nums) == 2:
            h, m, s = 0, nums[0], nums[1]
        else:
            h, m, s = nums
    return float(((days * 24 + h) * 60 + m) * 60 + s)


def gres_count(gres: str, kind: str = "gpu") -> int:
    """How many ``kind`` a gres string names: ``gpu:4`` → 4, ``gpu:a100:2(S:0-1),shard:8`` → 2."""
    total = 0
    for part in gres.split(","):
        fields = re.sub(r"\(.*?\)", "", part).split(":")
        if fields[0] != kind:
            continue
        total += int(fields[-1]) if len(fields) > 1 and fields[-1].isdigit() else 1
    return total


def cluster() -> dict[str, Any]:
    """Partitions and nodes as sinfo reports them."""
    parts = _run(["sinfo", "-h", "-o", "%P|%a|%l|%D|%c|%m|%G"])
    if parts.returncode != 0:
        raise RunError(f"sinfo failed: {parts.stderr.strip() or parts.returncode}", hint="is slurmctld up?")
    nodes = _run(["sinfo", "-h", "-N", "-o", "%N|%P|%T|%c|%m|%G"])
    partitions = []
    for line in parts.stdout.splitlines():
        f = line.split("|")
        if len(f) != 7:
            continue
        partitions.append(
            {
                "name": f[0].rstrip("*"),
                "default": f[0].endswith("*"),
                "available": f[1],
                "time_limit": f[2],
                "nodes": int(f[3]) if f[3].isdigit() else f[3],
                "cpus": f[4],
                "memory_mb": f[5],
                "gres": f[6],
            }
        )
    node_rows = []
    for line in nodes.stdout.splitlines():
        f = line.split("|")
        if len(f) == 6:
            node_rows.append(
                {
                    "name": f[0],
                    "partition": f[1].rstrip("*"),
                    "state": f[2],
                    "cpus": f[3],
                    "memory_mb": f[4],
                    "gres": f[5],
                    "gpus": gres_count(f[5]),
                }
            )
    return {"partitions": partitions, "nodes": node_rows}


def check(spec: Any, srun_args: Sequence[str]) -> dict[str, Any]:
    """What the cluster offers, and whether a trial's job (``srun_args``) would be accepted: Slurm's own
    ``srun --test-only`` answer (partition, account, QOS, gres, limits), plus our reading of the limits."""
    report = cluster()
    problems: list[str] = []
    parts = report["partitions"]
    wanted = spec.partition or next((p["name"] for p in parts if p["default"]), None)
    part = next((p for p in parts if p["name"] == wanted), None)
    if part is None:
        problems.append(
            f"partition {wanted!r} does not exist (partitions: {', '.join(p['name'] for p in parts) or 'none'})"
            if wanted
            else "no partition given and the cluster has no default partition: set slurm.partition"
        )
    else:
        if part["available"] != "up":
            problems.append(f"partition {wanted} is {part['available']}")
        limit, asked = seconds(part["time_limit"]), seconds(spec.time)
        if limit is not None and asked is not None and asked > limit:
            problems.append(f"time {spec.time} is above partition {wanted}'s limit {part['time_limit']}")
        gpus = max((n["gpus"] for n in report["nodes"] if n["partition"] == wanted), default=0)
        need = gres_count(spec.gres) if spec.gres else 0
        if need > gpus:
            problems.append(
                f"gres {spec.gres}: no node of partition {wanted} has {need} GPU(s) (most: {gpus})"
            )
    test = _run(["srun", "--test-only", *srun_args, "true"])
    answer = (test.stdout + test.stderr).strip()
    if test.returncode != 0:
        problems.append(f"Slurm refuses a trial's job: {answer}")
    report.update(partition=wanted, srun_test=answer, problems=problems, ok=not problems)
    return report


def describe(report: dict[str, Any]) -> str:
    lines = ["partitions:"]
    for p in report["partitions"]:
        mark = " (default)" if p["default"] else ""
        lines.append(
            f"  {p['name']}{mark}: {p['available']}, time limit {p['time_limit']}, {p['nodes']} node(s), "
            f"gres {p['gres']}"
        )
    lines.append("nodes:")
    for n in report["nodes"]:
        lines.append(
            f"  {n['name']} [{n['partition']}]: {n['state']}, {n['cpus']} CPUs, {n['memory_mb']} MB, "
            f"{n['gpus']} GPU(s) (gres {n['gres']})"
        )
    lines.append(f"a trial's job: {report['srun_test']}")
    return "\n".join(lines)
