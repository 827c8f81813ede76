"""``deterministic: true``: every op deterministic, or a clear refusal naming the op that is not.

torch's ``use_deterministic_algorithms(True)`` (never ``warn_only``: a warning let LRN's CUDA backward run
non-deterministically, so "deterministic" runs differed) raises ``RuntimeError("<op> does not have a
deterministic implementation, but you set …")`` when a model uses an op without one; the trainer turns that
into one line naming the op, the device and what to do, and exit code 2 (bad input: a retry cannot help).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

_NONDET = re.compile(r"(?P<op>[\w.:]+)\s+does not have a deterministic implementation")


def enable(cuda: bool) -> None:
    """Deterministic algorithms everywhere (errors, not warnings); cuBLAS's fixed workspace on CUDA."""
    if cuda:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # before the first cuBLAS call
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def nondeterministic_op(exc: BaseException) -> str | None:
    """The op named by torch's "does not have a deterministic implementation" error, else None."""
    if not isinstance(exc, RuntimeError):
        return None
    m = _NONDET.search(str(exc))
    return m.group("op") if m else None


def refusal(op: str, device: str, backbone: str) -> str:
    return (
        f"deterministic: true, but {op} (used by backbone {backbone!r} on {device}) has no deterministic "
        "implementation in torch, so this trial could not reproduce its value bit for bit; "
        "set deterministic: false (values then vary between runs), or use a backbone without that op"
    )


@contextmanager
def refuse_nondeterministic(
    device: str, backbone: str, on_refuse: Callable[[str], object] | None = None
) -> Iterator[None]:
    """Turn torch's non-determinism error into ``error: …`` on stderr and ``SystemExit(2)`` (``on_refuse(message)``
    first, e.g. to close the W&B run)."""
    try:
        yield
    except RuntimeError as exc:
        op = nondeterministic_op(exc)
        if op is None:
            raise
        import sys

        message = refusal(op, device, backbone)
        if on_refuse is not None:
            on_refuse(message)
        print(f"error: {message}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
