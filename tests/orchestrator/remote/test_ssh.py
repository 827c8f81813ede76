"""Trials on SSH hosts (real sshd on 127.0.0.1, two ports), through the real CLI."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from orchestrator.spec import load_sweeps
from orchestrator.trial.errors import SpecError
from tests.orchestrator.conftest import CURVE, ROOT, cli_env, load_trials, run_cli

PROBE = ROOT / "tests" / "orchestrator" / "remote" / "programs" / "secret_probe.py"
SECRET = "sk-test-" + hashlib.sha256(str(os.getpid()).encode()).hexdigest()[:24]


def hosts_block(*items: str) -> str:
    return "  hosts:\n" + "".join(textwrap.indent(i, "    ") for i in items)


def sweep_file(tmp_path: Path, hosts: str, body: str, defaults: str = "") -> Path:
    text = "defaults:\n  wandb: disabled\n  retries: 0\n" + defaults + hosts + textwrap.dedent(body)
    path = tmp_path / "sweeps.yaml"
    path.write_text(text.replace("@CURVE@", str(CURVE)).replace("@PROBE@", str(PROBE)))
    return path


# ------------------------------------------------------------------------------------------------ spec
def test_hosts_spec_is_validated_with_file_line_and_key(tmp_path: Path) -> None:
    good = tmp_path / "hosts.yaml"
    good.write_text(
        "hosts:\n  - {name: gpu1, ssh: me@10.0.0.5, port: 2200, gpus: [0, 1], workdir: ~/faces,"
        " python: ~/venv, cost_per_hour: 2.5, labels: [a100]}\n  - {name: cpu1, ssh: me@10.0.0.6, gpus: 'cpu:4'}\n"
    )
    spec = tmp_path / "s.yaml"
    spec.write_text(
        f"defaults:\n  hosts: {good.name}\nsweeps:\n  - name: a\n    program: {CURVE}\n    method: grid\n"
        "    parameters: {quality: {values: [1]}}\n"
    )
    hosts = load_sweeps(spec).defaults.hosts
    assert [h.name for h in hosts] == ["gpu1", "cpu1"]
    assert hosts[0].gpus == ("0", "1") and hosts[0].port == 2200 and hosts[1].gpus == "cpu:4"
    from orchestrator.hosts import host_slots, python_argv

    assert [s.id for s in host_slots(hosts[0])] == ["gpu1:gpu0", "gpu1:gpu1"]
    assert python_argv(hosts[0]) == ["~/venv/bin/python"]
    assert [s.host for s in host_slots(hosts[1])] == ["cpu1"] * 4

    good.write_text("hosts:\n  - name: gpu1\n    ssh: me@x\n    gpus: lots\n")
    with pytest.raises(SpecError) as err:
        load_sweeps(spec)
    text = str(err.value.render() if hasattr(err.value, "render") else err.value)
    assert "hosts.yaml" in text and ":4" in text and "hosts[0].gpus" in text

    spec.write_text(
        "defaults:\n  hosts:\n    - name: a\n      ssh: me@x\n      colour: red\nsweeps:\n  - name: a\n"
        f"    program: {CURVE}\n    method: grid\n    parameters: {{quality: {{values: [1]}}}}\n"
    )
    with pytest.raises(SpecError) as err:
        load_sweeps(spec)
    text = str(err.value.render() if hasattr(err.value, "render") else err.value)
    assert "s.yaml:5" in text and "defaults.hosts[0].colour" in text


# ------------------------------------------------------------------------------------------- one sweep
def _cmdlines() -> str:
    out = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            with contextlib.suppress(OSError):
                out.append(
                    Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                )
    return "\n".join(out)


def test_remote_trials_get_secrets_only_through_the_session(tmp_path: Path, ssh_boxes) -> None:
    a, b = ssh_boxes
    spec = sweep_file(
        tmp_path,
        hosts_block(a.host_yaml(extra="  cost_per_hour: 2.5\n"), b.host_yaml()),
        """\
        sweeps:
          - name: probe
            program: @PROBE@
            method: grid
            metric: {name: score, goal: maximize}
            parameters:
              x: {values: [1, 2, 3, 4]}
              sleep: {value: 1.0}
        """,
    )
    check = run_cli(tmp_path, "hosts", "check", str(spec))
    assert "boxa: reachable" in check.stdout and "boxb: reachable" in check.stdout, (
        check.stdout + check.stderr
    )

    env = cli_env(tmp_path)
    env["ORCH_TEST_API_KEY"] = SECRET
    proc = subprocess.Popen(
        [sys.executable, "-m", "orchestrator", "launch", str(spec), "--plain", "--slots", "hosts"],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    seen_running = False
    while proc.poll() is None:
        cmd = _cmdlines()
        assert SECRET not in cmd  # never on a command line `ps` shows
        seen_running = seen_running or "orchestrator.remote" in cmd
        time.sleep(0.2)
    out, err = proc.communicate()
    assert proc.returncode == 0, out + err
    assert seen_running
    trials = load_trials(tmp_path, "probe")
    assert sorted(t.state.name for t in trials) == ["COMPLETE"] * 4
    assert all(t.value == 1.0 for t in trials)  # every remote trial saw the key
    hosts = {t.user_attrs["orchestrate.host"] for t in trials}
    assert hosts == {"boxa", "boxb"}
    for t in trials:  # the inventory's price reaches the trial (the leaderboard's cost column)
        assert t.user_attrs.get("orchestrate.cost_per_hour") == (
            2.5 if t.user_attrs["orchestrate.host"] == "boxa" else None
        )
    want = hashlib.sha256(SECRET.encode()).hexdigest()
    for t in trials:
        run_dir = Path(t.user_attrs["orchestrate.run_dir"])
        probe = (run_dir / "probe.txt").read_text().split("\n")  # copied back from the host
        assert probe[0] == want
        assert str(ROOT) not in probe[2]  # it ran in the host's workdir, not in this checkout
        assert t.user_attrs["orchestrate.remote"]["host"] == t.user_attrs["orchestrate.host"]
    # the secret is in no file: run dirs, the study, the hosts' workdirs
    for base in (tmp_path, a.workdir / ".orchestrate", b.workdir / ".orchestrate"):
        for f in base.rglob("*"):
            if f.is_file():
                assert SECRET.encode() not in f.read_bytes(), f
    check = run_cli(tmp_path, "hosts", "check", str(spec))
    assert "code version" not in check.stdout  # synced by the launch


def test_hosts_check_reports_an_unreachable_host(tmp_path: Path, ssh_boxes) -> None:
    from tests.orchestrator.remote.conftest import free_port

    a, _ = ssh_boxes
    dead = (
        a.host_yaml()
        .replace("name: boxa", "name: deadbox")
        .replace(f"port: {a.port}", f"port: {free_port()}")
    )
    spec = sweep_file(
        tmp_path,
        hosts_block(a.host_yaml(), dead),
        """\
        sweeps:
          - name: c
            program: @CURVE@
            method: grid
            parameters: {quality: {values: [1]}}
        """,
    )
    proc = run_cli(tmp_path, "hosts", "check", str(spec), "--format", "json")
    assert proc.returncode == 1
    got = {r["host"]: r for r in json.loads(proc.stdout)}
    assert got["boxa"]["info"]["reachable"] and got["boxa"]["info"]["packages"]["numpy"]
    assert not got["deadbox"]["ok"] and "unreachable" in got["deadbox"]["problems"][0]
