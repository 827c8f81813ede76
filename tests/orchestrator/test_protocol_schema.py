"""Issue 14, class 1: whatever a trial prints, the reader returns None, a valid event or an ``invalid`` event
naming the line — it never raises, and what it returns is safe for the controller to use."""

from __future__ import annotations

import json
import math
import subprocess
import sys

from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as hs

from orchestrator.executors.local import read_lines
from orchestrator.trial import protocol

FUZZ = settings(max_examples=150, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck))


def _check_event(event: dict | None, line: str) -> None:
    """What the controller may assume of a parsed line (scheduler._on_event relies on exactly this)."""
    if event is None:
        assert not line.startswith(protocol.PREFIX)
        return
    kind = event["event"]
    if kind == protocol.INVALID:
        assert isinstance(event["error"], str) and event["error"]
        assert isinstance(event["line"], str) and len(event["line"]) <= 260  # quoted, truncated
        return
    assert kind in protocol.EVENTS
    if kind in (protocol.EVENT_METRICS, protocol.EVENT_SUMMARY):
        metrics = event.get("metrics", {})
        assert isinstance(metrics, dict)
        for value in metrics.values():
            assert value is None or isinstance(value, (bool, int, float, str))
            v = protocol.as_float(value)  # never raises (OverflowError on huge ints was one crash)
            assert v is None or isinstance(v, float)
        step = event.get("step") if kind == protocol.EVENT_METRICS else None
        assert step is None or (type(step) is int and 0 <= step < protocol.MAX_STEP)
    if kind == protocol.EVENT_CHECKPOINT:
        assert type(event["epoch"]) is int and event["epoch"] >= 0


def test_bad_shapes_are_invalid_with_the_line_named() -> None:
    bad = [
        '{"event": "metrics", "step": 1, "metrics": [1, 2]}',
        '{"event": "metrics", "step": "three", "metrics": {"a": 1}}',
        '{"event": "metrics", "step": -1, "metrics": {"a": 1}}',
        '{"event": "metrics", "step": 1e300, "metrics": {"a": 1}}',
        '{"event": "metrics", "step": NaN, "metrics": {"a": 1}}',
        '{"event": "metrics", "step": 99999999999999999999, "metrics": {"a": 1}}',
        '{"event": "metrics", "step": 1, "metrics": {"a": ' + "9" * 400 + "}}",
        '{"event": "metrics", "step": 1, "metrics": {"a": ' + "9" * 5000 + "}}",
        '{"event": "metrics", "step": 1, "metrics": {"a": {"nested": [1]}}}',
        '{"event": "metrics", "step": true, "metrics": {"a": 1}}',
        '{"event": "summary", "metrics": "oops"}',
        '{"event": "summary", "metrics": null}',
        '{"event": "checkpoint", "epoch": "x"}',
        '{"event": "info", "resumed_from_epoch": [1]}',
        '{"event": "info", "remote_exit": "0"}',
        '{"event": "nope"}',
        '{"event": ["metrics"]}',
        "[1, 2, 3]",
        '"metrics"',
        "null",
        "[" * 100_000 + "]" * 100_000,
        "{broken",
    ]
    for body in bad:
        line = protocol.PREFIX + body
        event = protocol.parse_line(line)
        assert event is not None and event["event"] == protocol.INVALID, body[:80]
        assert event["line"].startswith(protocol.PREFIX)  # the reason quotes the line …
        assert len(event["line"]) <= 260  # … truncated
        _check_event(event, line)


def test_good_lines_still_parse() -> None:
    line = protocol.format_event("metrics", step=3, metrics={"val/acc": 0.5, "loss": float("nan"), "n": 10})
    event = protocol.parse_line(line)
    assert event == {"event": "metrics", "step": 3, "metrics": {"val/acc": 0.5, "loss": "nan", "n": 10}}
    assert protocol.parse_line(protocol.format_event("summary", metrics={"best_epoch": None}))["metrics"] == {
        "best_epoch": None
    }
    assert protocol.parse_line(protocol.format_event("checkpoint", epoch=2, path="c.pt"))["epoch"] == 2
    # JSON's own NaN literal is a float NaN the controller treats as a non-finite metric, not a bad line
    nan = protocol.parse_line(protocol.PREFIX + '{"event": "metrics", "step": 0, "metrics": {"a": NaN}}')
    assert nan is not None and math.isnan(nan["metrics"]["a"])


json_values = hs.recursive(
    hs.none()
    | hs.booleans()
    | hs.integers(min_value=-(2**80), max_value=2**80)
    | hs.floats(allow_nan=True, allow_infinity=True)
    | hs.text(max_size=20),
    lambda children: (
        hs.lists(children, max_size=4) | hs.dictionaries(hs.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
events = hs.fixed_dictionaries(
    {"event": hs.sampled_from([*protocol.EVENTS, "other"])},
    optional={
        "step": json_values,
        "metrics": json_values | hs.dictionaries(hs.text(max_size=8), json_values, max_size=5),
        "epoch": json_values,
        "path": json_values,
        "resumed_from_epoch": json_values,
        "remote_exit": json_values,
    },
)


@seed(14)
@FUZZ
@given(obj=events | json_values)
def test_fuzz_arbitrary_json_never_raises(obj: object) -> None:
    line = protocol.PREFIX + json.dumps(obj)
    _check_event(protocol.parse_line(line), line)


@seed(14)
@FUZZ
@given(raw=hs.binary(max_size=300))
def test_fuzz_arbitrary_bytes_never_raise(raw: bytes) -> None:
    for data in (raw, protocol.PREFIX.encode() + raw):
        line = data.decode("utf-8", "replace")
        _check_event(protocol.parse_line(line), line)


def test_reader_over_a_real_pipe_cuts_long_lines_and_keeps_the_rest() -> None:
    """The executor's reader: a 3 MiB line without a newline, then a protocol line cut inside it, then a
    good line — the long line is cut (bounded memory), no piece after its start reads as a protocol line,
    and the good line after it is found."""
    code = (
        "import sys; w = sys.stdout.buffer.write; "
        "w(b'@orchestrate ' + b'x' * (3 << 20) + b'@orchestrate {\"event\": \"nope\"}\\n'); "
        'w(b\'@orchestrate {"event": "summary", "metrics": {"a": 1}}\\n\')'
    )
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, start_new_session=True)
    pieces = list(read_lines(proc, grace=1.0))
    proc.wait()
    assert max(len(p) for p in pieces) <= protocol.MAX_LINE
    assert sum(len(p) for p in pieces) >= 3 << 20
    parsed = [protocol.parse_line(p.decode("utf-8", "replace")) for p in pieces]
    kinds = [e["event"] for e in parsed if e is not None]
    assert kinds == [protocol.INVALID, protocol.EVENT_SUMMARY]  # the cut line once, then the good one


@seed(14)
@FUZZ
@given(
    step=hs.integers(min_value=0, max_value=protocol.MAX_STEP - 1),
    metrics=hs.dictionaries(
        hs.text(max_size=1200),
        hs.none()
        | hs.booleans()
        | hs.integers(min_value=-(10**400), max_value=10**400)
        | hs.floats()
        | hs.text(max_size=12_000),
        max_size=5,
    ),
)
def test_fuzz_what_a_trial_emits_is_always_accepted(step: int, metrics: dict) -> None:
    """The emitting side (protocol.report/summary, used by experiments and the W&B bridge) never writes a line the
    reader refuses: huge integers, long texts and names are brought within the schema."""
    for line in (
        protocol.format_event("metrics", step=step, metrics=metrics),
        protocol.format_event("summary", metrics=metrics),
    ):
        event = protocol.parse_line(line)
        assert event is not None and event["event"] != protocol.INVALID, event
