"""A real single-node Slurm for the tests: munged, slurmctld and slurmd on this machine, in a temp dir.

munged runs with a generated key on its own socket (slurm.conf's ``AuthInfo=socket=`` points the daemons and the
client commands at it); slurmctld and slurmd listen on free ports of 127.0.0.1 with a generated slurm.conf: one
node named after this host, 8 CPUs and 8000 MB declared (``SlurmdParameters=config_overrides``: more trials than
the 2 cores of a CI box may run at once, each asking for one CPU), ``proctrack/linuxproc`` and ``task/none``
(no cgroups needed). Four fake GPUs are gres with ``File=`` character devices the fixture creates (``mknod``,
the null device's numbers); where mknod is not allowed the cluster is CPU-only (``gpus == 0``).

Two partitions: ``debug`` (default) and ``urgent``, whose higher ``PriorityTier`` preempts ``debug`` jobs
(``PreemptType=preempt/partition_prio``, ``PreemptMode=CANCEL``): a real preemption.

The fixture is session-scoped, stopped at teardown (``scontrol shutdown``, then munged), and the tests are
skipped — with the reason and the daemons' log — only when the cluster cannot start. ``.ci/setup`` installs
``slurm-wlm`` and ``munge``.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

BINARIES = ("munged", "slurmctld", "slurmd", "srun", "squeue", "scontrol", "scancel", "sinfo")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Cluster:
    root: Path
    conf: Path
    node: str
    gpus: int
    cpus: int

    def env(self) -> dict[str, str]:
        return {"SLURM_CONF": str(self.conf)}

    def run(self, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, **self.env()}
        proc = subprocess.run(list(argv), env=env, capture_output=True, text=True, timeout=60, check=False)
        if check and proc.returncode != 0:
            raise AssertionError(f"{argv}: exit {proc.returncode}: {proc.stderr}")
        return proc

    def queue(self) -> list[tuple[str, str, str]]:
        """Every job in the queue: (id, name, state)."""
        out = self.run("squeue", "-h", "-o", "%A|%j|%T").stdout
        return [tuple(line.split("|", 2)) for line in out.splitlines() if line.strip()]  # type: ignore[misc]

    def wait_empty(self, timeout: float = 120) -> None:
        """Until no job is in the queue (COMPLETING ones included); a hang guard, nothing timed."""
        deadline = time.time() + timeout
        while self.queue():
            if time.time() > deadline:
                raise AssertionError(f"jobs still in the queue: {self.queue()}")
            time.sleep(0.2)

    def logs(self) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            p = self.root / name
            if p.exists():
                out.append(
                    f"--- {name} (tail)\n" + "\n".join(p.read_text(errors="replace").splitlines()[-15:])
                )
        return "\n".join(out)


def _conf(root: Path, node: str, gpus: int, cpus: int) -> str:
    user = getpass.getuser()
    gres = f" Gres=gpu:{gpus}" if gpus else ""
    return f"""\
ClusterName=orchtest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
AuthType=auth/munge
AuthInfo=socket={root}/munge.sock
CredType=cred/munge
SlurmUser={user}
SlurmdUser={user}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/backfill
PreemptType=preempt/partition_prio
PreemptMode=CANCEL
SlurmdParameters=config_overrides
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
KillWait=5
MessageTimeout=3
MinJobAge=600
DefMemPerCPU=500
GresTypes=gpu
NodeName={node} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=8000{gres} State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes={node} MaxTime=60 State=UP PriorityTier=10
"""


def _start(root: Path) -> Cluster:
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path(f"/usr/sbin/{b}").exists()]
    if missing:
        raise RuntimeError(f"not installed: {', '.join(missing)} (.ci/setup installs slurm-wlm and munge)")
    node = socket.gethostname().split(".")[0]
    cpus = 8
    root.chmod(0o755)  # munged's socket must be reachable
    for d in ("state", "spool"):
        (root / d).mkdir()
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    munged = shutil.which("munged") or "/usr/sbin/munged"
    subprocess.run(
        [munged, "--force", f"--key-file={key}", f"--socket={root}/munge.sock", f"--pid-file={root}/munged.pid",
         f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
        check=True, capture_output=True, timeout=30,
    )  # fmt: skip
    gpus = 4
    try:
        for i in range(gpus):
            os.mknod(
                root / f"gpu{i}", 0o666 | 0o020000, os.makedev(1, 3)
            )  # a character device, like /dev/null
        (root / "gres.conf").write_text(f"NodeName={node} Name=gpu File={root}/gpu[0-{gpus - 1}]\n")
    except OSError:  # not allowed to make device nodes: no fake GPUs, CPU-only trials
        gpus = 0
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, node, gpus, cpus))
    cluster = Cluster(root=root, conf=conf, node=node, gpus=gpus, cpus=cpus)
    env = {**os.environ, **cluster.env()}
    for daemon in ("slurmctld", "slurmd"):
        exe = shutil.which(daemon) or f"/usr/sbin/{daemon}"
        proc = subprocess.run(
            [exe, "-f", str(conf)], env=env, capture_output=True, text=True, timeout=60, check=False
        )
        if proc.returncode != 0:
            raise RuntimeError(f"{daemon} did not start: {proc.stderr.strip()}\n{cluster.logs()}")
    deadline = time.time() + 60
    while True:
        state = cluster.run("sinfo", "-h", "-N", "-o", "%T", check=False)
        states = set(state.stdout.split())  # one line per partition the node is in
        if state.returncode == 0 and states and states <= {"idle", "mixed", "allocated"}:
            break
        if time.time() > deadline:
            raise RuntimeError(
                f"the node did not come up (sinfo: {state.stdout or state.stderr})\n{cluster.logs()}"
            )
        time.sleep(0.2)
    return cluster


def _stop(root: Path) -> None:
    env = {**os.environ, "SLURM_CONF": str(root / "slurm.conf")}
    with contextlib.suppress(Exception):
        subprocess.run(
            ["scancel", "--user", getpass.getuser()], env=env, capture_output=True, timeout=30, check=False
        )
    with contextlib.suppress(Exception):
        subprocess.run(["scontrol", "shutdown"], env=env, capture_output=True, timeout=30, check=False)
    for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
        pid_file = root / name
        deadline = time.time() + 20
        try:
            pid = int(pid_file.read_text().strip())
        except (OSError, ValueError):
            continue
        if name == "munged.pid":
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        while time.time() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[Cluster]:
    root = Path(tempfile.mkdtemp(prefix="orch-slurm-"))
    try:
        cluster = _start(root)
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        _stop(root)
        shutil.rmtree(root, ignore_errors=True)
        reason = f"cannot start a single-node Slurm here: {exc}"
        print(reason)
        pytest.skip(reason)
    saved = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)  # the CLI subprocesses and the client commands find it
    try:
        yield cluster
    finally:
        if saved is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = saved
        _stop(root)
        shutil.rmtree(root, ignore_errors=True)
