"""``gpus: auto`` on an SSH host: its GPUs are asked of the box's own nvidia-smi.

No GPU exists here, so the box (a real sshd on 127.0.0.1) gets a stand-in ``nvidia-smi`` on its PATH that
answers the two queries orchestrate makes, as the real one prints them for a two-GPU box."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from orchestrator.hosts import inventory_slots
from orchestrator.spec import load_sweeps
from tests.orchestrator.conftest import load_trials, run_cli
from tests.orchestrator.remote.conftest import have_sshd, sshd_boxes
from tests.orchestrator.remote.test_ssh import hosts_block, sweep_file

NVIDIA_SMI = """#!/bin/sh
# stand-in for a two-GPU box's nvidia-smi: the two queries orchestrate makes
case "$*" in
  *index,name,memory.total,memory.free*)
    echo "0, NVIDIA H100 80GB HBM3, 81559, 80100"
    echo "1, NVIDIA H100 80GB HBM3, 81559, 1200" ;;
  *query-gpu=index*) echo 0; echo 1 ;;
  *) echo "unexpected: $*" >&2; exit 9 ;;
esac
"""


@pytest.fixture(scope="module")
def gpu_box(tmp_path_factory: pytest.TempPathFactory):
    if not have_sshd():
        pytest.skip("openssh-server/openssh-client not installed (.ci/setup installs them)")
    bindir = tmp_path_factory.mktemp("gpubin")
    smi = bindir / "nvidia-smi"
    smi.write_text(NVIDIA_SMI)
    smi.chmod(smi.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    path = f"{bindir}:{os.environ.get('PATH', '/usr/bin:/bin')}"
    with sshd_boxes(("gpubox",), extra_config=f"SetEnv PATH={path}\n") as (box,):
        yield box


def _spec(tmp_path: Path, box, per_gpu: int = 1) -> Path:
    host = box.host_yaml().replace("gpus: cpu:1", "gpus: auto") + f"  per_gpu: {per_gpu}\n"
    return sweep_file(
        tmp_path,
        hosts_block(host),
        """\
        sweeps:
          - name: auto
            program: @CURVE@
            method: grid
            metric: {name: score, goal: maximize}
            parameters: {quality: {values: [0.2, 0.4, 0.6, 0.8]}, epochs: {value: 2}}
        """,
        defaults="  slots: hosts\n",  # only the box's slots
    )


def test_gpus_auto_gives_one_slot_per_gpu_of_the_box(tmp_path: Path, gpu_box) -> None:
    hosts = load_sweeps(_spec(tmp_path, gpu_box, per_gpu=2)).defaults.hosts
    slots, notes = inventory_slots(hosts)
    assert notes == []
    assert [(s.id, s.gpu, s.host, s.kind) for s in slots] == [
        ("gpubox:gpu0.0", "0", "gpubox", "gpu"),
        ("gpubox:gpu0.1", "0", "gpubox", "gpu"),
        ("gpubox:gpu1.0", "1", "gpubox", "gpu"),
        ("gpubox:gpu1.1", "1", "gpubox", "gpu"),
    ]
    assert slots[2].env()["CUDA_VISIBLE_DEVICES"] == "1"  # each trial sees only its GPU


def test_hosts_check_lists_the_gpus_with_their_free_memory(tmp_path: Path, gpu_box) -> None:
    proc = run_cli(tmp_path, "hosts", "check", str(_spec(tmp_path, gpu_box)), "--format", "json")
    (row,) = json.loads(proc.stdout)
    assert row["info"]["gpus"] == [
        ["0", "NVIDIA H100 80GB HBM3", "81559", "80100"],
        ["1", "NVIDIA H100 80GB HBM3", "81559", "1200"],
    ]


def test_a_sweep_runs_on_the_gpus_found(tmp_path: Path, gpu_box) -> None:
    proc = run_cli(tmp_path, "launch", str(_spec(tmp_path, gpu_box)), "--plain")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    trials = load_trials(tmp_path, "auto")
    assert len(trials) == 4 and all(t.state.name == "COMPLETE" for t in trials)
    assert {t.user_attrs["orchestrate.slot"] for t in trials} == {"gpubox:gpu0", "gpubox:gpu1"}
