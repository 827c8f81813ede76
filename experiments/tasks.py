"""Tasks: what each head predicts, its targets, loss and decoding (gender, age group, age, ethnicity, CORAL).

Every model output is a dict ``{task: raw head output}``; a single-task model's tensor is wrapped under the
task's name. Missing labels (``-1`` / NaN) are masked out of the loss and the metrics, so a multitask model
can train on samples that lack some labels.

CORAL (Cao, Mirjalili & Raschka, 2020, "Rank consistent ordinal regression for neural networks"): for K
ordered classes the network gives one shared score ``g(x) = w·x`` and K-1 biases; logit_k = g(x) + b_k
predicts P(y > k). The loss is the sum of K-1 binary cross-entropies on the extended targets 1[y > k]; the
predicted rank is the number of P(y > k) above 0.5. Here the backbone's one-output head is the shared ``w·x``
and :class:`CoralLayer` adds the K-1 biases, so any registered backbone can do CORAL.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# dataset label each task reads
LABEL_OF = {
    "gender": "gender",
    "age_group": "age_group",
    "coral": "age_group",
    "age": "age",
    "ethnicity": "ethnicity",
}


@dataclass
class TaskSpec:
    name: str  # gender | age_group | age | ethnicity | coral
    kind: str  # classification | regression | coral
    label: str  # the dataset label it reads
    classes: list[str] = field(default_factory=list)
    weight: float = 1.0  # loss weight
    ordinal: bool = False  # classes are ordered (1-off accuracy applies)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def head_size(self) -> int:
        """Outputs the backbone's head gives: K logits, 1 value (regression) or the CORAL shared score."""
        return self.num_classes if self.kind == "classification" else 1


def bin_ages(ages: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    """Age groups from numeric ages and bin edges: ``[20, 40]`` → 0: <20, 1: 20–39, 2: 40+; NaN → -1."""
    ages = np.asarray(ages, dtype=np.float64)
    groups = np.digitize(np.nan_to_num(ages, nan=0.0), np.asarray(edges, dtype=np.float64)).astype(np.int64)
    groups[np.isnan(ages)] = -1
    return groups


def bin_names(edges: Sequence[float]) -> list[str]:
    e = [f"{x:g}" for x in edges]
    return [f"<{e[0]}"] + [f"{a}-{b}" for a, b in zip(e, e[1:], strict=False)] + [f"{e[-1]}+"]


def build_tasks(
    names: Sequence[str],
    classes: Mapping[str, Sequence[str]],
    *,
    age_bins: Sequence[float] | None = None,
    loss_weights: Mapping[str, float] | None = None,
) -> list[TaskSpec]:
    """The task specs for ``names`` given the dataset's class names (``FaceDataset.classes``)."""
    out = []
    for name in names:
        weight = float((loss_weights or {}).get(name, 1.0))
        if name == "age":
            out.append(TaskSpec(name, "regression", "age", [], weight))
            continue
        label = LABEL_OF[name]
        if label == "age_group" and age_bins:
            names_k = bin_names(age_bins)
        else:
            names_k = [str(c) for c in classes[label]]
        kind = "coral" if name == "coral" else "classification"
        out.append(TaskSpec(name, kind, label, names_k, weight, ordinal=label == "age_group"))
    return out


def targets_for(
    tasks: Sequence[TaskSpec], labels: Mapping[str, np.ndarray], age_bins: Sequence[float] | None
) -> dict[str, np.ndarray]:
    """Per task, the target of every sample (int64 class, -1 unknown; float32 age, NaN unknown)."""
    out: dict[str, np.ndarray] = {}
    for t in tasks:
        if t.kind == "regression":
            out[t.name] = np.asarray(labels["age"], dtype=np.float32)
        elif t.label == "age_group" and age_bins:
            out[t.name] = bin_ages(labels["age"], age_bins)
        else:
            out[t.name] = np.asarray(labels[t.label], dtype=np.int64)
    return out


def known(target: np.ndarray) -> np.ndarray:
    return ~np.isnan(target) if target.dtype.kind == "f" else target >= 0


class CoralLayer(nn.Module):
    """K-1 ordered biases added to one shared score: ``logits[:, k] = score + b_k``."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        k = num_classes - 1
        # decreasing start values, as in coral-pytorch: P(y > k) falls with k from the start
        self.bias = nn.Parameter(torch.arange(k, 0, -1, dtype=torch.float32) / max(k, 1))

    def forward(self, score: torch.Tensor) -> torch.Tensor:
        return score.reshape(-1, 1) + self.bias


def coral_levels(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Extended binary targets: ``levels[i, k] = 1[y_i > k]`` for k in 0..K-2."""
    ks = torch.arange(num_classes - 1, device=y.device)
    return (y.reshape(-1, 1) > ks).to(torch.float32)


def coral_per_sample(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Each sample's summed K-1 binary cross-entropies of the CORAL loss."""
    levels = coral_levels(y, num_classes)
    logsig = F.logsigmoid(logits)
    return -(logsig * levels + (logsig - logits) * (1 - levels)).sum(dim=1)


def coral_loss(logits: torch.Tensor, y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """CORAL loss: mean over samples of the summed K-1 binary cross-entropies (Cao et al., eq. 4)."""
    return coral_per_sample(logits, y, num_classes).mean()


def coral_decode(logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted rank (number of P(y > k) > 0.5) and class probabilities from the cumulative ones."""
    p_gt = torch.sigmoid(logits.float())
    rank = (p_gt > 0.5).sum(dim=1)
    ones = torch.ones_like(p_gt[:, :1])
    zeros = torch.zeros_like(p_gt[:, :1])
    cum = torch.cat([ones, p_gt, zeros], dim=1)  # P(y > k-1) for k = 0..K
    probs = (cum[:, :-1] - cum[:, 1:]).clamp_min(0)
    probs = probs / probs.sum(dim=1, keepdim=True).clamp_min(1e-12)
    return rank, probs


class TaskModel(nn.Module):
    """A backbone plus per-task adapters; ``forward`` always returns ``{task: output}``.

    ``greyscale``: the (normalised) input is turned to greyscale first, the same in training and evaluation
    (un-normalise with ``mean``/``std``, luma, normalise again), so every backbone keeps 3 input channels.
    """

    def __init__(
        self,
        backbone: nn.Module,
        tasks: Sequence[TaskSpec],
        *,
        greyscale: bool = False,
        mean: Sequence[float] = (0.0, 0.0, 0.0),
        std: Sequence[float] = (1.0, 1.0, 1.0),
    ) -> None:
        super().__init__()
        self.backbone = backbone
        self.task_names = [t.name for t in tasks]
        self.coral = nn.ModuleDict({t.name: CoralLayer(t.num_classes) for t in tasks if t.kind == "coral"})
        self.greyscale = greyscale
        self.register_buffer(
            "mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )
        self.register_buffer(
            "std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False
        )

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        if self.greyscale:
            rgb = x * self.std + self.mean
            luma = 0.299 * rgb[:, 0:1] + 0.587 * rgb[:, 1:2] + 0.114 * rgb[:, 2:3]
            x = (luma - self.mean) / self.std
        out = self.backbone(x)
        if not isinstance(out, Mapping):
            out = {self.task_names[0]: out}
        res = {}
        for name in self.task_names:
            o = out[name]
            res[name] = self.coral[name](o) if name in self.coral else o
        return res


def head_sizes(tasks: Sequence[TaskSpec]) -> int | dict[str, int]:
    """``num_outputs`` for ``create_backbone``: an int for one task, a dict for several."""
    if len(tasks) == 1:
        return tasks[0].head_size
    return {t.name: t.head_size for t in tasks}


def compute_loss(
    outputs: Mapping[str, torch.Tensor],
    targets: Mapping[str, torch.Tensor],
    tasks: Sequence[TaskSpec],
    *,
    label_smoothing: float = 0.0,
    regression_loss: str = "mse",
    age_scale: float = 100.0,
    weights: Mapping[str, torch.Tensor] | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Weighted sum of the per-task losses over the samples whose label is known; and each task's loss."""
    total = None
    parts: dict[str, torch.Tensor] = {}
    # No boolean indexing and no host-side checks: a masked sum over the batch keeps the step free of
    # GPU→CPU synchronisation (each one stalls the queue of kernels).
    for t in tasks:
        out = outputs[t.name].float()
        y = targets[t.name]
        if t.kind == "regression":
            mask = ~torch.isnan(y)
            tgt = torch.nan_to_num(y.float(), nan=0.0) / age_scale
            pred = out.reshape(-1)
            if regression_loss == "l1":
                per = F.l1_loss(pred, tgt, reduction="none")
            elif regression_loss == "smooth_l1":
                per = F.smooth_l1_loss(pred, tgt, beta=0.05, reduction="none")
            else:
                per = F.mse_loss(pred, tgt, reduction="none")
            loss = torch.where(mask, per, 0.0).sum() / mask.sum().clamp(min=1)
        else:
            mask = y >= 0
            if t.kind == "coral":
                per = coral_per_sample(out, y.clamp(min=0), t.num_classes)
                loss = torch.where(mask, per, 0.0).sum() / mask.sum().clamp(min=1)
            else:
                w = weights.get(t.name) if weights else None
                per = F.cross_entropy(
                    out, y, weight=w, ignore_index=-1, label_smoothing=label_smoothing, reduction="none"
                )  # 0 where the label is unknown; weighted by w[y] where known
                denom = (w[y.clamp(min=0)] * mask).sum() if w is not None else mask.sum()
                loss = per.sum() / denom.clamp(min=torch.finfo(per.dtype).tiny)
        parts[t.name] = loss
        total = loss * t.weight if total is None else total + loss * t.weight
    assert total is not None
    return total, parts


def decode(
    output: torch.Tensor, task: TaskSpec, age_scale: float = 100.0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Predictions (class index, or age in years) and class probabilities (None for regression)."""
    output = output.detach().float()
    if task.kind == "regression":
        return (output.reshape(-1) * age_scale).cpu().numpy(), None
    if task.kind == "coral":
        rank, probs = coral_decode(output)
        return rank.cpu().numpy(), probs.cpu().numpy()
    probs = torch.softmax(output, dim=1)
    return probs.argmax(dim=1).cpu().numpy(), probs.cpu().numpy()


def average_outputs(
    outputs: Mapping[str, torch.Tensor], tasks: Sequence[TaskSpec], n_views: int
) -> dict[str, torch.Tensor]:
    """Test-time averaging over ``n_views`` consecutive views per image (10-crop): outputs of ``B * n_views``
    rows → ``B`` rows; probabilities are averaged and mapped back to logits (log-probs / CORAL logits)."""
    res: dict[str, torch.Tensor] = {}
    for t in tasks:
        o = outputs[t.name].float()
        o = o.reshape(-1, n_views, o.shape[-1] if o.ndim > 1 else 1)
        if t.kind == "classification":
            res[t.name] = torch.log(torch.softmax(o, dim=2).mean(1).clamp_min(1e-12))
        elif t.kind == "coral":
            p = torch.sigmoid(o).mean(1).clamp(1e-6, 1 - 1e-6)
            res[t.name] = torch.log(p) - torch.log1p(-p)
        else:
            res[t.name] = o.mean(1)
    return res


def metric_prefix(task: TaskSpec, multi: bool) -> str:
    """Metric name prefix: ``""`` for a single task (``val/acc``), ``"gender_"`` in a multitask model."""
    return f"{task.name}_" if multi else ""


def describe(tasks: Sequence[TaskSpec]) -> list[dict[str, Any]]:
    return [{"name": t.name, "kind": t.kind, "classes": t.classes, "weight": t.weight} for t in tasks]
