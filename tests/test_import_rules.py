"""The package boundary of the design (ARCHITECTURE.md, "The process boundary is a package boundary"),
checked by walking every import statement of the project's source with ``ast``:

1. ``orchestrator/trial/`` (what a trial and the controller share) imports only the standard library and
   itself;
2. ``experiments/``, ``datasets/`` and ``backbones/`` import nothing of ``orchestrator`` but
   ``orchestrator.trial``;
3. the rest of ``orchestrator/`` never imports ``experiments``, ``backbones``, torch, timm or torchvision, and
   ``datasets`` only lazily (inside a function) in ``cli.py`` for ``orchestrate datasets synth|check``.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TORCH_SIDE = ("experiments", "datasets", "backbones")
HEAVY = ("torch", "timm", "torchvision")


def imports(path: Path) -> Iterator[tuple[str, int, bool]]:
    """(module, line, at module level?) for every import in ``path``; relative imports resolved."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    top = {id(n) for n in tree.body} | {
        id(n) for s in tree.body if isinstance(s, (ast.If, ast.Try)) for n in ast.walk(s)
    }
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno, id(node) in top
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            for alias in node.names:  # `from orchestrator import protocol` imports orchestrator.protocol
                yield (
                    (f"{base}.{alias.name}" if not node.module or node.level else base),
                    node.lineno,
                    id(node) in top,
                )


def sources(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _is(mod: str, *names: str) -> bool:
    return any(mod == n or mod.startswith(n + ".") for n in names)


def test_trial_package_is_stdlib_only() -> None:
    bad = []
    for f in sources("orchestrator/trial"):
        for mod, line, _ in imports(f):
            root = mod.split(".")[0]
            stdlib = root in sys.stdlib_module_names or root == "__future__"
            # wandb is the program's own (the bridge patches it inside the trial's process), nobody else's
            bridged = "wandb_bridge" in f.parts and root == "wandb"
            if not (_is(mod, "orchestrator.trial") or stdlib or bridged):
                bad.append(f"{f.relative_to(ROOT)}:{line}: {mod}")
    assert bad == []


def test_torch_side_imports_only_the_trial_package() -> None:
    bad = [
        f"{f.relative_to(ROOT)}:{line}: {mod}"
        for folder in TORCH_SIDE
        for f in sources(folder)
        for mod, line, _ in imports(f)
        if _is(mod, "orchestrator") and not _is(mod, "orchestrator.trial")
    ]
    assert bad == []


def test_controller_never_imports_torch_side_code() -> None:
    bad = []
    for f in sources("orchestrator"):
        for mod, line, top in imports(f):
            lazy_datasets = f.name == "cli.py" and not top and _is(mod, "datasets")
            if _is(mod, "experiments", "backbones", *HEAVY) or (_is(mod, "datasets") and not lazy_datasets):
                bad.append(f"{f.relative_to(ROOT)}:{line}: {mod}")
    assert bad == []
