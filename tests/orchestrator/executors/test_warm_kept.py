"""A zygote that outlives its launch (hot launches), with real processes: the next launch reuses it, changed
code gets a new one and the stale one leaves, an idle one leaves, ORCHESTRATE_ZYGOTE=0 keeps none, status
lists it, and a killed controller still takes its trials with it."""

from __future__ import annotations

import itertools
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from orchestrator.executors import get_executor
from orchestrator.executors._base import Job
from orchestrator.executors.local import LocalExecutor
from orchestrator.executors.warm import WarmExecutor, keep_zygote, render_zygotes, runtime_dir, zygotes
from orchestrator.slots import Slot
from orchestrator.trial.rundir import RunDir
from tests.orchestrator.executors.test_local import _alive
from tests.orchestrator.executors.test_warm import PROBE, TRIAL, _imports, _slots, _wait_until

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="fork servers: Linux")

ROOT = Path(__file__).resolve().parents[3]
_numbers = itertools.count()


@pytest.fixture
def rt(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A private runtime dir (short: socket paths), and no daemon left in it afterwards."""
    base = Path(tempfile.mkdtemp(prefix="oz"))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(base))
    monkeypatch.setenv("ORCHESTRATE_ZYGOTE", "1")
    folder = runtime_dir()
    assert folder is not None and str(folder).startswith(str(base))
    try:
        yield folder
    finally:
        pids = [z["pid"] for z in zygotes(folder)]
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        _wait_until(lambda: not any(_alive(p) for p in pids))
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def code(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    src.mkdir()
    (src / "warmprobe.py").write_text(PROBE)
    (src / "warmtrial.py").write_text(TRIAL)
    # a package of the preloaded code (found first, on the trials' PYTHONPATH): its sources key the daemon
    (src / "experiments").mkdir()
    (src / "experiments" / "__init__.py").write_text("VERSION = 1\n")
    return src


class Launch:
    """One controller's executor (a launch) with a daemon kept between launches."""

    def __init__(self, tmp_path: Path, code: Path, cwd: Path | None = None, **extra: str) -> None:
        self.tmp, self.code, self.extra = tmp_path, code, extra
        self.cwd = cwd or tmp_path
        self.events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
        self.ex = WarmExecutor(self.events, preload=("warmprobe",))
        assert self.ex.keep

    def env(self, slot: Slot, job: Job) -> dict[str, str]:
        env = dict(os.environ)
        env.update(slot.env())
        env.update(
            {
                "PYTHONPATH": os.pathsep.join([str(self.code), str(ROOT)]),
                "PROBE_LOG": str(self.tmp / "imports.log"),
                "ORCHESTRATE_CACHE_DIR": str(self.tmp / "cache"),
                "ORCHESTRATE_RUN_DIR": str(job.run_dir.path),
                "ORCHESTRATE_ZYGOTE_IDLE_S": "120",
            }
        )
        env.update(self.extra)
        return env

    def start(self, n: int, sleep: float = 0, module: str = "warmtrial") -> list[Job]:
        """``n`` trials on ``n`` slots at once."""
        jobs = []
        for slot in _slots(n):
            key = f"{id(self)}-{slot.id}-{next(_numbers)}"
            job = Job(
                key=key,
                slot=slot,
                run_dir=RunDir(self.tmp / "runs" / key),
                argv=[sys.executable, "-u", "-m", module, f"--sleep={sleep}"],
            )
            job.run_dir.create()
            self.ex.submit(job, self.env(slot, job), self.cwd)
            jobs.append(job)
        return jobs

    def run(self, n: int, sleep: float = 0, module: str = "warmtrial") -> list[tuple[int, dict[str, Any]]]:
        """Each trial's exit status and its info event."""
        return self.wait(self.start(n, sleep, module))

    def wait(self, jobs: list[Job]) -> list[tuple[int, dict[str, Any]]]:
        info: dict[str, dict[str, Any]] = {}
        done: dict[str, int] = {}
        while len(done) < len(jobs):
            kind, job, payload = self.events.get(timeout=120)
            if kind == "event" and payload.get("event") == "info":
                info[job.key] = payload
            elif kind == "exit":
                done[job.key] = payload
        for job in jobs:
            assert job.pid == info[job.key]["pid"]
        return [(done[j.key], info[j.key]) for j in jobs]


def _listening(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.sock"))


def test_a_second_launch_reuses_the_zygote_and_status_shows_it(tmp_path: Path, code: Path, rt: Path) -> None:
    # two launches starting at once: each finds no daemon and may start one; the lock keeps one
    gone = tmp_path / "gone"  # their directory, removed before the next launch
    gone.mkdir()
    first, other = Launch(tmp_path, code, cwd=gone), Launch(tmp_path, code, cwd=gone)
    results: list[Any] = []
    threads = [threading.Thread(target=lambda la=la: results.extend(la.run(2))) for la in (first, other)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [rc for rc, _ in results] == [0, 0, 0, 0]
    assert all(info["preloaded"] and info["cwd"] == str(gone) for _, info in results)
    assert sorted(info["slot_gpu"] for _, info in results) == ["0", "0", "1", "1"]
    daemon = {info["ppid"] for _, info in results}
    assert len(daemon) == 1 and len(_imports(tmp_path)) == 1
    (pid,) = daemon
    first.ex.close()
    other.ex.close()
    shutil.rmtree(gone)
    # the next launch, from another directory whose module only it has: no import, the same daemon forks it
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "only_here.py").write_text(TRIAL)
    again = Launch(tmp_path, code, cwd=elsewhere).run(1, module="only_here")
    assert again[0][0] == 0 and again[0][1]["ppid"] == pid and len(_imports(tmp_path)) == 1
    assert again[0][1]["cwd"] == str(elsewhere) and again[0][1]["preloaded"]
    (z,) = zygotes(rt)
    assert z["pid"] == pid and z["served"] == 5 and z["running"] == 0 and z["cwd"] == str(gone)
    assert z["python"] == sys.executable and z["env"]["ORCHESTRATE_PRELOAD"] == "warmprobe"
    assert z["idle_exit_s"] == 120
    assert f"zygote {z['name']} (trials): pid {pid}," in render_zygotes([z])


def test_changed_code_gets_a_new_zygote_and_the_stale_one_leaves(
    tmp_path: Path, code: Path, rt: Path
) -> None:
    ((rc, info),) = Launch(tmp_path, code).run(1)
    old = info["ppid"]
    assert rc == 0 and _listening(rt) and len(_imports(tmp_path)) == 1
    (code / "experiments" / "__init__.py").write_text("VERSION = 2\n")
    ((rc, info),) = Launch(tmp_path, code).run(1)
    assert rc == 0 and info["ppid"] != old and len(_imports(tmp_path)) == 2
    _wait_until(lambda: not _alive(old))  # it saw its code change
    assert not _alive(old) and [z["pid"] for z in zygotes(rt)] == [info["ppid"]]


def test_an_idle_zygote_leaves_and_a_killed_controller_takes_its_trial(
    tmp_path: Path, code: Path, rt: Path
) -> None:
    """SIGKILL of the controller: its trial stops (lifeline); the daemon lives on until idle, then leaves."""
    out = tmp_path / "pids.json"
    script = textwrap.dedent(
        f"""
        import json, sys, time
        from pathlib import Path
        sys.path.insert(0, {str(ROOT)!r})
        from tests.orchestrator.executors.test_warm_kept import Launch
        la = Launch(Path({str(tmp_path)!r}), Path({str(code)!r}), ORCHESTRATE_ZYGOTE_IDLE_S="1")
        la.start(1, 600)
        kind, job, payload = la.events.get(timeout=120)
        Path({str(out)!r}).write_text(json.dumps([payload["ppid"], payload["pid"]]))
        time.sleep(600)
        """
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, env=dict(os.environ))
    try:
        _wait_until(lambda: out.exists() and bool(out.read_text()))
        daemon, trial = json.loads(out.read_text())
        assert _alive(daemon) and _alive(trial)
        parent.send_signal(signal.SIGKILL)
        parent.wait()
        _wait_until(lambda: not _alive(trial))
        assert not _alive(trial)
        # nothing to serve for a second: it removes its socket and exits
        _wait_until(lambda: not _alive(daemon))
        assert not _alive(daemon) and not _listening(rt) and zygotes(rt) == []
    finally:
        parent.kill()


def test_zygote_off_keeps_none_and_fresh_workers_never_start_one(
    tmp_path: Path, code: Path, rt: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert keep_zygote({}) and keep_zygote({"ORCHESTRATE_ZYGOTE": "1"})
    assert not any(keep_zygote({"ORCHESTRATE_ZYGOTE": v}) for v in ("0", "false", "off", "No"))
    events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
    assert isinstance(get_executor("local", events, warm=False), LocalExecutor)
    monkeypatch.setenv("ORCHESTRATE_ZYGOTE", "0")
    ex = get_executor("local", events, warm=True)
    assert isinstance(ex, WarmExecutor) and not ex.keep
    assert not rt.exists() or not _listening(rt)


def test_a_dead_daemons_socket_is_removed(rt: Path) -> None:
    rt.mkdir(mode=0o700, parents=True, exist_ok=True)
    stray = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    stray.bind(str(rt / "0123456789abcdef.sock"))
    stray.close()  # its daemon died without removing it
    assert zygotes(rt) == [] and not _listening(rt)


HOT = """
defaults:
  slots: cpu:2
  wandb: disabled
  retries: 0
sweeps:
  - name: {name}
    command:
      - ${{interpreter}}
      - -u
      - -m
      - tests.orchestrator.programs.curve
      - ${{args}}
    method: grid
    metric: {{name: score, goal: maximize}}
    parameters:
      quality: {{values: [1.0, 0.5]}}
      epochs: {{value: 2}}
      sleep: {{value: 0.01}}
"""


def test_two_real_launches_share_one_zygote_and_status_lists_it(tmp_path: Path, rt: Path) -> None:
    from tests.orchestrator.conftest import cli_env, load_trials

    env = cli_env(tmp_path)
    env.update(
        {
            "XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"],
            "ORCHESTRATE_ZYGOTE": "1",
            "ORCHESTRATE_PRELOAD": "json",
            "ORCHESTRATE_ZYGOTE_IDLE_S": "60",
        }
    )

    def cli(*args: str) -> str:
        proc = subprocess.run(
            [sys.executable, "-m", "orchestrator", *args],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    for name in ("first", "second"):
        (tmp_path / f"{name}.yaml").write_text(HOT.format(name=name))
        cli("launch", str(tmp_path / f"{name}.yaml"), "--plain")
        assert sorted(t.value for t in load_trials(tmp_path, name)) == [0.375, 0.75]  # q * (1 - 0.5**2)
    report = json.loads(cli("status", "--format", "json"))
    # (the launches' own controller zygote, orchestrator/front.py, is listed too)
    (z,) = [z for z in report["zygotes"] if z["env"]["ORCHESTRATE_PRELOAD"] == "json"]
    assert z["served"] == 4 and z["cwd"] == str(tmp_path) and z["env"]["ORCHESTRATE_PRELOAD"] == "json"
    assert f"zygote {z['name']} (trials): pid {z['pid']}," in cli("status")


CURVE_SWEEP = """
defaults:
  slots: cpu:2
  wandb: disabled
  retries: 0
sweeps:
  - name: {name}
    program: {curve}
    method: grid
    metric: {{name: score, goal: maximize}}
    parameters:
      quality: {{values: [1.0, 0.5]}}
      epochs: {{value: {epochs}}}
      sleep: {{value: {sleep}}}
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def test_a_hot_launch_is_forked_and_a_killed_front_stops_it_and_its_trials(tmp_path: Path, rt: Path) -> None:
    from orchestrator.front import CONTROLLER_PRELOAD
    from tests.orchestrator.conftest import CURVE, cli_env, load_trials

    env = cli_env(tmp_path)
    env.update({"XDG_RUNTIME_DIR": os.environ["XDG_RUNTIME_DIR"], "ORCHESTRATE_ZYGOTE": "1"})
    argv = [sys.executable, "-m", "orchestrator", "launch", "--plain"]
    # the first launch runs here and starts the controller zygote for the next ones
    (tmp_path / "a.yaml").write_text(CURVE_SWEEP.format(name="a", curve=CURVE, epochs=2, sleep=0.01))
    first = subprocess.run(
        [*argv, "a.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert first.returncode == 0, first.stdout + first.stderr
    assert sorted(t.value for t in load_trials(tmp_path, "a")) == [0.375, 0.75]

    def controller_zygote() -> dict[str, Any] | None:
        found = [
            z for z in zygotes(rt) if z["env"].get("ORCHESTRATE_PRELOAD") == ",".join(CONTROLLER_PRELOAD)
        ]
        return found[0] if found else None

    _wait_until(lambda: controller_zygote() is not None)
    daemon = controller_zygote()
    assert daemon is not None and daemon["served"] == 0
    # the next one is forked by it: its trials run until the front is killed
    (tmp_path / "b.yaml").write_text(CURVE_SWEEP.format(name="b", curve=CURVE, epochs=1, sleep=600))
    front = subprocess.Popen([*argv, "b.yaml"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL)
    try:
        _wait_until(lambda: len([c for p in _children(daemon["pid"]) for c in _children(p)]) >= 2)
        (controller,) = _children(daemon["pid"])
        trials = _children(controller)
        assert len(trials) >= 2 and all(_alive(p) for p in [controller, *trials])
        front.send_signal(signal.SIGKILL)
        front.wait()
        _wait_until(lambda: not any(_alive(p) for p in [controller, *trials]))
        assert not any(_alive(p) for p in [controller, *trials])
    finally:
        front.kill()
    z = controller_zygote()
    assert z is not None and z["served"] == 1 and z["pid"] == daemon["pid"]
    # a hot launch that runs to its end: the same output as a launch run in its own process, nothing more
    # (it printed runpy's "'orchestrator.cli' found in sys.modules" RuntimeWarning, a second copy of the CLI)
    (tmp_path / "c.yaml").write_text(CURVE_SWEEP.format(name="c", curve=CURVE, epochs=1, sleep=0.01))
    hot = subprocess.run(
        [*argv, "c.yaml"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert hot.returncode == 0 and hot.stderr == "", hot.stdout + hot.stderr
    assert "[c] 2 complete, 0 pruned, 0 failed" in hot.stdout
    z = controller_zygote()
    assert z is not None and z["served"] == 2 and z["pid"] == daemon["pid"]
