"""The zygote package is light: importing it imports no torch (nor anything outside the standard library), so
a remote box's launcher and daemon run before anything else is checked, and the heavy modules are imported only
by a zygote process told to preload them."""

from __future__ import annotations

import subprocess
import sys

from tests.test_import_rules import ROOT, _is, imports, sources

STDLIB_SIDE = ("orchestrator/zygote", "orchestrator/remote.py")


def test_the_zygote_package_and_the_remote_launcher_import_only_the_standard_library() -> None:
    bad = []
    files = [*sources("orchestrator/zygote"), ROOT / "orchestrator" / "remote.py"]
    for f in files:
        for mod, line, _ in imports(f):
            root = mod.split(".")[0]
            stdlib = root in sys.stdlib_module_names or root == "__future__"
            if not (stdlib or _is(mod, "orchestrator.trial", "orchestrator.zygote")):
                bad.append(f"{f.relative_to(ROOT)}:{line}: {mod}")
    assert bad == []


def test_importing_every_zygote_module_loads_no_heavy_module() -> None:
    script = (
        "import sys\n"
        "import orchestrator.zygote, orchestrator.zygote.client, orchestrator.zygote.daemon\n"
        "import orchestrator.zygote.forking, orchestrator.zygote.keys, orchestrator.zygote.preload\n"
        "import orchestrator.zygote.workers, orchestrator.zygote.__main__, orchestrator.remote\n"
        "heavy = ('torch', 'numpy', 'timm', 'torchvision', 'wandb', 'optuna', 'experiments', 'datasets')\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_the_module_entry_point_says_how_to_use_it() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "orchestrator.zygote"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert out.returncode == 2 and "--zygote FOLDER NAME" in out.stderr
