"""Remote trials resume from their last checkpoint: copied back to the controller while they run, taken to
another host when theirs dies, or into a relaunch after the controller died (real sshd boxes on 127.0.0.1)."""

from __future__ import annotations

import io
import json
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from orchestrator.trial.protocol import parse_line
from tests.orchestrator.conftest import ROOT, cli_env, load_trials, run_cli
from tests.orchestrator.remote.test_ssh import hosts_block, sweep_file

CKPT = ROOT / "tests" / "orchestrator" / "remote" / "programs" / "ckpt_curve.py"
SWEEP = f"""\
sweeps:
  - name: resume
    program: {CKPT}
    method: grid
    metric: {{name: score, goal: maximize}}
    parameters:
      quality: {{value: 0.9}}
      epochs: {{value: 8}}
      sleep: {{value: 0.2}}
      stall_after: {{value: 3}}
"""
T = TypeVar("T")
SAFETY_S = 300  # only so that a broken build fails instead of hanging; nothing here is timed against it


def until(ctl: subprocess.Popen[Any], log: Path, what: str, check: Callable[[], T | None]) -> tuple[T, float]:
    """Poll ``check`` until it gives something; fail as soon as the controller has ended without it."""
    deadline = time.time() + SAFETY_S
    while True:
        got = check()
        if got:
            return got, time.time()
        if ctl.poll() is not None or time.time() > deadline:
            raise AssertionError(f"no {what} (controller exit {ctl.poll()}):\n{log.read_text()}")
        time.sleep(0.01)


def in_log(log: Path, pattern: str, start: int = 0) -> Callable[[], re.Match[str] | None]:
    return lambda: re.compile(pattern).search(log.read_text(), start)


def checkpoint_epoch(path: Path, epoch: int) -> Callable[[], dict[str, Any] | None]:
    def check() -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = json.loads(path.read_text())
        except (OSError, ValueError):  # not there yet (a torn file would fail the test below, not here)
            return None
        return state if state["epoch"] >= epoch else None

    return check


def launch(tmp_path: Path, spec: Path, name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp_path / name
    with open(log, "w") as fh:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain", "--slots", "hosts"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    return ctl, log


def events(run_dir: Path) -> list[dict[str, Any]]:
    lines = (run_dir / "stdout.log").read_text().splitlines()
    return [e for e in (parse_line(line) for line in lines) if e is not None]


def trained(run_dir: Path) -> list[tuple[int, str]]:
    """(epoch, working directory) of every epoch the trial trained, in order, over all its attempts."""
    text = (run_dir / "stdout.log").read_text()
    return [(int(e), where) for e, where in re.findall(r"^trained epoch (\d+) in (.*)$", text, re.M)]


def test_a_lost_hosts_trial_resumes_elsewhere_from_its_synced_checkpoint(tmp_path: Path, ssh_boxes) -> None:
    a, b = ssh_boxes
    spec = sweep_file(tmp_path, hosts_block(a.host_yaml(), b.host_yaml()), SWEEP)
    ctl, log = launch(tmp_path, spec, "launch.log")
    run_dir = tmp_path / "runs" / "resume" / "00000"
    try:
        until(ctl, log, "trial 0 on boxa", in_log(log, r"trial 0 started on boxa:cpu0"))
        # epoch 3's checkpoint reaches the controller while the trial runs (then the stand-in stalls)
        state, seen_at = until(
            ctl, log, "epoch 3's checkpoint", checkpoint_epoch(run_dir / "checkpoint_last.pt", 3)
        )
        assert state["epoch"] == 3
        sync_latency = seen_at - state["written_at"]
        killed_at = time.time()
        a.kill()  # the box dies: sshd, the session, the trial
        lost, noticed_at = until(
            ctl, log, "re-queue", in_log(log, r"boxa.*trial 0 of resume goes back to the queue.*")
        )
        assert "resumes from its checkpoint copied back" in lost.group(0)
        _, restarted_at = until(ctl, log, "restart on boxb", in_log(log, r"trial 0 started on boxb:cpu0"))
        _, resumed_at = until(
            ctl, log, "resume", in_log(log, r"trial 0 of resume resumed from its checkpoint after epoch 3")
        )
        out, _ = ctl.communicate()
        assert ctl.returncode == 0, log.read_text()
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        if a.proc is None:
            a.start()  # the box comes back for the other tests
    print(
        f"\ncheckpoint epoch end → on the controller {sync_latency * 1000:.0f} ms; host death → noticed "
        f"{noticed_at - killed_at:.2f} s → started on boxb {restarted_at - killed_at:.2f} s → resumed "
        f"{resumed_at - killed_at:.2f} s; epochs saved 3 of 8"
    )
    # the second attempt resumed from epoch 3 on boxb and trained only epochs 4-8
    where = trained(run_dir)
    assert [e for e, _ in where] == [1, 2, 3, 4, 5, 6, 7, 8], where
    assert all(str(a.workdir) in w for e, w in where if e <= 3) and all(
        str(b.workdir) in w for e, w in where if e > 3
    )
    ev = events(run_dir)
    assert [e["resumed_from_epoch"] for e in ev if "resumed_from_epoch" in e] == [3]
    assert [e["metrics"]["epochs_trained_here"] for e in ev if e["event"] == "summary"] == [5]
    # the metrics history has every epoch once (the resumed attempt's re-reports are not appended again)
    steps = [json.loads(line)["step"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 5, 6, 7, 8]
    assert json.loads((run_dir / "checkpoint_last.pt").read_text())["epoch"] == 8  # the final copy back
    # exact accounting: one trial, complete, not failed or counted twice; Optuna saw each step once
    (trial,) = load_trials(tmp_path, "resume")
    assert trial.state.name == "COMPLETE" and trial.value == 0.9 * (1 - 0.5**8)
    assert sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert trial.user_attrs["orchestrate.host"] == "boxb" and trial.user_attrs["orchestrate.epochs"] == 8
    assert trial.user_attrs["orchestrate.resumed_from_epoch"] == 3
    assert trial.user_attrs["orchestrate.attempt"] == 1
    assert not list(run_dir.rglob("*.orch-part"))  # no half-received file left


def test_a_relaunch_after_the_controller_died_resumes_the_remote_trial(tmp_path: Path, ssh_boxes) -> None:
    a, b = ssh_boxes
    spec = sweep_file(tmp_path, hosts_block(a.host_yaml(), b.host_yaml()), SWEEP)
    ctl, log = launch(tmp_path, spec, "launch1.log")
    first = tmp_path / "runs" / "resume" / "00000"
    try:
        until(ctl, log, "epoch 3's checkpoint", checkpoint_epoch(first / "checkpoint_last.pt", 3))
    finally:
        ctl.send_signal(signal.SIGKILL)  # the controller dies while the trial runs on a host
        ctl.wait()
    proc = run_cli(tmp_path, "launch", str(spec), "--plain", "--slots", "hosts", check=True)
    assert "continues from the checkpoint of trial 0" in proc.stdout, proc.stdout
    assert "resumed from its checkpoint after epoch 3" in proc.stdout, proc.stdout
    old, new = sorted(load_trials(tmp_path, "resume"), key=lambda t: t.number)
    assert old.state.name == "FAIL" and old.user_attrs["orchestrate.interrupted"]
    assert new.state.name == "COMPLETE" and sorted(new.intermediate_values) == [1, 2, 3, 4, 5, 6, 7, 8]
    assert new.user_attrs["orchestrate.resumed_from_epoch"] == 3
    # it continues the same W&B run (same id), and trained only the epochs after the checkpoint
    assert new.user_attrs["orchestrate.wandb_run"] == old.user_attrs["orchestrate.wandb_run"]
    second = Path(new.user_attrs["orchestrate.run_dir"])
    assert [e for e, _ in trained(second)] == [4, 5, 6, 7, 8]
    assert not (first / "checkpoint_last.pt").exists()  # moved to its continuation, not duplicated


def test_a_lost_hosts_trial_resumes_on_a_local_slot(tmp_path: Path, ssh_boxes) -> None:
    a, _ = ssh_boxes
    # trial 0 (stall_after 0) takes the local slot and finishes; trial 1 runs on boxa and stalls after epoch 3
    body = SWEEP.replace("stall_after: {value: 3}", "stall_after: {values: [0, 3]}")
    spec = sweep_file(tmp_path, hosts_block(a.host_yaml()), body, defaults="  slots: cpu:1\n")
    log = tmp_path / "launch.log"
    with open(log, "w") as fh:
        ctl = subprocess.Popen(
            [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain"],
            cwd=tmp_path, env=cli_env(tmp_path), stdout=fh, stderr=subprocess.STDOUT,
        )  # fmt: skip
    run_dir = tmp_path / "runs" / "resume" / "00001"
    try:
        until(ctl, log, "trial 1 on boxa", in_log(log, r"trial 1 started on boxa:cpu0"))
        until(ctl, log, "epoch 3's checkpoint", checkpoint_epoch(run_dir / "checkpoint_last.pt", 3))
        a.kill()
        until(ctl, log, "re-queue", in_log(log, r"trial 1 of resume goes back to the queue"))
        ctl.communicate()
        assert ctl.returncode == 0, log.read_text()
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        if a.proc is None:
            a.start()
    assert "trial 1 started on cpu0" in log.read_text()
    assert [e for e, _ in trained(run_dir)] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert all(w == str(tmp_path) for e, w in trained(run_dir) if e > 3)  # here, not on a host
    trials = sorted(load_trials(tmp_path, "resume"), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    assert trials[1].user_attrs["orchestrate.resumed_from_epoch"] == 3
    assert sorted(trials[1].intermediate_values) == [1, 2, 3, 4, 5, 6, 7, 8]


TRAIN = """\
sweeps:
  - name: real
    experiment: train
    method: grid
    metric: {name: val/acc, goal: maximize}
    parameters:
      task: {value: gender}
      backbone: {value: basic_cnn}
      backbone_args: {value: {num_layers: 2, base_features: 8, hidden: 16}}
      image_size: {value: 32}
      batch_size: {value: 16}
      epochs: {value: 10}
      log_samples: {value: 4}
      lr: {values: [0.003, 0.001, 0.0003]}
"""


@pytest.mark.e2e
def test_real_training_resumes_on_another_host_with_its_dataset_copied_once_per_host(
    tmp_path: Path, ssh_boxes
) -> None:
    """experiments/train.py over ssh: Adience (synthetic, real layout) under the sweep's data_root is copied to
    each host once; trial 0's host dies after a checkpoint reached the controller; it resumes on the other host
    from that checkpoint, continuing its W&B run (one run id)."""
    from datasets.synth import synthesize
    from tests.wandb_files import read_offline_run

    a, b = ssh_boxes
    data = tmp_path / "data"
    synthesize("adience", data / "adience", limit=240, size=32)
    (data / "celeba").mkdir()  # a dataset this sweep does not use: never copied
    (data / "celeba" / "list_attr_celeba.txt").write_text("not used\n")
    spec = sweep_file(
        tmp_path,
        hosts_block(a.host_yaml(), b.host_yaml()),
        TRAIN,
        defaults=f"  data_root: {data}\n  project: remote-e2e\n",
    )
    spec.write_text(spec.read_text().replace("wandb: disabled", "wandb: offline"))
    check = run_cli(tmp_path, "hosts", "check", str(spec))
    assert "dataset adience: no copy: launch copies it" in check.stdout, check.stdout + check.stderr
    ctl, log = launch(tmp_path, spec, "launch.log")
    run_dir = tmp_path / "runs" / "real" / "00000"
    try:
        until(ctl, log, "trial 0 on boxa", in_log(log, r"trial 0 started on boxa:cpu0"))
        until(ctl, log, "a checkpoint of trial 0", (run_dir / "checkpoint_last.pt").exists)
        a.kill()
        until(ctl, log, "re-queue", in_log(log, r"boxa.*trial 0 of real goes back to the queue"))
        import torch

        synced = (
            torch.load(run_dir / "checkpoint_last.pt", map_location="cpu", weights_only=False)["epoch"] + 1
        )
        ctl.communicate()
        assert ctl.returncode == 0, log.read_text()
    finally:
        if ctl.poll() is None:
            ctl.kill()
            ctl.wait()
        if a.proc is None:
            a.start()
    trials = sorted(load_trials(tmp_path, "real"), key=lambda t: t.number)
    assert [t.state.name for t in trials] == ["COMPLETE"] * 3  # no failure, nothing counted twice
    t0 = trials[0]
    assert (
        t0.user_attrs["orchestrate.host"] == "boxb"
        and t0.user_attrs["orchestrate.resumed_from_epoch"] == synced
    )
    assert sorted(t0.intermediate_values) == list(range(1, 11))
    ev = events(run_dir)
    assert [e["resumed_from_epoch"] for e in ev if "resumed_from_epoch" in e] == [synced]
    text = (run_dir / "stdout.log").read_text()
    after = text[text.index("resuming from") :]
    assert re.findall(r"^epoch (\d+)/10:", after, re.M) == [str(e) for e in range(synced + 1, 11)]
    print(f"\nreal training: resumed after epoch {synced} of 10 on boxb ({synced} epochs saved)")
    # one W&B run id, continued: the first host's partial offline run and the resumed one beside it
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 2 and {r.name.rsplit("-", 1)[1] for r in runs} == {
        t0.user_attrs["orchestrate.wandb_run"]
    }
    resumed = read_offline_run(runs[1])
    assert resumed["run"]["resume"] and resumed["run"]["run_id"] == t0.user_attrs["orchestrate.wandb_run"]
    assert [row["epoch"] for row in resumed["history"] if "val/acc" in row] == list(range(synced + 1, 11))
    # the dataset: copied once to each host (boxb ran three trials), read from the host's copy; celeba stayed
    src = str(data / "adience")
    for box in (a, b):
        copies = (box.workdir / ".orchestrate" / "data" / "sync.log").read_text().splitlines()
        assert sum(line.endswith(" " + src) for line in copies) == 1, copies
        assert not any("celeba" in line and str(tmp_path) in line for line in copies)
    for t in trials:
        out = (Path(t.user_attrs["orchestrate.run_dir"]) / "stdout.log").read_text()
        assert re.search(
            rf"data: adience at {re.escape(str(b.workdir))}/\.orchestrate/data/adience-\w+:", out
        ), out
    check = run_cli(tmp_path, "hosts", "check", str(spec))
    assert "dataset adience: copy up to date" in check.stdout, check.stdout


def test_a_copy_cut_short_leaves_the_previous_checkpoint_whole(tmp_path: Path) -> None:
    """What a host dying mid-copy leaves: the stream ends inside the new checkpoint, nothing is replaced."""
    from orchestrator.executors.ssh_transfer import _discard, _receive

    dest = tmp_path / "run"
    (dest / "wandb").mkdir(parents=True)
    (dest / "checkpoint_last.pt").write_bytes(b"epoch 3")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, size in (("wandb/run.wandb", 3000), ("checkpoint_last.pt", 200_000)):
            info = tarfile.TarInfo(name)
            info.size = size
            tar.addfile(info, io.BytesIO(b"4" * size))
    whole = buf.getvalue()
    with pytest.raises(tarfile.ReadError):
        _receive(io.BytesIO(whole[: len(whole) // 2]), dest, set())
    assert (dest / "checkpoint_last.pt").read_bytes() == b"epoch 3"
    assert sorted(p.name for p in dest.rglob("*")) == ["checkpoint_last.pt", "wandb"]  # no part left
    staged = _receive(io.BytesIO(whole), dest, {"stdout.log"})
    assert [name for name, _, _ in staged] == ["wandb/run.wandb", "checkpoint_last.pt"]
    assert (dest / "checkpoint_last.pt").read_bytes() == b"epoch 3"  # received, not yet renamed into place
    _discard(staged)
    assert not list(dest.rglob("*.orch-part"))


def test_checkpoints_arriving_during_a_copy_are_coalesced_into_one_copy_of_the_newest(tmp_path: Path) -> None:
    """The copier's scheduling alone (the copy itself is a stand-in that waits for the test to let it finish)."""
    import threading
    import types

    from orchestrator.executors._base import Job
    from orchestrator.executors.ssh_transfer import _CheckpointSync
    from orchestrator.slots import Slot
    from orchestrator.trial.rundir import RunDir

    started, release = threading.Semaphore(0), threading.Event()
    copies: list[tuple[str, ...]] = []

    def pull(job: Any, host: Any, skip: Any, seen: Any, last: tuple[str, ...] = ()) -> int:
        copies.append(last)
        started.release()
        release.wait()
        return 1

    ex = types.SimpleNamespace(_pull=pull, sync_times=[])
    job = Job(key="s#0", slot=Slot(id="h:cpu0", kind="cpu", host="h"), run_dir=RunDir(tmp_path), argv=[])
    sync = _CheckpointSync(ex, job, None, set(), {})  # type: ignore[arg-type]
    sync.request({"event": "checkpoint", "epoch": 1, "path": "checkpoint_last.pt"})
    started.acquire()  # the copy of epoch 1 runs …
    for epoch in (2, 3, 4):  # … while three more checkpoints arrive: the reader is not held up
        sync.request({"event": "checkpoint", "epoch": epoch, "path": "checkpoint_last.pt"})
    release.set()
    started.acquire()  # one more copy, for the newest
    sync.close()
    assert len(copies) == 2 and copies[-1] == ("checkpoint_last.pt",)
    assert job.checkpoint_epoch == 4 and len(ex.sync_times) == 2


def test_a_fine_tune_on_a_host_gets_its_parents_checkpoint_copied_there(tmp_path: Path, ssh_boxes) -> None:
    """Two stages on an SSH box: each child's --init_checkpoint (a parent's checkpoint_best.pt on the
    controller) is copied to the box once and the child's command names the box's copy, not the controller's
    path (the stand-in boxes share this machine's disk, so the path alone would have worked by accident)."""
    a, _ = ssh_boxes
    spec = sweep_file(
        tmp_path,
        hosts_block(a.host_yaml(slots=2)),
        """\
        sweeps:
          - name: pretrain
            program: @CURVE@
            method: grid
            metric: {name: score, goal: maximize}
            parameters: {quality: {values: [0.5, 0.7, 0.6]}, epochs: {value: 2}}
          - name: finetune
            program: @CURVE@
            method: grid
            depends_on: pretrain
            init_from: {top: 2}
            metric: {name: score, goal: maximize}
            parameters: {epochs: {values: [2, 3]}}
        """,
        defaults="  slots: hosts\n",
    )
    proc = run_cli(tmp_path, "launch", str(spec), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    parents = sorted(load_trials(tmp_path, "pretrain"), key=lambda t: -t.value)
    children = load_trials(tmp_path, "finetune")
    assert len(children) == 4 and all(t.state.name == "COMPLETE" for t in children)
    assert max(c.value for c in children) > parents[0].value  # they read the parents' checkpoints
    log = (a.workdir / ".orchestrate" / "data" / "sync.log").read_text()
    for parent in parents[:2]:
        ckpt = str(Path(parent.user_attrs["orchestrate.run_dir"]) / "checkpoint_best.pt")
        assert log.count(ckpt) == 1  # copied once for the two children that start from it
    for child in children:
        stdout = (Path(child.user_attrs["orchestrate.run_dir"]) / "stdout.log").read_text()
        started = next(line for line in stdout.splitlines() if line.startswith("starting "))
        used = json.loads(started[len("starting ") :])["init_checkpoint"]
        assert used.startswith(str(a.workdir / ".orchestrate" / "data")), used  # the box's copy
        assert used.endswith("/checkpoint_best.pt")
