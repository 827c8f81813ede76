"""Issue 14, class 4: bad sweep files stop with exit 2 and file:line:key before any database or run directory
is written; the loader, fed anything, returns a spec or raises our SpecError — never another exception."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as hs

from orchestrator.cli_launch import launch_sweeps as _launch
from orchestrator.spec import load_sweeps
from orchestrator.spec.yamlio import MAX_FILE_BYTES
from orchestrator.trial.errors import SpecError
from tests.orchestrator.conftest import cli_env

HEAD = "defaults:\n  slots: cpu:1\n  wandb: disabled\nsweeps:\n"


def _sweep(
    name: str = "a", extra: str = "", params: str = "      lr: {values: [1, 2]}\n", program: str = "prog.py"
) -> str:
    return f"  - name: {name}\n    program: {program}\n    method: grid\n{extra}    parameters:\n{params}"


BOMB = (
    "".join(
        f"{a}: &{a} [{', '.join([f'*{p}'] * 9) if p else ', '.join(['lol'] * 9)}]\n"
        for p, a in zip(["", *"abcdefgh"], "abcdefghi", strict=True)
    )
    + "sweeps: [*i]\n"
)

# name → (file text, line, key) of the message expected
CASES: dict[str, tuple[str, int | None, str | None]] = {
    "cycle": (
        HEAD + _sweep("a", "    depends_on: b\n") + _sweep("b", "    depends_on: a\n"),
        5,
        "sweeps[0].depends_on",
    ),
    "self_cycle": (HEAD + _sweep("a", "    depends_on: a\n"), 5, "sweeps[0].depends_on"),
    "long_cycle": (
        HEAD
        + _sweep("a", "    depends_on: c\n")
        + _sweep("b", "    depends_on: a\n")
        + _sweep("c", "    depends_on: b\n"),
        5,
        "sweeps[0].depends_on",
    ),
    "empty_name": (HEAD + _sweep('""'), 5, "sweeps[0].name"),
    "blank_name": (HEAD + _sweep('"   "'), 5, "sweeps[0].name"),
    "long_name": (HEAD + _sweep("x" * 101), 5, "sweeps[0].name"),
    "newline_name": (HEAD + _sweep('"a\\nb"'), 5, "sweeps[0].name"),
    "control_name": (HEAD + _sweep('"a\\x07b"'), 5, "sweeps[0].name"),
    "alias_bomb": (BOMB, 7, None),  # 9 ** 7 values at line 7: over the limit
    "null_min": (HEAD + _sweep(params="      lr: {min: null, max: 1.0}\n"), 9, "sweeps[0].parameters.lr.min"),
    "empty_max": (
        HEAD + _sweep(params="      n: {distribution: int_uniform, min: 0, max: }\n"),
        9,
        "sweeps[0].parameters.n.max",
    ),
    "bool_key_in_value": (
        HEAD + _sweep(params="      reg: {value: {true: 1, a: 2}}\n"),
        9,
        "sweeps[0].parameters.reg.value",
    ),
    "number_key_in_values": (
        HEAD + _sweep(params="      lr: {values: [{1: a}, {b: 2}]}\n"),
        9,
        "sweeps[0].parameters.lr.values",
    ),
    "nan_value": (HEAD + _sweep(params="      lr: {value: .nan}\n"), 9, "sweeps[0].parameters.lr.value"),
    "nan_in_values": (
        HEAD + _sweep(params="      lr: {values: [0.1, .nan]}\n"),
        9,
        "sweeps[0].parameters.lr.values",
    ),
    "inf_max": (
        HEAD + _sweep(params="      lr: {min: 0.1, max: .inf}\n").replace("grid", "random"),
        9,
        "sweeps[0].parameters.lr.max",
    ),
    "missing_program": (HEAD + _sweep(program="no_such_train.py"), 5, "sweeps[0].program"),
    "unset_envvar": (
        HEAD
        + "  - name: a\n    command: [python, prog.py, '--k=${envvar:ORCHESTRATE_TEST_UNSET_X}']\n"
        + "    method: grid\n    parameters:\n      lr: {values: [1]}\n",
        5,
        "sweeps[0].command[2]",
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_spec_is_exit_2_with_file_line_key_and_writes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str
) -> None:
    text, line, key = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ORCHESTRATE_TEST_UNSET_X", raising=False)
    (tmp_path / "prog.py").write_text("print('hi')\n")
    spec = tmp_path / "sweeps.yaml"
    spec.write_text(text)
    with pytest.raises(SpecError) as err:  # what `orchestrate launch` runs, before it renders the error
        _launch(spec, None, False, "table", None, None, None, None, True, True)
    assert err.value.exit_code == 2
    assert (err.value.file, err.value.line, err.value.key) == (str(spec), line, key), err.value.render()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prog.py", "sweeps.yaml"]  # no runs/, no database


def test_the_cli_says_it_in_one_line_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "sweeps.yaml").write_text(
        HEAD + _sweep("a", "    depends_on: b\n") + _sweep("b", "    depends_on: a\n")
    )
    proc = subprocess.run(
        [sys.executable, "-m", "orchestrator", "launch", "sweeps.yaml"],
        cwd=tmp_path,
        env=cli_env(tmp_path),
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "sweeps.yaml:5: sweeps[0].depends_on: depends_on forms a cycle: a → b → a" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache", "sweeps.yaml"] or sorted(
        p.name for p in tmp_path.iterdir()
    ) == ["sweeps.yaml"]


def test_a_slash_in_a_name_is_kept_as_w_and_b_allows_it_and_is_no_path() -> None:
    from orchestrator.trial.rundir import RunDir, safe_name

    assert safe_name("imbal_prop/leq0.1") == "imbal_prop_leq0.1"  # a real W&B sweep name
    assert safe_name("..") == "sweep"
    assert RunDir.for_trial("runs", "../../etc", 3).path == Path("runs/etc/00003")


def test_too_large_file_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    with open(big, "wb") as fh:
        fh.write(b"sweeps:\n# " + b"x" * (MAX_FILE_BYTES + 10) + b"\n")
    with pytest.raises(SpecError, match="larger than 4 MiB"):
        load_sweeps(big)


def test_deep_nesting_is_a_spec_error(tmp_path: Path) -> None:
    deep = tmp_path / "deep.yaml"
    deep.write_text("sweeps: " + "[" * 50_000 + "]" * 50_000 + "\n")
    with pytest.raises(SpecError):
        load_sweeps(deep)


# ---------------------------------------------------------------------------------------------- fuzzing
FRAGMENTS = [
    "sweeps:",
    "defaults:",
    "- name: ",
    "  ",
    "    ",
    "\n",
    "method: ",
    "grid",
    "random",
    "bayes",
    "parameters:",
    "lr:",
    "{values: [",
    "]}",
    "{min: ",
    ", max: ",
    "}",
    "value: ",
    ".nan",
    ".inf",
    "-1",
    "0",
    "1e-3",
    "1e999",
    "&a ",
    "*a",
    "<<: *a",
    "[*a, *a]",
    "depends_on: ",
    "program: ",
    "command: [",
    "${envvar:X}",
    "${args}",
    "metric: {name: s, goal: ",
    "maximize",
    "pruner: {type: ",
    "median",
    "folds: [0, 1]",
    "init_from: best",
    "run_cap: ",
    "retries: ",
    "timeout: ",
    "2h",
    "'",
    '"',
    "!!python/object:os.system",
    "? ",
    ": ",
    "#",
    "---",
    "\t",
    "~",
    "null",
    "true",
    "\x00",
    "\u2028",
    "é",
]
yamlish = hs.lists(hs.sampled_from(FRAGMENTS) | hs.text(string.printable, max_size=6), max_size=40).map(
    "".join
)
scalars = hs.none() | hs.booleans() | hs.integers() | hs.floats() | hs.text(max_size=8)
trees = hs.recursive(
    scalars,
    lambda kids: (
        hs.lists(kids, max_size=4)
        | hs.dictionaries(
            hs.sampled_from(
                [
                    "name",
                    "method",
                    "parameters",
                    "values",
                    "value",
                    "min",
                    "max",
                    "lr",
                    "metric",
                    "sweeps",
                    "defaults",
                    "program",
                    "depends_on",
                    "folds",
                ]
            )
            | hs.text(max_size=5)
            | hs.booleans()  # YAML's `true:` / `yes:` / `1:` keys are not text
            | hs.integers(0, 2),
            kids,
            max_size=5,
        )
    ),
    max_leaves=25,
)
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _load_or_spec_error(path: Path) -> None:
    try:
        loaded = load_sweeps(path)
    except SpecError as exc:
        assert exc.exit_code == 2 and exc.render()
        return
    # what loads can be written as trial.json, Optuna attributes and W&B config: canonical JSON (sorted keys)
    for sweep in loaded.sweeps:
        json.dumps(sweep.describe(), sort_keys=True, default=str)


@seed(14)
@FUZZ
@given(text=yamlish)
def test_fuzz_yamlish_text(tmp_path_factory: pytest.TempPathFactory, text: str) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "sweeps.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass")
    _load_or_spec_error(path)


@seed(14)
@FUZZ
@given(tree=trees, wrap=hs.booleans())
def test_fuzz_structured_yaml(tmp_path_factory: pytest.TempPathFactory, tree: object, wrap: bool) -> None:
    path = tmp_path_factory.mktemp("fuzz") / "sweeps.yaml"
    doc = {"sweeps": [tree]} if wrap else tree
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    _load_or_spec_error(path)
