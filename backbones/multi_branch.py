"""The Keras multi-output report's "Model A": a shared convolutional trunk and one convolutional branch per task.

From the report (§2.1): the trunk is conv layers with ReLU interspersed with max-pooling and batch normalisation;
each branch (age, gender) has three conv layers interspersed with max-pooling and batch normalisation and differs
only in the number of filters of its final conv layer (tuned: gender 64, age 32 or 128); the branch output is
flattened into a three-layer dense MLP (two hidden layers with dropout, then the output layer). Inputs are
128x128, pixels scaled to [0, 1] (so mean 0, std 1 here).

The report's Figure 1 (exact widths of the trunk and dense layers) is not in its text, so these widths are our
defaults, all configurable: trunk ``(32, 64)``, branch ``(64, 128, final_features)``, dense ``hidden=(128, 64)``.
Each conv layer is conv3x3 (pad 1) -> ReLU -> maxpool 2x2 -> BatchNorm.

``num_outputs`` as a dict gives one branch per task (``branches.<task>``) returning ``{task: logits}``; an int gives
one branch (``branches.out``) returning a tensor. ``final_features`` and ``drop_rate`` may be per-task dicts.
Loss weights (the report's 1:100) are the experiment's business. The heads are ``branches.<task>.head``; with
``freeze(model, "backbone")`` everything else (branch convs and dense layers too) is frozen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._registry import register_backbone
from .heads import NumOutputs, check_num_outputs

_SINGLE = "out"


def _block(in_ch: int, out_ch: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2, 2),
        nn.BatchNorm2d(out_ch),
    )


class Branch(nn.Module):
    def __init__(
        self,
        in_ch: int,
        channels: Sequence[int],
        hidden: Sequence[int],
        num_outputs: int,
        drop_rate: float,
        spatial: int,
        global_pool: str,
    ) -> None:
        super().__init__()
        convs: list[nn.Module] = []
        ch = in_ch
        for out in channels:
            convs.append(_block(ch, out))
            ch = out
        self.convs = nn.Sequential(*convs)
        self.pool: nn.Module = nn.AdaptiveAvgPool2d(1) if global_pool == "avg" else nn.Identity()
        self.flatten = nn.Flatten(1)
        flat = ch if global_pool == "avg" else ch * spatial * spatial
        dense: list[nn.Module] = []
        prev = flat
        for h in hidden:
            dense += [nn.Linear(prev, h), nn.ReLU(inplace=True), nn.Dropout(drop_rate)]
            prev = h
        self.mlp = nn.Sequential(*dense)
        self.num_features = prev
        self.head = nn.Linear(prev, num_outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.mlp(self.flatten(self.pool(self.convs(x)))))


class MultiBranchCNN(nn.Module):
    # load_trunk: branch tensors are task-specific (loaded where they fit, skipped otherwise)
    _task_specific = ("branches",)

    def __init__(
        self,
        num_outputs: NumOutputs = {"age": 1, "gender": 2},  # noqa: B006 (read-only default)
        in_chans: int = 3,
        img_size: int = 128,
        trunk_channels: Sequence[int] = (32, 64),
        branch_channels: Sequence[int] = (64, 128),
        final_features: int | Mapping[str, int] = 64,
        hidden: Sequence[int] = (128, 64),
        drop_rate: float | Mapping[str, float] = 0.1,
        global_pool: str = "flatten",
    ) -> None:
        super().__init__()
        if global_pool not in ("flatten", "avg"):
            raise ValueError(f"multi_branch_cnn: global_pool must be 'flatten' or 'avg', got {global_pool!r}")
        n_pool = len(trunk_channels) + len(branch_channels) + 1
        if img_size < 2**n_pool:
            raise ValueError(f"multi_branch_cnn: img_size {img_size} too small for {n_pool} 2x2 poolings")
        self.img_size = img_size
        self.global_pool = global_pool
        self._cfg = {
            "branch_channels": tuple(branch_channels),
            "final_features": final_features,
            "hidden": tuple(hidden),
            "drop_rate": drop_rate,
        }
        blocks: list[nn.Module] = []
        ch = in_chans
        for out in trunk_channels:
            blocks.append(_block(ch, out))
            ch = out
        self.trunk = nn.Sequential(*blocks)
        self.trunk_channels = ch
        spatial = img_size
        for _ in range(n_pool):
            spatial //= 2
        self._spatial = spatial
        self.branches = nn.ModuleDict()
        self.num_outputs: int | dict[str, int] = 0
        self.pretrained_cfg = {
            "architecture": "multi_branch_cnn",
            "input_size": (in_chans, img_size, img_size),
            "mean": (0.0,) * in_chans,
            "std": (1.0,) * in_chans,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "first_conv": "trunk.0.0",
            "classifier": (),
            "num_classes": None,
        }
        self.default_cfg = self.pretrained_cfg
        self.reset_heads(num_outputs)

    @staticmethod
    def _per_task(value: object, task: str, what: str) -> object:
        if isinstance(value, Mapping):
            if task not in value:
                raise ValueError(
                    f"multi_branch_cnn: {what} has no entry for task {task!r} (has {sorted(value)})"
                )
            return value[task]
        return value

    def _new_branch(self, task: str, n: int) -> Branch:
        c = self._cfg
        final = int(self._per_task(c["final_features"], task, "final_features"))  # type: ignore[call-overload]
        drop = float(self._per_task(c["drop_rate"], task, "drop_rate"))  # type: ignore[arg-type]
        return Branch(
            self.trunk_channels,
            (*c["branch_channels"], final),  # type: ignore[misc]
            c["hidden"],  # type: ignore[arg-type]
            n,
            drop,
            self._spatial,
            self.global_pool,
        )

    @property
    def _head_names(self) -> tuple[str, ...]:
        return tuple(f"branches.{t}.head" for t in self.branches)

    def reset_heads(self, num_outputs: NumOutputs) -> None:
        """Same task: a new output layer if its size differs (branch kept); a new task: a new branch."""
        num_outputs = check_num_outputs(num_outputs)
        if num_outputs == 0:
            raise ValueError("multi_branch_cnn needs num_outputs >= 1 or a dict of tasks")
        tasks = num_outputs if isinstance(num_outputs, dict) else {_SINGLE: num_outputs}
        new = nn.ModuleDict()
        for task, n in tasks.items():
            old = self.branches[task] if task in self.branches else None  # noqa: SIM401 (ModuleDict has no .get)
            if old is None:
                new[task] = self._new_branch(task, n)
            else:
                if old.head.out_features != n:  # type: ignore[union-attr]
                    old.head = nn.Linear(old.num_features, n)  # type: ignore[arg-type]
                new[task] = old
        self.branches = new
        self.num_outputs = num_outputs
        self.pretrained_cfg["num_classes"] = num_outputs
        self.pretrained_cfg["classifier"] = self._head_names

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk's feature map."""
        return self.trunk(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        f = self.trunk(x)
        if not isinstance(self.num_outputs, dict):
            return self.branches[_SINGLE](f)
        return {task: branch(f) for task, branch in self.branches.items()}


@register_backbone("multi_branch_cnn")
def multi_branch_cnn(
    num_outputs: NumOutputs,
    *,
    in_chans: int = 3,
    drop_rate: float | Mapping[str, float] | None = None,
    img_size: int = 128,
    trunk_channels: Sequence[int] = (32, 64),
    branch_channels: Sequence[int] = (64, 128),
    final_features: int | Mapping[str, int] = 64,
    hidden: Sequence[int] = (128, 64),
    global_pool: str = "flatten",
) -> MultiBranchCNN:
    """Shared trunk + one branch per task; ``drop_rate`` (default 0.1) is the dense layers' dropout."""
    return MultiBranchCNN(
        num_outputs,
        in_chans=in_chans,
        img_size=img_size,
        trunk_channels=trunk_channels,
        branch_channels=branch_channels,
        final_features=final_features,
        hidden=hidden,
        drop_rate=0.1 if drop_rate is None else drop_rate,
        global_pool=global_pool,
    )
