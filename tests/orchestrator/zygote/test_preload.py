"""``preload``: names are imported; ``module:function`` also calls the function once; a failure costs only
that entry's warmth (a line on stderr), never the zygote."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from orchestrator.zygote import preload as pre
from orchestrator.zygote.preload import preload


def test_preload_imports_calls_and_survives_failures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "zpre_mod.py").write_text("CALLS = []\ndef warm():\n    CALLS.append(1)\n")
    (tmp_path / "zpre_plain.py").write_text("X = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(pre, "note_temp_dirs", lambda: None)  # (this process is no zygote)
    preload(["zpre_plain", "zpre_mod:warm", "zpre_missing", "zpre_mod:absent", "zpre_plain"])
    assert "zpre_plain" in sys.modules and sys.modules["zpre_mod"].CALLS == [1]
    err = capsys.readouterr().err
    assert "could not preload zpre_missing" in err and "could not preload zpre_mod:absent" in err
    for name in ("zpre_mod", "zpre_plain"):
        monkeypatch.delitem(sys.modules, name)
