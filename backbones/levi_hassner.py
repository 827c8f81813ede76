"""Levi & Hassner (2015) age/gender CNN, as published (Caffe prototxt of GilLevi/AgeGenderDeepLearning).

conv1 96x7x7/4 -> ReLU -> maxpool 3/2 (ceil) -> LRN(5, 1e-4, 0.75)
conv2 256x5x5 pad 2 -> ReLU -> maxpool 3/2 (ceil) -> LRN
conv3 384x3x3 pad 1 -> ReLU -> maxpool 3/2 (ceil)
fc6 512 -> ReLU -> dropout 0.5 -> fc7 512 -> ReLU -> dropout 0.5 -> fc8 (one linear head per task)

Caffe blob sizes at 227 px: 227 -> 56 -> 28 (pool1) -> 28 -> 14 (pool2) -> 14 -> 7 (pool3); fc6 input 384*7*7 = 18,816.
Caffe pools with ceil rounding, hence ``ceil_mode=True`` (floor would give 27/13/6).

Other input sizes (e.g. 64 px for CPU tests, 224 px as in the MobileNetV2 report): pass ``img_size``; the fc6
input size is then taken from one dummy forward of the conv stack at construction time (at 227 px it is the
published constant 18,816). The model expects exactly ``img_size`` inputs afterwards (as the original did); no
adaptive pooling is inserted, so the published model is unchanged.

Initialisation as published: weights Gaussian std 0.01 (conv1-3, fc8) and 0.005 (fc6, fc7); biases conv1 0,
conv2 1, conv3 0, fc6 1, fc7 1, fc8 0.

Input normalisation (``pretrained_cfg``): the original subtracts a per-pixel mean image from 0-255 pixels and
does not scale (Caffe ``transform_param { mean_file, crop_size: 227 }`` on 256x256 images). With our pipeline's
``(x01 - mean) / std`` on [0, 1] pixels, ``mean`` = the ImageNet channel means (the per-pixel mean image is
approximated by per-channel means; Levi's own mean file was computed on the Adience training folds, whose
channel means are close to ImageNet's) and ``std`` = 1/255 reproduces exactly the published input scale
(values in about [-128, 128]), which the published initialisation and learning rates assume. ``crop_pct`` =
227/256 (resize to 256, centre/random crop 227); interpolation bilinear.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from timm.data import IMAGENET_DEFAULT_MEAN
from torch import nn

from ._registry import register_backbone
from .heads import DictHead, NumOutputs, check_num_outputs, make_head

PUBLISHED_IMG_SIZE = 227
PUBLISHED_FC6_IN = 384 * 7 * 7  # 18,816


class LocalResponseNorm(nn.LocalResponseNorm):
    """Caffe's across-channel LRN, as ``nn.LocalResponseNorm``; under ``torch.use_deterministic_algorithms`` the
    window sum is taken over shifted channel slices instead of torch's ``avg_pool3d``, whose CUDA backward has no
    deterministic implementation (the same values up to float rounding; its backward is plain autograd)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not torch.are_deterministic_algorithms_enabled() or input.dim() != 4:
            return super().forward(input)
        c = input.shape[1]
        sq = nn.functional.pad(input * input, (0, 0, 0, 0, self.size // 2, (self.size - 1) // 2))
        window = sq[:, 0:c]
        for i in range(1, self.size):
            window = window + sq[:, i : i + c]
        div = (window / self.size).mul(self.alpha).add(self.k).pow(self.beta)
        return input / div


class LeviHassnerCNN(nn.Module):
    """The Levi & Hassner CNN. ``neurons`` sets fc6/fc7 widths (int or (fc6, fc7)); ``drop_rate`` both dropouts."""

    _head_names = ("head",)

    def __init__(
        self,
        num_outputs: NumOutputs = 8,
        in_chans: int = 3,
        img_size: int = PUBLISHED_IMG_SIZE,
        neurons: int | Sequence[int] = 512,
        drop_rate: float = 0.5,
    ) -> None:
        super().__init__()
        if isinstance(neurons, int):
            fc6_n, fc7_n = neurons, neurons
        else:
            fc6_n, fc7_n = (int(v) for v in neurons)
        if img_size < 35:
            raise ValueError(f"levi_hassner needs img_size >= 35 px, got {img_size}")
        self.img_size = img_size
        self.in_chans = in_chans
        self.drop_rate = drop_rate

        self.conv1 = nn.Conv2d(in_chans, 96, kernel_size=7, stride=4, padding=0)
        self.relu1 = nn.ReLU(inplace=True)
        self.pool1 = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.norm1 = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv2 = nn.Conv2d(96, 256, kernel_size=5, stride=1, padding=2)
        self.relu2 = nn.ReLU(inplace=True)
        self.pool2 = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.norm2 = LocalResponseNorm(size=5, alpha=1e-4, beta=0.75, k=1.0)
        self.conv3 = nn.Conv2d(256, 384, kernel_size=3, stride=1, padding=1)
        self.relu3 = nn.ReLU(inplace=True)
        self.pool3 = nn.MaxPool2d(kernel_size=3, stride=2, ceil_mode=True)
        self.flatten = nn.Flatten(1)

        if img_size == PUBLISHED_IMG_SIZE:
            flat = PUBLISHED_FC6_IN
        else:
            with torch.no_grad():
                flat = self._conv_stack(torch.zeros(1, in_chans, img_size, img_size)).flatten(1).shape[1]
        self.fc6_in_features = flat

        self.fc6 = nn.Linear(flat, fc6_n)
        self.relu6 = nn.ReLU(inplace=True)
        self.drop6 = nn.Dropout(drop_rate)
        self.fc7 = nn.Linear(fc6_n, fc7_n)
        self.relu7 = nn.ReLU(inplace=True)
        self.drop7 = nn.Dropout(drop_rate)
        self.num_features = fc7_n
        self.head = make_head(fc7_n, num_outputs)
        self.num_outputs = check_num_outputs(num_outputs)

        self.pretrained_cfg = {
            "architecture": "levi_hassner",
            "input_size": (in_chans, img_size, img_size),
            "mean": tuple(IMAGENET_DEFAULT_MEAN)
            if in_chans == 3
            else (sum(IMAGENET_DEFAULT_MEAN) / 3,) * in_chans,
            "std": (1 / 255,) * in_chans,
            "interpolation": "bilinear",
            "crop_pct": PUBLISHED_IMG_SIZE / 256,
            "crop_mode": "center",
            "first_conv": "conv1",
            "classifier": "head",
            "num_classes": self.num_outputs,
        }
        self.default_cfg = self.pretrained_cfg
        self.init_weights()

    # -- init -------------------------------------------------------------------------------------------------
    def init_weights(self) -> None:
        """The published initialisation (Gaussian weights, constant biases)."""
        for mod, std, bias in (
            (self.conv1, 0.01, 0.0),
            (self.conv2, 0.01, 1.0),
            (self.conv3, 0.01, 0.0),
            (self.fc6, 0.005, 1.0),
            (self.fc7, 0.005, 1.0),
        ):
            nn.init.normal_(mod.weight, 0.0, std)
            nn.init.constant_(mod.bias, bias)
        self._init_head()

    def _init_head(self) -> None:
        for mod in self.head.modules():
            if isinstance(mod, nn.Linear):
                nn.init.normal_(mod.weight, 0.0, 0.01)
                nn.init.zeros_(mod.bias)

    def reset_heads(self, num_outputs: NumOutputs) -> None:
        self.head = make_head(self.num_features, num_outputs)
        self.num_outputs = check_num_outputs(num_outputs)
        self.pretrained_cfg["num_classes"] = self.num_outputs
        self._init_head()

    # -- forward ----------------------------------------------------------------------------------------------
    def _conv_stack(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(self.pool1(self.relu1(self.conv1(x))))
        x = self.norm2(self.pool2(self.relu2(self.conv2(x))))
        return self.pool3(self.relu3(self.conv3(x)))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self._conv_stack(x))
        if x.shape[1] != self.fc6_in_features:
            raise ValueError(
                f"levi_hassner was built for {self.img_size}x{self.img_size} inputs (fc6 takes "
                f"{self.fc6_in_features} features) but got input giving {x.shape[1]}: pass img_size=<your size>"
            )
        x = self.drop6(self.relu6(self.fc6(x)))
        return self.drop7(self.relu7(self.fc7(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
        return self.head(self.forward_features(x))


@register_backbone("levi_hassner")
def levi_hassner(
    num_outputs: NumOutputs,
    *,
    in_chans: int = 3,
    drop_rate: float | None = None,
    img_size: int = PUBLISHED_IMG_SIZE,
    neurons: int | Sequence[int] = 512,
) -> LeviHassnerCNN:
    """Levi & Hassner CNN; ``drop_rate`` defaults to the published 0.5, ``neurons`` to 512 (fc6 and fc7)."""
    return LeviHassnerCNN(
        num_outputs,
        in_chans=in_chans,
        img_size=img_size,
        neurons=neurons,
        drop_rate=0.5 if drop_rate is None else drop_rate,
    )


__all__ = ["LeviHassnerCNN", "DictHead", "PUBLISHED_FC6_IN", "PUBLISHED_IMG_SIZE"]
