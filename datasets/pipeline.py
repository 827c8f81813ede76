"""Batches on the device from the decoded uint8 array, with batched augmentation there (imports torch).

    images = datasets.decoded(ds, 128)
    loader = DeviceLoader(images, ds.labels, splits["train"], batch_size=64, device="cuda", train=True,
                          input_size=112, mean=cfg["mean"], std=cfg["std"], balance="gender")
    for x, y in loader:          # x: float32 (B, 3, 112, 112) normalised, on the device; y: {task: tensor}
        ...

``x`` is NCHW: contiguous for evaluation and flip-only training; with geometric augmentation its memory may be
channels-last (every torch conv accepts it; call ``.contiguous()`` if a model needs the standard layout).

Augmentation (``train=True``, all per-sample random, batched): horizontal flip, random resized crop / scale,
aspect and small rotation through one ``affine_grid`` + ``grid_sample`` that also resizes to ``input_size``,
brightness/contrast jitter, optional greyscale; then normalisation with ``mean``/``std``. Evaluation: resize
(or a centre crop of ``eval_crop`` then resize) and normalise. On CUDA, batches are gathered into pinned
memory and copied with ``non_blocking=True``.

Class balancing: ``balance=TASK`` draws each epoch's samples with probability ∝ 1 / class frequency
(samples with an unknown label get 0); ``class_weights(labels, num_classes)`` gives weights for a weighted loss.

Test-time over-sampling (Levi & Hassner): ``oversample(x, crop)`` → 4 corners + centre and their mirrors
(10 crops, Caffe's order) and ``average_oversampled(logits)`` averages the softmax over them.

Caffe-style crops (Levi & Hassner: faces resized to 256, random 227 crops in training): ``crop="random"`` takes
each training image's ``input_size`` window at a random whole-pixel offset of the stored (larger) image,
``crop="center"`` the centre window (evaluation) — no resizing, so train and test see faces at one scale.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass
class Augment:
    """Training augmentation settings (all applied per sample, batched on the device)."""

    flip: float = 0.5  # probability of a horizontal flip
    scale: tuple[float, float] = (0.75, 1.0)  # crop side as a fraction of the image (random resized crop)
    ratio: tuple[float, float] = (0.9, 1.1)  # aspect ratio range of the crop
    rotate: float = 10.0  # max rotation in degrees (uniform ±)
    translate: bool = True  # place the crop anywhere inside the image
    brightness: float = 0.2  # multiplicative jitter ±
    contrast: float = 0.2  # jitter ±
    grayscale: float = 0.0  # probability of converting to greyscale

    @classmethod
    def from_any(cls, v: Augment | Mapping[str, Any] | bool | None) -> Augment | None:
        if v is None or v is True:
            return cls()
        if v is False:
            return None
        if isinstance(v, Augment):
            return v
        return cls(**dict(v))

    @classmethod
    def flip_only(cls) -> Augment:
        return cls(
            scale=(1.0, 1.0), ratio=(1.0, 1.0), rotate=0.0, translate=False, brightness=0.0, contrast=0.0
        )

    @property
    def geometric(self) -> bool:
        return self.scale != (1.0, 1.0) or self.ratio != (1.0, 1.0) or self.rotate > 0


def class_weights(labels: np.ndarray, num_classes: int | None = None) -> torch.Tensor:
    """``n / (K * count_k)`` per class over the known (>= 0) labels; 0 for absent classes. Float32 (K,)."""
    labels = np.asarray(labels)
    known = labels[labels >= 0]
    k = int(num_classes if num_classes is not None else (known.max(initial=-1) + 1))
    counts = np.bincount(known, minlength=k).astype(np.float64)[:k]
    w = np.where(counts > 0, len(known) / (k * np.maximum(counts, 1)), 0.0)
    return torch.tensor(w, dtype=torch.float32)


def sample_weights(labels: np.ndarray) -> np.ndarray:
    """Per-sample weight ∝ 1 / frequency of its class (0 for unknown labels), summing to 1."""
    labels = np.asarray(labels)
    w = np.zeros(len(labels), dtype=np.float64)
    known = labels >= 0
    if known.any():
        counts = np.bincount(labels[known])
        w[known] = 1.0 / counts[labels[known]]
        w /= w.sum()
    return w


class DeviceLoader:
    """Iterate ``(x, y)`` batches over ``indices`` of a decoded (N, H, W, 3) uint8 array.

    ``labels``: dict of per-sample arrays (the full dataset's; indexed by ``indices``). ``tasks`` selects which
    go into ``y`` (default: all numeric ones). ``input_size``: output side (int or (H, W); default the array's).
    ``balance``: a task name for class-balanced sampling (train only). ``seed``: shuffling/augmentation seed;
    each epoch (each ``iter``) draws a new permutation.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: Mapping[str, np.ndarray],
        indices: Sequence[int] | np.ndarray,
        batch_size: int,
        device: str | torch.device = "cpu",
        train: bool = False,
        *,
        input_size: int | tuple[int, int] | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        augment: Augment | Mapping[str, Any] | bool | None = None,
        tasks: Sequence[str] | None = None,
        balance: str | None = None,
        drop_last: bool | None = None,
        eval_crop: float = 1.0,
        seed: int = 0,
        crop: str | None = None,
    ) -> None:
        self.images = images
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.device = torch.device(device)
        self.train = train
        h, w = images.shape[1:3]
        if input_size is None:
            input_size = (h, w)
        self.out_size = (input_size, input_size) if isinstance(input_size, int) else tuple(input_size)
        self.mean = torch.tensor(mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._scale = 1.0 / (255.0 * self.std)
        self._shift = self.mean / self.std
        # the CPU fast path's per-channel factors, as numpy (C, 1, 1) float32
        self._scale_np = self._scale.cpu().numpy().reshape(3, 1, 1)
        self._shift_np = self._shift.cpu().numpy().reshape(3, 1, 1)
        self.augment = Augment.from_any(augment) if train else None
        if tasks is None:
            tasks = [
                k for k, v in labels.items() if np.asarray(v).dtype.kind in "iuf" and len(v) == len(images)
            ]
        self.labels = {t: np.asarray(labels[t]) for t in tasks}
        self.balance = balance if train else None
        self._weights = sample_weights(np.asarray(labels[balance])[self.indices]) if self.balance else None
        self.drop_last = train if drop_last is None else drop_last
        self.eval_crop = eval_crop
        if crop not in (None, "random", "center"):
            raise ValueError(f"crop must be None, 'random' or 'center', got {crop!r}")
        if crop is not None and (self.out_size[0] > h or self.out_size[1] > w):
            raise ValueError(f"crop {self.out_size} larger than the stored images {(h, w)}")
        self.crop = crop
        self.seed = seed
        self.epoch = 0
        self.pin = self.device.type == "cuda"
        ring = 3 if self.pin else 0  # pinned host buffers in flight (see _gather)
        shape = (self.batch_size, *images.shape[1:])
        self._ring: list[tuple[torch.Tensor, Any]] = [
            (torch.from_numpy(np.empty(shape, dtype=images.dtype)).pin_memory(), None) for _ in range(ring)
        ]
        self._next = 0
        self.gen = torch.Generator(device=self.device).manual_seed(seed)

    def class_weights(self, task: str, num_classes: int | None = None) -> torch.Tensor:
        """Weights for a weighted loss, from this loader's samples, on its device."""
        return class_weights(self.labels[task][self.indices], num_classes).to(self.device)

    def __len__(self) -> int:
        n = len(self.indices)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    def _order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        if not self.train:
            return self.indices
        if self._weights is not None:
            return self.indices[rng.choice(len(self.indices), size=len(self.indices), p=self._weights)]
        return self.indices[rng.permutation(len(self.indices))]

    def __iter__(self) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
        order = self._order()
        n = len(order)
        stop = n - n % self.batch_size if self.drop_last else n
        for s in range(0, stop, self.batch_size):
            idx = order[s : s + self.batch_size]
            if self.train:  # order inside a training batch is irrelevant: sorted reads are faster
                idx = np.sort(idx)
            yield self._batch(idx)

    def _gather(self, idx: np.ndarray) -> torch.Tensor:
        sorted_ = len(idx) <= 1 or bool((np.diff(idx) >= 0).all())
        if not self.pin:
            if sorted_:
                arr = self.images[idx]
            else:  # read in file order (memmap locality), then restore the requested order
                srt = np.sort(idx)
                arr = self.images[srt][np.searchsorted(srt, idx)]
            return torch.from_numpy(np.ascontiguousarray(arr)).to(self.device)
        # CUDA: gather straight into one of a few pinned buffers (one host copy, not three) and copy it with
        # non_blocking; a buffer is reused only after the copy that read it has finished (its event).
        buf, event = self._ring[self._next]
        self._next = (self._next + 1) % len(self._ring)
        if event is not None:
            event.synchronize()  # long done: the copy was queued RING batches ago
        out = buf[: len(idx)].numpy()
        if sorted_:
            np.take(self.images, idx, axis=0, out=out, mode="clip")  # clip: unbuffered (idx is valid)
        else:
            srt = np.sort(idx)
            out[...] = self.images[srt][np.searchsorted(srt, idx)]
        dev = buf[: len(idx)].to(self.device, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(self.device))
        self._ring[self._next - 1] = (buf, done)
        return dev

    def _batch(self, idx: np.ndarray) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        aug = self.augment
        fast = aug is None or not (aug.geometric or aug.brightness or aug.contrast or aug.grayscale)
        if (
            fast
            and self.crop is None  # crops (Levi–Hassner's 227 of 256) take the general path below
            and self.device.type == "cpu"
            and self.images.dtype == np.uint8
            and self.images.shape[-1] == 3
        ):
            flip = None
            if aug is not None and aug.flip > 0:  # the same draw as on other devices: the same batches
                flip = (torch.rand(len(idx), generator=self.gen, device=self.device) < aug.flip).numpy()
            x = _normalise_cpu(self.images, idx, flip, self._scale_np, self._shift_np)
            x = resize_center(x, self.out_size, 1.0 if aug is not None else self.eval_crop)
            return x, self._labels(idx)
        u8 = self._gather(idx)  # (B, H, W, 3) uint8 on device
        if self.crop == "random" and self.train:
            u8 = random_crop(u8, self.out_size, self.gen)
        elif self.crop is not None:
            u8 = center_crop(u8, self.out_size)
        if fast:
            # fast path (eval, or flip only): flip on uint8, normalise in NHWC (contiguous), then resize —
            # the affine normalisation commutes with (antialiased) bilinear resizing.
            v = u8.permute(0, 3, 1, 2).contiguous()  # uint8 NCHW (1 byte/px copy; fast per-plane maths)
            if aug is not None and aug.flip > 0:
                flip = torch.rand(len(idx), generator=self.gen, device=self.device) < aug.flip
                v = _flip_where(v, flip, inplace=True)  # v is a fresh copy
            x = v.float().mul_(self._scale).sub_(self._shift)
            x = resize_center(x, self.out_size, 1.0 if aug is not None else self.eval_crop)
            return x, self._labels(idx)
        x = u8.permute(0, 3, 1, 2)  # NCHW view, channels-last memory
        if self.augment is not None:
            x = augment_batch(x, self.augment, self.out_size, self.gen)
        else:
            x = x.float().div_(255.0)
            x = resize_center(x, self.out_size, self.eval_crop)
        x = x.sub_(self.mean).div_(self.std)  # in place: x is a fresh tensor
        return x, self._labels(idx)

    def _labels(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        y = {}
        for t, v in self.labels.items():
            a = v[idx]
            tt = torch.from_numpy(a.astype(np.float32) if a.dtype.kind == "f" else a.astype(np.int64))
            if self.pin:  # a copy from pageable memory would wait for the GPU's queue to drain
                tt = tt.pin_memory()
            y[t] = tt.to(self.device, non_blocking=self.pin)
        return y


def _normalise_cpu(
    images: np.ndarray, idx: np.ndarray, flip: np.ndarray | None, scale: np.ndarray, shift: np.ndarray
) -> torch.Tensor:
    """(B, 3, H, W) float32 ``images[idx] * scale - shift`` (NHWC uint8 in), mirrored where ``flip``: the CPU's path.

    Memory traffic is its cost on the CPU (bench/README.md): one image at a time, straight from the array (no
    gathered copy), its mirror and NCHW order as a strided view of the uint8 source, converted and scaled in
    one pass into the output and shifted while that image's 4-byte floats are still in the cache — the
    minimum of 1 byte read and 4 written per value, against ≈ 28 for batch-wide gather, permute, flip, float,
    multiply and subtract passes (each over a batch larger than the cache). One thread, no OpenMP barrier per
    operation (which, on a busy 2-core machine, cost 10x). The same float32 operations as the other paths,
    in the same order: equal results.
    """
    n = len(idx)
    h, w = images.shape[1:3]
    out = torch.empty((n, 3, h, w), dtype=torch.float32)
    dst = out.numpy()
    for i in range(n):
        src = images[int(idx[i])]
        if flip is not None and flip[i]:
            src = src[:, ::-1]
        o = dst[i]
        np.multiply(src.transpose(2, 0, 1), scale, out=o, casting="unsafe")
        np.subtract(o, shift, out=o)
    return out


def _flip_where(x: torch.Tensor, flip: torch.Tensor, inplace: bool) -> torch.Tensor:
    """Mirror the samples of (B, C, H, W) ``x`` where ``flip`` is True.

    On CUDA a ``where`` over the whole batch: indexing by the mask would wait for the GPU (a sync per batch).
    On the CPU only the chosen samples are flipped, in place when ``inplace`` (else on a copy).
    """
    if x.device.type == "cuda":
        return torch.where(flip.view(-1, 1, 1, 1), x.flip(-1), x)
    if flip.any():
        x = x if inplace else x.clone()
        x[flip] = x[flip].flip(-1)
    return x


def resize_center(x: torch.Tensor, size: tuple[int, int], crop: float = 1.0) -> torch.Tensor:
    """Centre crop a ``crop`` fraction of each side, then resize (bilinear, antialiased) to ``size``."""
    h, w = x.shape[-2:]
    if crop < 1.0:
        ch, cw = round(h * crop), round(w * crop)
        t, left = (h - ch) // 2, (w - cw) // 2
        x = x[..., t : t + ch, left : left + cw]
        h, w = ch, cw
    if (h, w) != tuple(size):
        x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
    return x


def augment_batch(
    x: torch.Tensor, aug: Augment, size: tuple[int, int], gen: torch.Generator | None = None
) -> torch.Tensor:
    """uint8 (B, 3, H, W) → augmented float in [0, 1] of (B, 3, *size), all on x's device.

    A channels-last uint8 input may be flipped in place (the loader passes its own fresh batch).
    """
    b = x.shape[0]
    dev = x.device

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=gen, device=dev)

    flip = rand(b) < aug.flip
    if not aug.geometric:
        x = _flip_where(
            x, flip, x.is_contiguous(memory_format=torch.channels_last)
        )  # on uint8 before the float conversion (cheaper)
        x = x.float().div_(255.0)
        x = resize_center(x, size)
    else:
        x = x.float().div_(255.0)
        lo, hi = aug.scale
        s = lo + (hi - lo) * rand(b)  # side fraction
        lr = math.log(aug.ratio[0]), math.log(aug.ratio[1])
        r = torch.exp(lr[0] + (lr[1] - lr[0]) * rand(b))
        sx, sy = s * torch.sqrt(r), s / torch.sqrt(r)
        sx, sy = sx.clamp(max=1.0), sy.clamp(max=1.0)
        if aug.translate:
            tx, ty = (1 - sx) * (2 * rand(b) - 1), (1 - sy) * (2 * rand(b) - 1)
        else:
            tx = ty = torch.zeros(b, device=dev)
        ang = (2 * rand(b) - 1) * math.radians(aug.rotate)
        cos, sin = torch.cos(ang), torch.sin(ang)
        fx = torch.where(flip, -1.0, 1.0)
        theta = torch.stack(
            [
                torch.stack([sx * cos * fx, -sy * sin, tx], 1),
                torch.stack([sx * sin * fx, sy * cos, ty], 1),
            ],
            1,
        )
        grid = F.affine_grid(theta, [b, 3, *size], align_corners=False)
        if lo < 0.5 and x.shape[-1] > 2 * size[1]:  # crops this small zoom out: pre-shrink against aliasing
            x = F.interpolate(x, size=(size[0] * 2, size[1] * 2), mode="bilinear", antialias=True)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    if aug.brightness > 0 or aug.contrast > 0:
        br = 1 + aug.brightness * (2 * rand(b, 1, 1, 1) - 1)
        ct = 1 + aug.contrast * (2 * rand(b, 1, 1, 1) - 1)
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * ct + m).mul_(br).clamp_(0, 1)
    if aug.grayscale > 0:
        g = rand(b) < aug.grayscale
        gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).expand_as(x)
        x = torch.where(g.view(b, 1, 1, 1), gray, x)
    return x


def oversample(x: torch.Tensor, crop: int | tuple[int, int]) -> torch.Tensor:
    """(B, C, H, W) → (B*10, C, ch, cw): per image the 4 corner crops, the centre crop, then their mirrors.

    The order per image follows ``caffe.io.oversample``: top-left, top-right, bottom-left, bottom-right, centre,
    then the same five flipped. Reshape logits with ``average_oversampled``.
    """
    ch, cw = (crop, crop) if isinstance(crop, int) else crop
    h, w = x.shape[-2:]
    if ch > h or cw > w:
        raise ValueError(f"crop {ch}x{cw} larger than the image {h}x{w}")
    tops = [0, 0, h - ch, h - ch, (h - ch) // 2]
    lefts = [0, w - cw, 0, w - cw, (w - cw) // 2]
    crops = [x[..., t : t + ch, c : c + cw] for t, c in zip(tops, lefts, strict=True)]
    crops += [c.flip(-1) for c in crops]
    return torch.stack(crops, 1).reshape(-1, x.shape[1], ch, cw)


def average_oversampled(logits: torch.Tensor, n_crops: int = 10) -> torch.Tensor:
    """(B*n_crops, K) logits → (B, K) mean softmax probabilities over the crops of each image."""
    return logits.softmax(-1).view(-1, n_crops, logits.shape[-1]).mean(1)


def crop_at(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) → (B, h, w, C): per sample ``b`` the window ``x[b, top[b]:top[b]+h, left[b]:left[b]+w]``."""
    h, w = size
    b = x.shape[0]
    rows = top.view(b, 1, 1) + torch.arange(h, device=x.device).view(1, h, 1)
    cols = left.view(b, 1, 1) + torch.arange(w, device=x.device).view(1, 1, w)
    return x[torch.arange(b, device=x.device).view(b, 1, 1), rows, cols]


def random_crop(x: torch.Tensor, size: tuple[int, int], gen: torch.Generator | None = None) -> torch.Tensor:
    """(B, H, W, C) → (B, h, w, C): a window at a uniformly random whole-pixel offset per sample (Caffe's
    training crop: every offset in ``0..H-h`` × ``0..W-w``)."""
    b, hh, ww = x.shape[:3]
    h, w = size
    top = torch.randint(0, hh - h + 1, (b,), generator=gen, device=x.device)
    left = torch.randint(0, ww - w + 1, (b,), generator=gen, device=x.device)
    return crop_at(x, top, left, size)


def center_crop(x: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(B, H, W, C) → (B, h, w, C): the centre window (offsets ``(H-h)//2``, ``(W-w)//2``, as ``oversample``)."""
    hh, ww = x.shape[1:3]
    h, w = size
    t, left = (hh - h) // 2, (ww - w) // 2
    return x[:, t : t + h, left : left + w]
