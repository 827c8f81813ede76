"""experiments.tasks: targets, losses with missing labels, CORAL loss and decoding, test-time averaging."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from experiments import tasks as T

CLASSES = {"gender": ["male", "female"], "age_group": [f"g{i}" for i in range(8)], "ethnicity": list("abcde")}


def test_build_tasks_and_head_sizes() -> None:
    ts = T.build_tasks(["gender", "age_group", "age", "coral"], CLASSES, loss_weights={"gender": 100.0})
    kinds = {t.name: (t.kind, t.num_classes, t.head_size, t.weight, t.ordinal) for t in ts}
    assert kinds["gender"] == ("classification", 2, 2, 100.0, False)
    assert kinds["age_group"] == ("classification", 8, 8, 1.0, True)
    assert kinds["age"] == ("regression", 0, 1, 1.0, False)
    assert kinds["coral"] == ("coral", 8, 1, 1.0, True)
    assert T.head_sizes(ts[:1]) == 2
    assert T.head_sizes(ts[:2]) == {"gender": 2, "age_group": 8}


def test_age_bins() -> None:
    ages = np.array([5.0, 20.0, 39.9, 40.0, 80.0, np.nan])
    assert T.bin_ages(ages, [20, 40]).tolist() == [0, 1, 1, 2, 2, -1]
    assert T.bin_names([20, 40]) == ["<20", "20-40", "40+"]
    ts = T.build_tasks(["age_group"], CLASSES, age_bins=[20, 40])
    assert ts[0].classes == ["<20", "20-40", "40+"]
    tg = T.targets_for(ts, {"age": ages, "age_group": np.zeros(6, dtype=np.int64)}, [20, 40])
    assert tg["age_group"].tolist() == [0, 1, 1, 2, 2, -1]


def test_coral_levels_and_loss_by_hand() -> None:
    y = torch.tensor([0, 2])
    assert T.coral_levels(y, 4).tolist() == [[0, 0, 0], [1, 1, 0]]
    logits = torch.tensor([[0.5, -1.0, 2.0], [1.0, 0.0, -0.5]])
    lv = T.coral_levels(y, 4)
    by_hand = 0.0
    for i in range(2):
        for k in range(3):
            p = 1 / (1 + math.exp(-float(logits[i, k])))
            by_hand -= math.log(p) if lv[i, k] else math.log(1 - p)
    assert float(T.coral_loss(logits, y, 4)) == pytest.approx(by_hand / 2, rel=1e-5)
    # equals the summed BCE-with-logits
    bce = F.binary_cross_entropy_with_logits(logits, lv, reduction="none").sum(1).mean()
    assert float(T.coral_loss(logits, y, 4)) == pytest.approx(float(bce), rel=1e-6)


def test_coral_decode() -> None:
    logits = torch.tensor([[3.0, 2.0, -1.0], [-2.0, -3.0, -4.0], [5.0, 5.0, 5.0]])
    rank, probs = T.coral_decode(logits)
    assert rank.tolist() == [2, 0, 3]
    assert probs.shape == (3, 4)
    assert torch.allclose(probs.sum(1), torch.ones(3))
    assert probs.argmax(1).tolist() == [2, 0, 3]


def test_coral_layer_shares_the_score() -> None:
    layer = T.CoralLayer(5)
    out = layer(torch.tensor([[0.0], [1.0]]))
    assert out.shape == (2, 4)
    assert torch.allclose(out[1] - out[0], torch.ones(4))  # one shared score, K-1 biases
    assert layer.bias.tolist() == sorted(layer.bias.tolist(), reverse=True)


def test_compute_loss_masks_unknown_labels_and_weights() -> None:
    ts = T.build_tasks(["gender", "age"], CLASSES, loss_weights={"gender": 2.0, "age": 1.0})
    out = {
        "gender": torch.tensor([[2.0, 0.0], [0.0, 2.0], [9.0, -9.0]]),
        "age": torch.tensor([[0.2], [0.5], [0.1]]),
    }
    tgt = {"gender": torch.tensor([0, 1, -1]), "age": torch.tensor([20.0, float("nan"), 30.0])}
    total, parts = T.compute_loss(out, tgt, ts, age_scale=100.0)
    ce = F.cross_entropy(out["gender"][:2], tgt["gender"][:2])
    mse = ((0.2 - 0.2) ** 2 + (0.1 - 0.3) ** 2) / 2
    assert float(parts["gender"]) == pytest.approx(float(ce))
    assert float(parts["age"]) == pytest.approx(mse)
    assert float(total) == pytest.approx(2 * float(ce) + mse)
    _, parts = T.compute_loss(out, tgt, ts, regression_loss="l1")
    assert float(parts["age"]) == pytest.approx(0.1)
    # no known label at all: zero loss that still backpropagates
    o = {"gender": torch.zeros(1, 2, requires_grad=True)}
    total, _ = T.compute_loss(o, {"gender": torch.tensor([-1])}, ts[:1])
    total.backward()
    assert float(total.detach()) == 0.0


def test_label_smoothing_and_class_weights_reach_the_loss() -> None:
    ts = T.build_tasks(["gender"], CLASSES)
    out = {"gender": torch.tensor([[2.0, 0.0], [0.0, 1.0]])}
    y = {"gender": torch.tensor([0, 0])}
    plain = float(T.compute_loss(out, y, ts)[0])
    smooth = float(T.compute_loss(out, y, ts, label_smoothing=0.2)[0])
    w = float(T.compute_loss(out, y, ts, weights={"gender": torch.tensor([1.0, 5.0])})[0])
    assert smooth != plain and w == pytest.approx(plain)  # weights of the target class only (both class 0)


def test_decode_regression_and_classification() -> None:
    age, cls = T.build_tasks(["age", "gender"], CLASSES)
    pred, probs = T.decode(torch.tensor([[0.25], [0.5]]), age, 100.0)
    assert pred.tolist() == [25.0, 50.0] and probs is None
    pred, probs = T.decode(torch.tensor([[0.0, 1.0], [3.0, 1.0]]), cls)
    assert pred.tolist() == [1, 0] and probs.shape == (2, 2)


def test_average_outputs_over_views() -> None:
    ts = T.build_tasks(["gender", "age"], CLASSES)
    g = torch.tensor([[2.0, 0.0], [0.0, 2.0], [1.0, 1.0], [1.0, 1.0]])  # 2 images × 2 views
    a = torch.tensor([[0.2], [0.4], [0.1], [0.3]])
    avg = T.average_outputs({"gender": g, "age": a}, ts, 2)
    assert torch.allclose(avg["gender"].exp(), torch.tensor([[0.5, 0.5], [0.5, 0.5]]), atol=1e-6)
    assert torch.allclose(avg["age"].reshape(-1), torch.tensor([0.3, 0.2]))


def test_task_model_wraps_and_greyscales() -> None:
    ts = T.build_tasks(["coral"], CLASSES)
    backbone = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 1))
    m = T.TaskModel(backbone, ts, greyscale=True, mean=(0.5, 0.4, 0.3), std=(0.2, 0.3, 0.4))
    out = m(torch.randn(2, 3, 4, 4))
    assert set(out) == {"coral"} and out["coral"].shape == (2, 7)
    # the greyscaled input has equal un-normalised channels
    seen = {}
    m.backbone = nn.Sequential()
    m.backbone.register_forward_pre_hook(lambda mod, args: seen.setdefault("x", args[0]))
    m.backbone.append(nn.Flatten())
    m.backbone.append(nn.Linear(48, 1))
    m(torch.randn(2, 3, 4, 4))
    rgb = seen["x"] * m.std + m.mean
    assert torch.allclose(rgb[:, 0], rgb[:, 1], atol=1e-5) and torch.allclose(rgb[:, 1], rgb[:, 2], atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("weighted", [False, True])
def test_sync_free_loss_equals_the_masked_reference(smoothing: float, weighted: bool) -> None:
    """compute_loss avoids boolean indexing (a GPU→CPU sync per step); it must equal the loss over the
    known labels computed the plain way, for every task kind, class weights and label smoothing."""
    g = torch.Generator().manual_seed(0)
    n = 37
    ts = T.build_tasks(["gender", "age_group", "age"], CLASSES)
    coral = T.build_tasks(["coral"], CLASSES)[0]
    out = {t.name: torch.randn(n, t.head_size, generator=g) for t in [*ts, coral]}
    y = {
        "gender": torch.randint(-1, 2, (n,), generator=g),
        "age_group": torch.randint(-1, 8, (n,), generator=g),
        "coral": torch.randint(-1, 8, (n,), generator=g),
        "age": torch.where(torch.rand(n, generator=g) < 0.3, float("nan"), 60 * torch.rand(n, generator=g)),
    }
    w = (
        {"gender": torch.tensor([1.0, 3.0]), "age_group": torch.rand(8, generator=g) + 0.5}
        if weighted
        else None
    )
    for loss_name in ("mse", "l1", "smooth_l1"):
        _, parts = T.compute_loss(
            out, y, [*ts, coral], label_smoothing=smoothing, weights=w, regression_loss=loss_name
        )
        for t in [*ts, coral]:
            if t.kind == "regression":
                m = ~torch.isnan(y["age"])
                p, q = out["age"].reshape(-1)[m], y["age"][m] / 100.0
                fn = {"mse": F.mse_loss, "l1": F.l1_loss}.get(loss_name)
                ref = fn(p, q) if fn else F.smooth_l1_loss(p, q, beta=0.05)
            elif t.kind == "coral":
                m = y["coral"] >= 0
                ref = T.coral_loss(out["coral"][m], y["coral"][m], t.num_classes)
            else:
                m = y[t.name] >= 0
                ref = F.cross_entropy(
                    out[t.name][m],
                    y[t.name][m],
                    weight=w.get(t.name) if w else None,
                    label_smoothing=smoothing,
                )
            assert float(parts[t.name]) == pytest.approx(float(ref), rel=1e-5), (t.name, loss_name)
