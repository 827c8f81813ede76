"""The ``slurm:`` block as users write it (property-based): every file either loads into a SlurmSpec whose srun
options Slurm's own grammar accepts, or stops with a SpecError naming file, line and the ``defaults.slurm`` key —
never another exception. And the Slurm time and gres readers agree with the values the loader accepts."""

from __future__ import annotations

import json
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from orchestrator.executors.slurm import srun_args
from orchestrator.slurm import gres_count, seconds
from orchestrator.spec import load_sweeps
from orchestrator.spec.loader import SLURM_KEYS
from orchestrator.trial.errors import SpecError

VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-5, max_value=10_000),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(
        ["gpu:1", "gpu:a100:2", "none", "90", "1:30:00", "2-00:00:00", "16G", "4000M", "debug", ""]
    ),
    st.text(alphabet="abcgpu019:-_ ,.GM", max_size=12),
    st.lists(
        st.sampled_from(["--exclusive", "--constraint=a100", "-J", "--comment=x", "-x", "n1"]), max_size=3
    ),
)
KEYS = st.one_of(st.sampled_from(SLURM_KEYS), st.sampled_from(["partiton", "gpus", "nodes", "time_limit"]))


@settings(max_examples=150, deadline=None, derandomize=True)
@given(block=st.dictionaries(KEYS, VALUES, max_size=5))
def test_any_slurm_block_loads_or_names_its_key(tmp_path_factory: object, block: dict[str, object]) -> None:
    tmp = Path(tmp_path_factory.mktemp("spec"))  # type: ignore[attr-defined]
    spec = tmp / "sweeps.yaml"
    spec.write_text(
        "defaults:\n"
        f"  slurm: {json.dumps(block)}\n"  # JSON is YAML
        "sweeps:\n  - name: s\n    program: train.py\n    method: grid\n    parameters: {a: {value: 1}}\n"
    )
    try:
        loaded = load_sweeps(spec)
    except SpecError as exc:
        assert exc.file == str(spec) and exc.line == 2
        assert exc.key is not None and exc.key.startswith("defaults.slurm")
        return
    s = loaded.defaults.slurm
    assert s is not None and loaded.sweeps[0].slurm == s
    args = srun_args(s)
    assert args[:2] == ["--nodes=1", "--ntasks=1"]
    if s.time is not None:
        assert seconds(s.time) is None or seconds(s.time) >= 0  # Slurm's time grammar, read back
    if s.gres is not None:
        assert f"--gres={s.gres}" in args and s.gpus == (
            gres_count(s.gres) > 0 or "gpu" in s.gres.split(":")[0]
        )
    for flag in s.srun_flags:
        assert flag.split("=")[0] not in ("-J", "--job-name", "--comment")


def test_time_and_gres_readers() -> None:
    assert seconds("90") == 90 * 60
    assert seconds("1:30") == 90  # MM:SS
    assert seconds("01:30:00") == 5400
    assert seconds("2-00:00:00") == 2 * 86400
    assert seconds("1-12") == 36 * 3600
    assert seconds("1-0:30") == 86400 + 1800
    assert seconds("infinite") is None and seconds("UNLIMITED") is None
    assert gres_count("gpu:4") == 4
    assert gres_count("gpu:a100:2(S:0-1),shard:8") == 2
    assert gres_count("gpu") == 1 and gres_count("(null)") == 0 and gres_count("shard:4") == 0
    assert gres_count("gpu:a100:2,gpu:v100:1") == 3
