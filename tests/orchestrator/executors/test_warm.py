"""Warm workers with real processes: one zygote imports for every slot, trials see their own environment,
stops reach the trial, and a dead zygote, worker or controller is handled."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from orchestrator.executors._base import Job
from orchestrator.executors.warm import WarmExecutor
from orchestrator.slots import Slot
from orchestrator.trial.rundir import RunDir
from tests.orchestrator.executors.test_local import _alive
from tests.wandb_files import read_offline_run

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="fork servers and PDEATHSIG: Linux"
)

ROOT = Path(__file__).resolve().parents[3]

# imported by the zygote (preload): each import appends this process's pid to $PROBE_LOG
PROBE = """
import os
with open(os.environ["PROBE_LOG"], "a") as fh:
    fh.write(f"{os.getpid()}\\n")
"""
# the trial: says what it sees, then sleeps for --sleep seconds
TRIAL = """
import json, os, sys, time
from orchestrator.trial import protocol
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
protocol.emit(
    "info",
    preloaded="warmprobe" in sys.modules,
    pid=os.getpid(),
    ppid=os.getppid(),
    slot_gpu=os.environ.get("CUDA_VISIBLE_DEVICES"),
    metric=os.environ.get("ORCHESTRATE_METRIC"),
    run_dir=os.environ.get("ORCHESTRATE_RUN_DIR"),
    cwd=os.getcwd(),
)
time.sleep(float(args.get("sleep", 0)))
"""


@pytest.fixture
def code(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "warmprobe.py").write_text(PROBE)
    (src / "warmtrial.py").write_text(TRIAL)
    return src


def _env(code: Path, tmp_path: Path, slot: Slot, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(slot.env())
    env.update(
        {
            "PYTHONPATH": os.pathsep.join([str(code), str(ROOT)]),
            "PROBE_LOG": str(tmp_path / "imports.log"),
            "ORCHESTRATE_CACHE_DIR": str(tmp_path / "cache"),
        }
    )
    env.update(extra)
    return env


class Runner:
    def __init__(self, tmp_path: Path, code: Path, zygote: bool = True) -> None:
        self.tmp, self.code = tmp_path, code
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.ex = WarmExecutor(self.events, preload=("warmprobe",), zygote=zygote)
        self.n = 0

    def submit(self, slot: Slot, sleep: float = 0, **extra: str) -> Job:
        self.n += 1
        job = Job(
            key=f"t#{self.n}",
            slot=slot,
            run_dir=RunDir(self.tmp / "runs" / str(self.n)),
            argv=[sys.executable, "-u", "-m", "warmtrial", f"--sleep={sleep}"],
        )
        env = _env(self.code, self.tmp, slot, ORCHESTRATE_RUN_DIR=str(job.run_dir.path), **extra)
        self.ex.submit(job, env, self.tmp)
        return job

    def wait(self, jobs: list[Job]) -> dict[str, tuple[int, dict[str, Any]]]:
        """Each job's exit status and its info event."""
        info: dict[str, dict[str, Any]] = {}
        done: dict[str, tuple[int, dict[str, Any]]] = {}
        while len(done) < len(jobs):
            kind, job, payload = self.events.get(timeout=120)
            if kind == "event" and payload.get("event") == "info":
                info[job.key] = payload
            elif kind == "exit":
                done[job.key] = (payload, info.get(job.key, {}))
        return done

    def started(self, job: Job) -> dict[str, Any]:
        while True:
            kind, got, payload = self.events.get(timeout=120)
            assert got is job, f"unexpected {kind} from {got.key}"
            if kind == "event" and payload.get("event") == "info":
                return dict(payload)


def _slots(n: int) -> list[Slot]:
    return [Slot(id=f"gpu{i}", kind="gpu", gpu=str(i)) for i in range(n)]


def _imports(tmp_path: Path) -> list[str]:
    log = tmp_path / "imports.log"
    return log.read_text().split() if log.exists() else []


@pytest.mark.parametrize("zygote", [True, False])
def test_one_import_for_all_slots_and_each_trial_sees_its_slot(
    tmp_path: Path, code: Path, zygote: bool
) -> None:
    run = Runner(tmp_path, code, zygote=zygote)
    slots = _slots(3)
    jobs = [run.submit(s) for s in slots]
    done = run.wait(jobs)
    assert [done[j.key][0] for j in jobs] == [0, 0, 0]
    for job, slot in zip(jobs, slots, strict=True):
        info = done[job.key][1]
        assert info["preloaded"] is True  # the trial did not import it again
        assert info["slot_gpu"] == slot.gpu and info["run_dir"] == str(job.run_dir.path)
        assert info["cwd"] == str(tmp_path)
        assert job.pid == info["pid"]
    # the zygote imports once whatever the number of slots; without it each slot's worker imports
    assert len(_imports(tmp_path)) == (1 if zygote else 3)
    # a second round reuses the same workers: no new import, no new worker
    parents = {done[j.key][1]["ppid"] for j in jobs}
    again = run.wait([run.submit(s) for s in slots])
    assert len(_imports(tmp_path)) == (1 if zygote else 3)
    assert {v[1]["ppid"] for v in again.values()} == parents
    run.ex.close()


def test_an_environment_that_differs_at_start_up_gets_its_own_zygote(tmp_path: Path, code: Path) -> None:
    """The W&B bridge's metric is read when an interpreter starts: trials of another sweep need another zygote."""
    run = Runner(tmp_path, code)
    (slot,) = _slots(1)
    first = run.wait([run.submit(slot, ORCHESTRATE_METRIC="val_acc")])
    second = run.wait([run.submit(slot, ORCHESTRATE_METRIC="val_loss")])
    assert next(iter(first.values()))[1]["metric"] == "val_acc"
    assert next(iter(second.values()))[1]["metric"] == "val_loss"
    assert len(_imports(tmp_path)) == 2 and len(run.ex.zygotes) == 2
    run.ex.close()


def test_stop_reaches_the_trial_not_the_worker(tmp_path: Path, code: Path) -> None:
    run = Runner(tmp_path, code)
    (slot,) = _slots(1)
    job = run.submit(slot, sleep=600)
    run.started(job)
    run.ex.stop(job, grace=30)
    assert run.wait([job])[job.key][0] == -signal.SIGTERM
    # the slot's worker survived: the next trial needs no new one
    assert run.wait([run.submit(slot)])["t#2"][0] == 0
    assert len(_imports(tmp_path)) == 1
    run.ex.close()


def test_a_killed_zygote_or_worker_is_replaced(tmp_path: Path, code: Path) -> None:
    run = Runner(tmp_path, code)
    a, b = _slots(2)
    job = run.submit(a, sleep=600)
    info = run.started(job)
    worker, zygote = info["ppid"], next(iter(run.ex.zygotes.values())).proc.pid
    os.kill(zygote, signal.SIGKILL)
    # the worker dies with its zygote and its trial with it: a failure the controller retries, never a hang
    rc = run.wait([job])[job.key][0]
    assert rc != 0
    # the worker ends its trial's group first, then exits: its pipe may end a moment before it is a zombie
    _wait_until(lambda: not _alive(worker) and not _alive(info["pid"]))
    # the next trials, on the same slot and on a new one, start a new zygote and run
    done = run.wait([run.submit(a), run.submit(b)])
    assert [v[0] for v in done.values()] == [0, 0]
    assert len(_imports(tmp_path)) == 2
    # a worker killed on its own is replaced from the zygote, with no new import
    victim = next(iter(done.values()))[1]["ppid"]
    os.kill(victim, signal.SIGKILL)
    _wait_until(lambda: not _alive(victim))
    done = run.wait([run.submit(a), run.submit(b)])
    assert [v[0] for v in done.values()] == [0, 0]
    assert len(_imports(tmp_path)) == 2
    run.ex.close()


def test_zygote_workers_and_trials_die_with_the_controller(tmp_path: Path, code: Path) -> None:
    """SIGKILL of the controller (no clean-up) ends its zygote, the slot's worker and the running trial."""
    out = tmp_path / "pids.json"
    script = textwrap.dedent(
        f"""
        import json, os, queue, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from pathlib import Path
        from test_warm import Runner, _slots
        run = Runner(Path({str(tmp_path)!r}), Path({str(code)!r}))
        job = run.submit(_slots(1)[0], sleep=600)
        info = run.started(job)
        zygote = next(iter(run.ex.zygotes.values())).proc.pid
        Path({str(out)!r}).write_text(json.dumps([zygote, info["ppid"], info["pid"]]))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT)
    try:
        _wait_until(lambda: out.exists() and bool(out.read_text()))
        pids = json.loads(out.read_text())
        assert all(_alive(p) for p in pids)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _wait_until(lambda: not any(_alive(p) for p in pids))
        assert not any(_alive(p) for p in pids)
    finally:
        parent.kill()


def test_other_interpreters_and_programs_run_fresh(tmp_path: Path) -> None:
    assert WarmExecutor.runnable([sys.executable, "-u", "-m", "experiments.train", "run"])
    assert not WarmExecutor.runnable([sys.executable, "train.py"])
    assert not WarmExecutor.runnable(["/usr/bin/env", "python", "-m", "x"])
    other = tmp_path / "python"
    other.write_text("#!/bin/sh\n")
    assert not WarmExecutor.runnable([str(other), "-m", "x"])


def _wait_until(cond: Any) -> None:
    for _ in range(1200):
        if cond():
            return
        time.sleep(0.05)


# a trial that logs a confusion matrix (a W&B table: staged in wandb's media temp dir) to an offline run
MEDIA_TRIAL = """
import os, sys, tempfile
from pathlib import Path
from experiments.wandb_log import Logger
n = int(os.environ["TRIAL_N"])
logger = Logger.start({"n": n}, Path(os.environ["ORCHESTRATE_RUN_DIR"]), "val/acc", "maximize")
logger.log(1, {"val/acc": 0.5})
# trial n: n correct "b", one "a" taken for "b"
logger.confusion("test/gender_confusion", [0] + [1] * n, [1] + [1] * n, ["a", "b"], "gender (test)")
logger.wait()
with open(os.environ["PROBE_LOG"] + ".tmp", "a") as fh:
    fh.write(tempfile.gettempdir() + "\\n")
logger.finish({"done": n})
"""


def test_every_trial_of_a_warm_worker_keeps_its_wandb_media(tmp_path: Path, code: Path) -> None:
    """wandb's media staging dir is made when wandb is imported (in the zygote): each trial gets its own, so the
    first trial to exit does not delete the later trials' (their tables were lost: ``No such file … wandb-media``)."""
    (code / "mediatrial.py").write_text(MEDIA_TRIAL)
    events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
    ex = WarmExecutor(events, preload=("warmprobe", "wandb", "experiments.wandb_log"))
    (slot,) = _slots(1)
    trial_tmp, zygote_tmp = tmp_path / "trialtmp", tmp_path / "zygotetmp"
    trial_tmp.mkdir()
    zygote_tmp.mkdir()
    argv = [sys.executable, "-u", "-m", "mediatrial"]
    ex.warm_up(argv, _env(code, tmp_path, slot, TMPDIR=str(zygote_tmp)), tmp_path)
    try:
        workers = set()
        for n in (1, 2, 3):
            job = Job(
                key=f"t#{n}",
                slot=slot,
                run_dir=RunDir(tmp_path / "runs" / str(n)),
                argv=argv,
            )
            env = _env(code, tmp_path, slot, ORCHESTRATE_RUN_DIR=str(job.run_dir.path), TRIAL_N=str(n))
            env.update({"WANDB_MODE": "offline", "WANDB_SILENT": "true", "TMPDIR": str(trial_tmp)})
            env.pop("WANDB_DIR", None)
            ex.submit(job, env, tmp_path)
            while True:
                kind, _, payload = events.get(timeout=180)
                if kind == "exit":
                    assert payload == 0, job.run_dir.stderr_log.read_text()
                    break
            workers.add(ex.workers[slot.id].proc)
        assert len(workers) == 1 and len(_imports(tmp_path)) == 1  # one worker forked all three
        third = tmp_path / "runs" / "3"
        assert "wandb call failed" not in (third / "stderr.log").read_text()
        (run,) = (third / "wandb").glob("offline-run-*")
        (table,) = (run / "files" / "media" / "table" / "test").glob("gender_confusion_table_*.table.json")
        data = json.loads(table.read_text())
        counts = {(r[0], r[1]): r[2] for r in data["data"]}
        assert counts[("a", "b")] == 1 and counts[("b", "b")] == 3 and counts[("a", "a")] == 0
        history = read_offline_run(run)["history"]
        key = "test/gender_confusion_table.path"  # the history row names the table file
        assert [row[key] for row in history if key in row] == [str(table.relative_to(run / "files"))]
        # the trial's own TMPDIR (set after the fork) is the temp dir it uses, not the zygote's cached one
        assert (tmp_path / "imports.log.tmp").read_text().split() == [str(trial_tmp)] * 3
        # each trial removed its own staging dir; the zygote's (made at its import of wandb) is still there
        assert not list(trial_tmp.glob("*wandb-media"))
        assert len(list(zygote_tmp.glob("*wandb-media"))) == 1
    finally:
        ex.close()
