"""``deterministic: true``: a non-deterministic op is refused by name (never a warning), and Levi–Hassner's LRN
has a deterministic form with the same values."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from experiments.determinism import nondeterministic_op, refuse_nondeterministic


@pytest.fixture
def deterministic() -> Iterator[None]:
    before = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
    )
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])


def test_a_nondeterministic_op_is_refused_by_name(deterministic: None, capsys: pytest.CaptureFixture) -> None:
    """``put_`` has no deterministic implementation on the CPU either: torch raises (no warn_only), and the
    trainer's guard turns it into one line naming the op and exit code 2. (The CUDA offenders — avg_pool3d's and
    adaptive_avg_pool2d's backward — raise the same error, which needs a GPU to provoke.)"""
    with pytest.raises(SystemExit) as exit_, refuse_nondeterministic("cpu", "levi_hassner"):
        torch.zeros(3).put_(torch.tensor([0]), torch.tensor([1.0]), accumulate=False)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("error: deterministic: true, but put_ (used by backbone 'levi_hassner' on cpu)")
    assert "deterministic: false" in err
    with pytest.raises(RuntimeError, match="other"), refuse_nondeterministic("cpu", "x"):
        raise RuntimeError("some other failure")  # anything else passes through unchanged
    msg = "avg_pool3d_backward_cuda does not have a deterministic implementation, but you set 'torch.use_…'"
    assert nondeterministic_op(RuntimeError(msg)) == "avg_pool3d_backward_cuda"
    assert nondeterministic_op(ValueError(msg)) is None


class _Calls(TorchDispatchMode):
    """The aten ops run (forward and backward)."""

    def __init__(self) -> None:
        super().__init__()
        self.names: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.names.add(str(func.overloadpacket))
        return func(*args, **(kwargs or {}))


def test_levi_hassner_lrn_is_deterministic_and_the_same(deterministic: None) -> None:
    from backbones.levi_hassner import LocalResponseNorm

    torch.manual_seed(0)
    x = (torch.randn(2, 96, 7, 7) * 30).requires_grad_()
    ref = nn.LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    ours = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=1.0)
    with _Calls() as calls:
        y = ours(x)
        (g,) = torch.autograd.grad(y.square().sum(), x)
    assert not [n for n in calls.names if "avg_pool3d" in n]  # its CUDA backward is the non-deterministic op
    y_ref = ref(x)
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    assert torch.allclose(y, y_ref, rtol=1e-5, atol=1e-6) and torch.allclose(g, g_ref, rtol=1e-4, atol=1e-5)
    torch.use_deterministic_algorithms(False)
    with _Calls() as calls:
        torch.autograd.grad(ours(x).sum(), x)
    assert {
        "aten.avg_pool3d",
        "aten.avg_pool3d_backward",
    } <= calls.names  # otherwise torch's op, as published
