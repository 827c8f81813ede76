"""The seam the controller asks the experiments through (``python -m experiments.check``), as a subprocess."""

from __future__ import annotations

import pytest

from orchestrator.trial.errors import SpecError
from orchestrator.validate import ask_experiments


def test_checker_answers_each_request_in_order() -> None:
    res = ask_experiments(
        [
            {"op": "validate", "experiment": "train", "params": {"task": "age", "dataset": "utkface"}},
            {"op": "resolve", "experiment": "train", "params": {"lrr": 0.1}},
            {"op": "resolve", "experiment": "train", "params": {"data_root": "/d", "dataset": "celeba"}},
            {"op": "validate", "experiment": "nope", "params": {}},
        ]
    )
    assert res[0]["ok"] and res[0]["dataset"] == "utkface" and "val/mae" in res[0]["reported"]
    assert res[1] == {"ok": False, "message": "unknown parameter 'lrr' for experiment 'train'", "key": "lrr",
                      "hint": "did you mean 'lr'?"}  # fmt: skip
    assert res[2]["ok"] and res[2]["data_root"] == "/d" and "reported" not in res[2]
    assert not res[3]["ok"] and res[3]["key"] == "experiment"


def test_bad_parameter_is_located_in_the_sweep_file(tmp_path) -> None:
    from orchestrator.spec import load_sweeps
    from orchestrator.validate import validate_experiments

    f = tmp_path / "s.yaml"
    f.write_text("sweeps:\n  - name: a\n    experiment: train\n    method: grid\n    parameters:\n"
                 "      lr: {values: [0.1]}\n      batch_sise: {values: [8, 16]}\n")  # fmt: skip
    with pytest.raises(SpecError) as e:
        validate_experiments(load_sweeps(f).sweeps)
    assert e.value.line == 7 and e.value.key == "sweeps[0].parameters.batch_sise"
    assert "did you mean 'batch_size'" in (e.value.hint or "")
