"""Sweeps on a real single-node Slurm (conftest.py starts it): one job per trial through srun, pruning from the
trials' protocol lines, exact accounting, preemption and scancel resume from the checkpoint, a SIGKILLed
controller's jobs cancelled by the relaunch, and the ``slurm:`` block's validation."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from optuna.trial import TrialState

from tests.orchestrator.conftest import CURVE, ROOT, cli_env, load_trials, run_cli, write
from tests.orchestrator.slurm.conftest import Cluster

pytestmark = pytest.mark.e2e

CKPT = ROOT / "tests" / "orchestrator" / "remote" / "programs" / "ckpt_curve.py"
SAFETY_S = 300  # a hang guard only: nothing is timed against it
T = TypeVar("T")

GRID = """
defaults:
  slots: slurm
  wandb: disabled
  retries: 0
  slurm: {gres: @GRES@, cpus_per_trial: 1, mem_per_trial: 200M, time: "10:00", max_concurrent: 3}
sweeps:
  - name: curve-grid
    program: @CURVE@
    method: grid
    metric: {name: score, goal: maximize}
    pruner: {type: median, n_startup_trials: 2, n_warmup_steps: 1}
    parameters:
      quality: {values: [1.0, 0.9, 0.2, 0.1, 0.15, 0.98]}
      epochs: {value: 6}
      sleep: {value: 0.3}
"""

RESUME = """
defaults:
  slots: slurm
  wandb: disabled
  retries: 0
  slurm: {gres: @GRES@, cpus_per_trial: 1, mem_per_trial: 200M, max_concurrent: 1}
sweeps:
  - name: resume
    program: @CKPT@
    method: grid
    metric: {name: score, goal: maximize}
    parameters:
      quality: {value: 0.9}
      epochs: {value: 6}
      sleep: {value: 0.2}
      stall_after: {value: 3}
"""


def _gres(cluster: Cluster) -> str:
    return "gpu:1" if cluster.gpus else "none"


def _spec(tmp_path: Path, text: str, cluster: Cluster) -> Path:
    body = text.replace("@GRES@", _gres(cluster)).replace("@CKPT@", str(CKPT))
    return write(tmp_path, "sweeps.yaml", body)


def until(ctl: subprocess.Popen[Any], log: Path, what: str, check: Callable[[], T | None]) -> T:
    deadline = time.time() + SAFETY_S
    while True:
        got = check()
        if got:
            return got
        if ctl.poll() is not None or time.time() > deadline:
            raise AssertionError(f"no {what} (controller exit {ctl.poll()}):\n{log.read_text()}")
        time.sleep(0.05)


def launch(tmp_path: Path, spec: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / name
    with open(log, "w") as fh:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return ctl, log


def checkpoint_at(run_dir: Path, epoch: int) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return int(json.loads((run_dir / "checkpoint_last.pt").read_text())["epoch"]) >= epoch
        except (OSError, ValueError, KeyError):
            return False

    return check


def running_job(cluster: Cluster, prefix: str = "orch-resume-") -> Callable[[], str | None]:
    def check() -> str | None:
        return next((j for j, n, s in cluster.queue() if n.startswith(prefix) and s == "RUNNING"), None)

    return check


def run_dir_of(tmp_path: Path) -> Path:
    dirs = sorted((tmp_path / "runs" / "resume").glob("*/"))
    return dirs[0] if dirs else tmp_path / "runs" / "resume" / "none"


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # it ended meanwhile (ENOENT, or ESRCH between the open and the read)
        return b""


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    ppid = int(fh.read().rpartition(")")[2].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


# ------------------------------------------------------------------------------------------------------------
def test_grid_with_pruning_runs_each_point_once_as_one_job(tmp_path: Path, slurm_cluster: Cluster) -> None:
    spec = _spec(tmp_path, GRID.replace("@CURVE@", str(CURVE)), slurm_cluster)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain", check=True)
    assert "3 slot(s) [slurm0, slurm1, slurm2]" in proc.stdout
    trials = load_trials(tmp_path, "curve-grid")
    assert sorted(t.params["quality"] for t in trials) == sorted([1.0, 0.9, 0.2, 0.1, 0.15, 0.98])
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(t.params["quality"] <= 0.2 for t in pruned)
    job_ids = set()
    for t in trials:
        where = t.user_attrs["orchestrate.remote"]  # recorded from the job's first line
        assert where["host"] == "slurm"
        job_ids.add(where["pid"])
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        run_dir = run_dir if run_dir.is_absolute() else tmp_path / run_dir
        assert where["run_dir"] == str(run_dir.resolve())
        lines = (run_dir / "metrics.jsonl").read_text().splitlines()
        if t.state == TrialState.COMPLETE:
            assert len(lines) == len(t.intermediate_values) == 6
            assert t.value == pytest.approx(t.params["quality"] * (1 - 0.5**6))
        else:  # nothing is stored after the decision; the job may train on while scancel's SIGTERM travels.
            # Under load the median pruner can first have its 2 finished trials at the last epoch, so the
            # decision may come at step 5 (all 6 values stored): allowed, but never a value after it.
            assert 1 <= len(t.intermediate_values) <= 6 and len(lines) >= len(t.intermediate_values)
            assert sorted(t.intermediate_values) == list(range(len(t.intermediate_values)))
        stderr = (run_dir / "stderr.log").read_text()
        assert f"slurm job {where['pid']} (orch-curve-grid-" in stderr
    assert len(job_ids) == 6  # one Slurm job per trial, each once
    slurm_cluster.wait_empty()
    # the jobs really ran under Slurm: its record of them, with our names and comments
    for job_id in job_ids:
        info = slurm_cluster.run("scontrol", "-o", "show", "job", str(job_id)).stdout
        assert re.search(r"JobName=orch-curve-grid-\S+", info)
        assert f"Comment=orchestrate dir={tmp_path.resolve()}/runs/curve-grid/" in info
        if slurm_cluster.gpus:
            assert "gres/gpu=1" in info or "gres:gpu:1" in info or "gpu:1" in info


@pytest.mark.parametrize("how", ["scancel", "preempted"])
def test_job_taken_away_resumes_from_its_checkpoint(tmp_path: Path, slurm_cluster: Cluster, how: str) -> None:
    spec = _spec(tmp_path, RESUME, slurm_cluster)
    ctl, log = launch(tmp_path, spec, "launch.log")
    try:
        job_id = until(ctl, log, "running job", running_job(slurm_cluster))
        until(ctl, log, "checkpoint 3", checkpoint_at(run_dir_of(tmp_path), 3))
        if how == "scancel":
            slurm_cluster.run("scancel", job_id)
            state = "cancelled"
        else:  # a job of the higher-tier partition needs the whole node: Slurm preempts ours
            urgent = subprocess.Popen(
                ["srun", "-p", "urgent", f"--cpus-per-task={slurm_cluster.cpus}", "--mem=100", "true"],
                env={**os.environ, **slurm_cluster.env()}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            assert urgent.wait(timeout=SAFETY_S) == 0
            state = "preempted"
        assert ctl.wait(timeout=SAFETY_S) == 0, log.read_text()
    finally:
        if ctl.poll() is None:
            ctl.kill()
    text = log.read_text()
    assert re.search(rf"slurm job {job_id} \(orch-resume-\S+\) was {state}", text), text
    assert "goes back to the queue (not a failure" in text
    (t,) = load_trials(tmp_path, "resume")
    assert (
        t.state == TrialState.COMPLETE and t.user_attrs["orchestrate.attempt"] == 1
    )  # not counted as a failure
    assert (
        t.user_attrs["orchestrate.resumed_from_epoch"] == 3
    )  # from the epoch-3 checkpoint, in its run directory
    assert t.value == pytest.approx(0.9 * (1 - 0.5**6))
    assert sorted(t.intermediate_values) == [1, 2, 3, 4, 5, 6]
    run_dir = run_dir_of(tmp_path)
    summary = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert summary, "metrics were written"
    out = (run_dir / "stdout.log").read_text()
    assert [int(e) for e in re.findall(r"trained epoch (\d+)", out)] == [1, 2, 3, 4, 5, 6]  # none twice
    assert t.user_attrs["orchestrate.remote"]["pid"] != job_id  # the resumed part ran as a new job
    slurm_cluster.wait_empty()


def test_sigkilled_controller_leaves_no_job_after_relaunch(tmp_path: Path, slurm_cluster: Cluster) -> None:
    """The controller dies with its srun frozen (a hung login node): the job stays in the queue, and the
    relaunch cancels it (found by its comment) before the trial resumes from its checkpoint."""
    spec = _spec(tmp_path, RESUME, slurm_cluster)
    ctl, log = launch(tmp_path, spec, "first.log")
    sruns: list[int] = []
    again: subprocess.Popen[bytes] | None = None
    try:
        job_id = until(ctl, log, "running job", running_job(slurm_cluster))
        until(ctl, log, "checkpoint 3", checkpoint_at(run_dir_of(tmp_path), 3))
        sruns = [p for p in _descendants(ctl.pid) if b"srun" in _cmdline(p)]
        assert sruns
        for p in sruns:
            os.kill(p, signal.SIGSTOP)
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(timeout=60)
        assert (job_id, "RUNNING") in [(j, s) for j, _, s in slurm_cluster.queue()]  # the orphan runs on
        again, log2 = launch(tmp_path, spec, "again.log")
        until(
            again, log2, "cancel", lambda: f"cancelled slurm job {job_id} (orch-resume-" in log2.read_text()
        )
        # the hung machine goes away for good: Slurm frees the node (a node whose job is COMPLETING takes no
        # new job; its slurmstepd would otherwise try to reach the frozen srun for a while)
        for p in sruns:
            os.kill(p, signal.SIGKILL)
        assert again.wait(timeout=SAFETY_S) == 0, log2.read_text()
    finally:
        for p in sruns:
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGKILL)
        for proc in (ctl, again):
            if proc is not None and proc.poll() is None:
                proc.kill()
    text = log2.read_text()
    # the relaunch cancelled the job before the trial ran again
    assert text.index(f"cancelled slurm job {job_id}") < text.index(
        "trial 1 of resume resumed from its checkpoint"
    )
    trials = load_trials(tmp_path, "resume")
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].value == pytest.approx(0.9 * (1 - 0.5**6))
    assert done[0].user_attrs["orchestrate.resumed_from_epoch"] == 3
    assert done[0].user_attrs["orchestrate.remote"]["pid"] != job_id
    slurm_cluster.wait_empty()
    assert not slurm_cluster.queue()


def test_sigkilled_controller_takes_its_jobs_along(tmp_path: Path, slurm_cluster: Cluster) -> None:
    """SIGKILL with srun alive: srun gets SIGTERM (pdeathsig) and cancels its job, so the queue empties without a
    relaunch; the relaunch then resumes the trial from its checkpoint."""
    spec = _spec(tmp_path, RESUME, slurm_cluster)
    ctl, log = launch(tmp_path, spec, "first.log")
    try:
        job_id = until(ctl, log, "running job", running_job(slurm_cluster))
        until(ctl, log, "checkpoint 3", checkpoint_at(run_dir_of(tmp_path), 3))
        ctl.send_signal(signal.SIGKILL)
        ctl.wait(timeout=60)
    finally:
        if ctl.poll() is None:
            ctl.kill()
    slurm_cluster.wait_empty()  # no relaunch needed for that
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True, timeout=SAFETY_S)
    assert "cancelled slurm job" not in again.stdout  # nothing was left to cancel
    assert "resumed from its checkpoint after epoch 3" in again.stdout, again.stdout
    done = [t for t in load_trials(tmp_path, "resume") if t.state == TrialState.COMPLETE]
    assert len(done) == 1 and done[0].user_attrs["orchestrate.remote"]["pid"] != job_id
    slurm_cluster.wait_empty()


def test_slurm_check_reports_the_cluster(tmp_path: Path, slurm_cluster: Cluster) -> None:
    spec = _spec(tmp_path, RESUME, slurm_cluster)
    proc = run_cli(tmp_path, "slurm", "check", str(spec), "--format", "json", check=True)
    report = json.loads(proc.stdout)
    parts = {p["name"]: p for p in report["partitions"]}
    assert set(parts) == {"debug", "urgent"} and parts["debug"]["default"]
    assert parts["urgent"]["time_limit"] == "1:00:00" and parts["debug"]["time_limit"] == "infinite"
    (node,) = report["nodes"][:1]
    assert node["gpus"] == slurm_cluster.gpus and node["cpus"] == str(slurm_cluster.cpus)
    assert report["ok"] and report["partition"] == "debug"
    # a trial that asks too much: named problems, exit 1
    bad = write(
        tmp_path,
        "bad.yaml",
        RESUME.replace("@GRES@", "gpu:9")
        .replace("@CKPT@", str(CKPT))
        .replace("max_concurrent: 1", "max_concurrent: 1, partition: urgent, time: '2:00:00'"),
    )
    proc = run_cli(tmp_path, "slurm", "check", str(bad))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "time 2:00:00 is above partition urgent's limit 1:00:00" in proc.stdout
    assert "gres gpu:9: no node of partition urgent has 9 GPU(s)" in proc.stdout
    assert "Slurm refuses a trial's job" in proc.stdout


BAD = [
    ("  slurm: {partiton: gpu}\n", 5, "defaults.slurm.partiton", "did you mean 'partition'?"),
    ("  slurm: {gres: 'gpu 1'}\n", 5, "defaults.slurm.gres", "invalid gres"),
    ("  slurm: {time: 'soon'}\n", 5, "defaults.slurm.time", "invalid time limit"),
    ("  slurm: {cpus_per_trial: 0}\n", 5, "defaults.slurm.cpus_per_trial", "must be at least 1"),
    ("  slurm: {mem_per_trial: lots}\n", 5, "defaults.slurm.mem_per_trial", "invalid memory"),
    ("  slurm: {srun_flags: [--job-name=x]}\n", 5, "defaults.slurm.srun_flags", "set by orchestrate"),
    ("  slurm: [gpu]\n", 5, "defaults.slurm", "must be a mapping"),
]


@pytest.mark.parametrize(("line", "lineno", "key", "message"), BAD)
def test_bad_slurm_keys_exit_2_with_file_line_key(
    tmp_path: Path, line: str, lineno: int, key: str, message: str
) -> None:
    text = f"defaults:\n  slots: slurm\n  wandb: disabled\n  retries: 0\n{line}sweeps:\n" + (
        "  - name: s\n    program: @CURVE@\n    method: grid\n    parameters: {quality: {value: 1}}\n"
    )
    spec = write(tmp_path, "sweeps.yaml", text)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"{spec}:{lineno}: {key}:" in proc.stderr.replace("\n", " ") or (
        f"{spec}:{lineno}: {key}:" in " ".join(proc.stderr.split())
    ), proc.stderr
    assert message in " ".join(proc.stderr.split())
    assert not (tmp_path / "runs" / "orchestrate.db").exists()  # nothing started


def test_sweep_level_slurm_block_overrides_the_defaults(tmp_path: Path) -> None:
    from orchestrator.spec import load_sweeps
    from orchestrator.trial.errors import SpecError

    spec = write(
        tmp_path,
        "sweeps.yaml",
        """
        defaults:
          slurm: {partition: gpu, gres: gpu:1, time: 90, max_concurrent: 8, srun_flags: "--constraint=a100 -x n1"}
        sweeps:
          - name: a
            program: @CURVE@
            method: grid
            parameters: {quality: {value: 1}}
          - name: b
            program: @CURVE@
            method: grid
            parameters: {quality: {value: 1}}
            slurm: {gres: none, cpus_per_trial: 4, mem_per_trial: 16G}
          - name: c
            program: @CURVE@
            method: grid
            parameters: {quality: {value: 1}}
            slurm: {max_concurrent: 2}
        """,
    )
    with pytest.raises(SpecError) as err:
        load_sweeps(spec)
    assert err.value.key == "sweeps[2].slurm.max_concurrent" and err.value.line == 18
    spec.write_text("\n".join(spec.read_text().splitlines()[:-5]) + "\n")
    loaded = load_sweeps(spec)
    a, b = loaded.sweeps
    assert loaded.defaults.slurm is not None and a.slurm == loaded.defaults.slurm
    assert a.slurm.srun_flags == ("--constraint=a100", "-x", "n1") and a.slurm.time == "90"
    assert b.slurm is not None and (b.slurm.gres, b.slurm.partition) == (None, "gpu")
    assert (b.slurm.cpus_per_trial, b.slurm.mem_per_trial, b.slurm.max_concurrent) == (4, "16G", 8)
    assert not b.slurm.gpus and a.slurm.gpus

    from orchestrator.executors.slurm import srun_args

    assert srun_args(b.slurm) == [
        "--nodes=1", "--ntasks=1", "--partition=gpu", "--time=90", "--cpus-per-task=4", "--mem=16G",
        "--constraint=a100", "-x", "n1",
    ]  # fmt: skip


def test_ctrl_c_cancels_the_jobs_and_the_relaunch_resumes(tmp_path: Path, slurm_cluster: Cluster) -> None:
    spec = _spec(tmp_path, RESUME, slurm_cluster)
    ctl, log = launch(tmp_path, spec, "launch.log")
    try:
        job_id = until(ctl, log, "running job", running_job(slurm_cluster))
        until(ctl, log, "checkpoint 3", checkpoint_at(run_dir_of(tmp_path), 3))
        ctl.send_signal(signal.SIGINT)
        assert ctl.wait(timeout=SAFETY_S) == 130, log.read_text()
    finally:
        if ctl.poll() is None:
            ctl.kill()
    slurm_cluster.wait_empty()  # scancel'd: nothing left in the queue
    info = slurm_cluster.run("scontrol", "-o", "show", "job", job_id).stdout
    # ended by our SIGTERM (scancel --signal=TERM: Slurm says FAILED, signal 15) or our scancel
    assert re.search(r"JobState=(CANCELLED|FAILED) .*ExitCode=0:15", info), info
    (t,) = load_trials(tmp_path, "resume")
    assert t.state == TrialState.FAIL and t.user_attrs["orchestrate.reason"].startswith("interrupted")
    again = run_cli(tmp_path, "launch", str(spec), "--plain", check=True, timeout=SAFETY_S)
    assert "resumed from its checkpoint after epoch 3" in again.stdout, again.stdout
    slurm_cluster.wait_empty()


EXPERIMENT = """
defaults:
  slots: slurm
  wandb: offline
  retries: 0
  project: e2e
  slurm: {gres: @GRES@, cpus_per_trial: 1, mem_per_trial: 2G, max_concurrent: 2}
sweeps:
  - name: tiny-gender
    experiment: train
    method: grid
    metric: {name: val/acc, goal: maximize}
    parameters:
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 2, base_features: 8, hidden: 16}}
      image_size: {value: 32}
      synthetic_limit: {value: 200}
      synthetic_size: {value: 48}
      epochs: {value: 2}
      lr: {value: 0.003}
"""


def test_builtin_experiment_on_synthetic_data_through_slurm(tmp_path: Path, slurm_cluster: Cluster) -> None:
    from tests.wandb_files import read_offline_run

    spec = _spec(tmp_path, EXPERIMENT, slurm_cluster)
    run_cli(tmp_path, "launch", str(spec), "--plain", check=True, timeout=SAFETY_S)
    trials = load_trials(tmp_path, "tiny-gender")
    assert len(trials) == 1 and all(t.state == TrialState.COMPLETE for t in trials)
    for t in trials:
        assert t.user_attrs["orchestrate.remote"]["host"] == "slurm"
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        run_dir = run_dir if run_dir.is_absolute() else tmp_path / run_dir
        (wandb_run,) = sorted((run_dir / "wandb").glob("offline-run-*"))
        run = read_offline_run(wandb_run)
        epochs = [row["val/acc"] for row in run["history"] if "val/acc" in row]
        assert epochs == [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        assert t.value == pytest.approx(
            max(epochs)
        )  # the study's value: the best epoch's, written by the job
        assert (run_dir / "checkpoint_last.pt").exists()  # in the run dir itself: the shared filesystem
    slurm_cluster.wait_empty()


def test_job_cancelled_while_queued_goes_back_to_the_queue(tmp_path: Path, slurm_cluster: Cluster) -> None:
    """Cancelled before it started (srun only said 'queued'): still not the trial's failure."""
    env = {**os.environ, **slurm_cluster.env()}
    blocker = subprocess.Popen(
        ["srun", "-J", "blocker", f"--cpus-per-task={slurm_cluster.cpus}", "--mem=100", "sleep", "300"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    spec = _spec(
        tmp_path, RESUME.replace("stall_after: {value: 3}", "stall_after: {value: 0}"), slurm_cluster
    )
    ctl, log = launch(tmp_path, spec, "launch.log")
    try:
        queued = until(
            ctl,
            log,
            "queued job",
            lambda: next(
                (j for j, n, s in slurm_cluster.queue() if n.startswith("orch-") and s == "PENDING"), None
            ),
        )
        slurm_cluster.run("scancel", queued)
        until(ctl, log, "re-queue", lambda: "goes back to the queue" in log.read_text())
        slurm_cluster.run("scancel", "--name", "blocker")
        assert ctl.wait(timeout=SAFETY_S) == 0, log.read_text()
    finally:
        for proc in (ctl, blocker):
            if proc.poll() is None:
                proc.kill()
    assert re.search(rf"slurm job {queued} \(orch-resume-\S+\) was cancelled", log.read_text())
    (t,) = load_trials(tmp_path, "resume")
    assert t.state == TrialState.COMPLETE and t.user_attrs["orchestrate.attempt"] == 1
    assert t.value == pytest.approx(0.9 * (1 - 0.5**6))
    slurm_cluster.wait_empty()


def test_a_job_slurm_refuses_or_would_hold_for_ever_stops_the_launch(
    tmp_path: Path, slurm_cluster: Cluster
) -> None:
    # the sweep's own block (line 17): a time above urgent's 1-hour limit would pend for ever
    text = RESUME.replace("max_concurrent: 1}", "max_concurrent: 1, partition: urgent}")
    text += "    slurm: {time: '3:00:00'}\n"
    spec = _spec(tmp_path, text, slurm_cluster)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    err = " ".join(proc.stderr.split())
    assert f"{spec}:17: sweeps[0].slurm: time 3:00:00 is above partition urgent's limit 1:00:00" in err, err
    assert "orchestrate slurm check" in err
    spec.write_text(spec.read_text().replace("time: '3:00:00'", "gres: gpu:9"))
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Slurm refuses a trial's job" in " ".join(proc.stderr.split())
    assert not slurm_cluster.queue() or all(
        not n.startswith("orch-resume") for _, n, _ in slurm_cluster.queue()
    )


def test_a_crashing_trial_is_a_failure_not_a_lost_job(tmp_path: Path, slurm_cluster: Cluster) -> None:
    text = GRID.replace("@CURVE@", str(CURVE)).replace("retries: 0", "retries: 1")
    text = text.replace("quality: {values: [1.0, 0.9, 0.2, 0.1, 0.15, 0.98]}", "fail: {value: true}")
    spec = _spec(tmp_path, text, slurm_cluster)
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    # a launch whose trials all ended FAILED exits 1 and names the failure (not a lost job put back in the queue)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "goes back to the queue" not in proc.stdout
    assert "ended FAILED after their retries" in proc.stdout
    assert "exit code 3" in proc.stdout
    trials = load_trials(tmp_path, "curve-grid")
    # the point ran twice (retries: 1), each a failed trial with the job's stderr kept
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.FAIL]
    for t in trials:
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        run_dir = run_dir if run_dir.is_absolute() else tmp_path / run_dir
        assert "boom: simulated crash in epoch 1" in (run_dir / "stderr.log").read_text()
    slurm_cluster.wait_empty()
