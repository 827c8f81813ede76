"""The UTKFace 400-models report's "basic CNN" (report §4.3.12.1, Figure 61), generalised to N layers.

``num_layers`` blocks of conv3x3 (pad 1) -> ReLU -> BatchNorm -> maxpool 2x2 — the report's order ("cnv -> relu
-> batchnorm -> maxpool"; ``bn_first=True`` gives conv -> BN -> ReLU instead) — with ``base_features`` channels
doubling per block (optionally capped by ``max_features``), then flatten -> fc1 (``hidden`` neurons) -> ReLU ->
dropout -> one linear head per task. The report's best run ("Basic_4cnv", 224 px): 4 layers, base_features 64,
hidden 132, dropout 0.6 on the output and none elsewhere: these are the defaults. ``block_drop_rate`` and
``input_drop_rate`` are the report's other dropout placements (0.1 in its code), off by default.

Any input size: the flatten size is computed for ``img_size`` at construction (one dummy forward), and
``data_config`` reports ``img_size``. ``global_pool="avg"`` averages the last feature map instead of flattening
it, so the model then accepts any input size at run time.
"""

from __future__ import annotations

import torch
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from torch import nn

from ._registry import register_backbone
from .heads import NumOutputs, check_num_outputs, make_head


def conv_block(in_ch: int, out_ch: int, bn_first: bool, drop: float) -> nn.Sequential:
    conv = nn.Conv2d(in_ch, out_ch, kernel_size=3, padding=1)
    relu = nn.ReLU(inplace=True)
    bn = nn.BatchNorm2d(out_ch)
    layers: list[nn.Module] = [conv, bn, relu] if bn_first else [conv, relu, bn]
    layers.append(nn.MaxPool2d(2, 2))
    if drop > 0:
        layers.append(nn.Dropout(drop))
    return nn.Sequential(*layers)


class BasicCNN(nn.Module):
    _head_names = ("head",)

    def __init__(
        self,
        num_outputs: NumOutputs = 7,
        in_chans: int = 3,
        img_size: int = 224,
        num_layers: int = 4,
        base_features: int = 64,
        max_features: int | None = None,
        hidden: int = 132,
        drop_rate: float = 0.6,
        block_drop_rate: float = 0.0,
        input_drop_rate: float = 0.0,
        bn_first: bool = False,
        global_pool: str = "flatten",
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"basic_cnn: num_layers must be >= 1, got {num_layers}")
        if global_pool not in ("flatten", "avg"):
            raise ValueError(f"basic_cnn: global_pool must be 'flatten' or 'avg', got {global_pool!r}")
        if img_size < 2**num_layers:
            raise ValueError(f"basic_cnn: img_size {img_size} is too small for {num_layers} 2x2 poolings")
        self.img_size = img_size
        self.global_pool = global_pool
        self.input_drop = nn.Dropout(input_drop_rate) if input_drop_rate > 0 else nn.Identity()
        ch = in_chans
        self.block_names: list[str] = []
        for i in range(num_layers):
            out = base_features * 2**i
            if max_features is not None:
                out = min(out, max_features)
            self.add_module(f"block{i + 1}", conv_block(ch, out, bn_first, block_drop_rate))
            self.block_names.append(f"block{i + 1}")
            ch = out
        self.feature_channels = ch
        if global_pool == "avg":
            self.pool: nn.Module = nn.AdaptiveAvgPool2d(1)
            flat = ch
        else:
            self.pool = nn.Identity()
            with torch.no_grad():
                flat = self._blocks(torch.zeros(1, in_chans, img_size, img_size)).flatten(1).shape[1]
        self.flatten = nn.Flatten(1)
        self.fc1_in_features = flat
        self.fc1 = nn.Linear(flat, hidden)
        self.relu = nn.ReLU(inplace=True)
        self.drop = nn.Dropout(drop_rate)
        self.num_features = hidden
        self.head = make_head(hidden, num_outputs)
        self.num_outputs = check_num_outputs(num_outputs)
        self.pretrained_cfg = {
            "architecture": "basic_cnn",
            "input_size": (in_chans, img_size, img_size),
            "mean": tuple(IMAGENET_DEFAULT_MEAN)[:in_chans] if in_chans == 3 else (0.5,) * in_chans,
            "std": tuple(IMAGENET_DEFAULT_STD)[:in_chans] if in_chans == 3 else (0.25,) * in_chans,
            "interpolation": "bilinear",
            "crop_pct": 1.0,
            "crop_mode": "center",
            "first_conv": "block1.0",
            "classifier": "head",
            "num_classes": self.num_outputs,
        }
        self.default_cfg = self.pretrained_cfg

    def reset_heads(self, num_outputs: NumOutputs) -> None:
        self.head = make_head(self.num_features, num_outputs)
        self.num_outputs = check_num_outputs(num_outputs)
        self.pretrained_cfg["num_classes"] = self.num_outputs

    def _blocks(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_drop(x)
        for name in self.block_names:
            x = getattr(self, name)(x)
        return x

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self._blocks(x)))
        if x.shape[1] != self.fc1_in_features:
            raise ValueError(
                f"basic_cnn was built for {self.img_size}px inputs (fc1 takes {self.fc1_in_features} features), "
                f"got {x.shape[1]}: pass img_size=<your size> or global_pool='avg'"
            )
        return self.drop(self.relu(self.fc1(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.head(self.forward_features(x))


@register_backbone("basic_cnn")
def basic_cnn(
    num_outputs: NumOutputs,
    *,
    in_chans: int = 3,
    drop_rate: float | None = None,
    img_size: int = 224,
    num_layers: int = 4,
    base_features: int = 64,
    max_features: int | None = None,
    hidden: int = 132,
    block_drop_rate: float = 0.0,
    input_drop_rate: float = 0.0,
    bn_first: bool = False,
    global_pool: str = "flatten",
) -> BasicCNN:
    """The report's N-layer CNN; ``drop_rate`` (default 0.6) is the dropout before the heads."""
    return BasicCNN(
        num_outputs,
        in_chans=in_chans,
        img_size=img_size,
        num_layers=num_layers,
        base_features=base_features,
        max_features=max_features,
        hidden=hidden,
        drop_rate=0.6 if drop_rate is None else drop_rate,
        block_drop_rate=block_drop_rate,
        input_drop_rate=input_drop_rate,
        bn_first=bn_first,
        global_pool=global_pool,
    )
