"""The executor interface is complete (issue 16): ``Executor`` declares every method the controller calls, with
documented defaults; each concrete executor implements or inherits all of them with the base's signature; and
the controller calls nothing else (no ``hasattr``/``getattr`` probing of an executor)."""

from __future__ import annotations

import ast
import inspect
import queue
from pathlib import Path
from typing import Any

import pytest

from orchestrator.executors import Executor, Job
from orchestrator.executors.local import LocalExecutor
from orchestrator.executors.routing import RoutingExecutor
from orchestrator.executors.slurm import SlurmExecutor
from orchestrator.executors.ssh import SSHExecutor
from orchestrator.executors.warm import WarmExecutor

ORCHESTRATOR = Path(__file__).resolve().parents[3] / "orchestrator"
CONCRETE = [LocalExecutor, WarmExecutor, SSHExecutor, SlurmExecutor, RoutingExecutor]
#: the controller's modules: every ``self.executor.X`` in them must be a method of ``Executor``
CONTROLLER = ["scheduler.py", "coordination.py", "childenv.py", "progress.py", "record.py", "running.py"]


def interface() -> dict[str, inspect.Signature]:
    """The public methods ``Executor`` declares (the interface), by name."""
    return {
        name: inspect.signature(member)
        for name, member in vars(Executor).items()
        if inspect.isfunction(member) and not name.startswith("_")
    }


def test_the_interface_is_what_the_controller_needs() -> None:
    assert set(interface()) == {"submit", "stop", "warm_up", "host_lost", "hosts_back", "cleanup", "close"}
    for name in interface():
        assert (getattr(Executor, name).__doc__ or "").strip(), f"Executor.{name} has no docstring"
    assert Executor.__abstractmethods__ == frozenset({"submit", "stop"})


@pytest.mark.parametrize("cls", CONCRETE, ids=lambda c: c.__name__)
def test_each_executor_implements_or_inherits_the_whole_interface(cls: type[Executor]) -> None:
    assert issubclass(cls, Executor)
    assert not inspect.isabstract(cls), f"{cls.__name__} leaves {sorted(cls.__abstractmethods__)} abstract"
    for name, base_sig in interface().items():
        method = getattr(cls, name)
        assert callable(method)
        sig = inspect.signature(method)
        assert list(sig.parameters) == list(base_sig.parameters), f"{cls.__name__}.{name}{sig} != {base_sig}"
        for p, q in zip(sig.parameters.values(), base_sig.parameters.values(), strict=True):
            assert p.kind == q.kind and p.default == q.default, f"{cls.__name__}.{name}: {p} != {q}"


def _executor_attributes(path: Path) -> set[str]:
    """Names X of every ``self.executor.X`` in a module."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Attribute)
            and node.value.attr == "executor"
            and isinstance(node.value.value, ast.Name)
            and node.value.value.id == "self"
        ):
            names.add(node.attr)
    return names


def test_the_controller_calls_only_declared_methods() -> None:
    used: set[str] = set()
    for module in CONTROLLER:
        used |= _executor_attributes(ORCHESTRATOR / module)
    assert used, "no self.executor.X found: the walk looks at the wrong modules"
    assert used <= set(interface()), f"not declared by Executor: {sorted(used - set(interface()))}"
    assert used == set(interface()), f"declared but never called: {sorted(set(interface()) - used)}"


def test_nothing_probes_an_executor_for_optional_methods() -> None:
    for path in sorted(ORCHESTRATOR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id not in ("hasattr", "getattr") or not node.args:
                    continue
                target = ast.unparse(node.args[0])
                assert "executor" not in target and target not in ("self.local", "self.remote"), (
                    f"{path.relative_to(ORCHESTRATOR.parent)}:{node.lineno}: {ast.unparse(node)}"
                )


class _Minimal(Executor):
    """Only the required methods: the hooks are the base's defaults."""

    def submit(self, job: Job, env: dict[str, str], cwd: Path) -> None:
        raise AssertionError("not called")

    def stop(self, job: Job, grace: float = 10.0) -> None:
        raise AssertionError("not called")


def test_the_defaults_do_nothing() -> None:
    events: queue.Queue[tuple[str, Job, Any]] = queue.Queue()
    ex = _Minimal(events)
    assert ex.events is events
    ex.warm_up(["python"], {}, Path.cwd())
    ex.host_lost("gpu-box")
    assert ex.hosts_back() == []
    assert ex.cleanup([{"host": "gpu-box", "run_dir": "/x", "pid": 1}]) == []
    ex.close()
    assert events.empty()


def test_local_executor_uses_the_defaults() -> None:
    ex = LocalExecutor(queue.Queue())
    ex.host_lost("local")
    assert ex.hosts_back() == [] and ex.cleanup([]) == []
    ex.close()
