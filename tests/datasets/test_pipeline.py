from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from datasets.pipeline import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    Augment,
    DeviceLoader,
    average_oversampled,
    center_crop,
    class_weights,
    oversample,
    random_crop,
)


def _data(n: int = 20, size: int = 16) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    img[0] = 255
    img[1] = 0
    labels = {
        "gender": np.array([0, 1] * (n // 2)),
        "age_group": np.array([0] * (n - 4) + [1, 2, -1, -1]),
        "age": np.linspace(1, 80, n).astype(np.float32),
    }
    return img, labels


def test_eval_batches_shapes_and_normalisation() -> None:
    img, labels = _data()
    dl = DeviceLoader(img, labels, np.arange(20), batch_size=8, mean=(0.5,) * 3, std=(0.5,) * 3)
    assert len(dl) == 3
    batches = list(dl)
    assert [b[0].shape[0] for b in batches] == [8, 8, 4]
    x, y = batches[0]
    assert x.shape == (8, 3, 16, 16) and x.dtype == torch.float32
    assert torch.allclose(x[0], torch.ones(3, 16, 16)) and torch.allclose(x[1], -torch.ones(3, 16, 16))
    ref = torch.from_numpy(img[2]).permute(2, 0, 1).float() / 255 * 2 - 1
    assert torch.allclose(x[2], ref, atol=1e-6)
    assert y["gender"].dtype == torch.int64 and y["age"].dtype == torch.float32
    assert y["gender"].tolist() == labels["gender"][:8].tolist()
    x2, _ = next(iter(DeviceLoader(img, labels, [0, 2], batch_size=2, input_size=8)))
    assert x2.shape == (2, 3, 8, 8)


def test_train_augmentation() -> None:
    img, labels = _data()
    dl = DeviceLoader(img, labels, np.arange(20), batch_size=6, train=True, input_size=12, seed=1,
                      augment=Augment(grayscale=0.5), mean=(0, 0, 0), std=(1, 1, 1))  # fmt: skip
    assert len(dl) == 3  # drop_last in training
    xs = []
    for x, y in dl:
        assert x.shape == (6, 3, 12, 12) and torch.isfinite(x).all()
        assert x.min() >= 0 and x.max() <= 1
        assert set(y) == {"gender", "age_group", "age"}
        xs.append(x)
    assert sum(x.shape[0] for x in xs) == 18
    # flip only, p=1: exactly the mirrored eval image
    flip = Augment(flip=1.0, scale=(1, 1), ratio=(1, 1), rotate=0, translate=False, brightness=0, contrast=0)
    xa, _ = next(
        iter(DeviceLoader(img, labels, [3, 3], 2, train=True, augment=flip, mean=(0,) * 3, std=(1,) * 3))
    )
    xe, _ = next(iter(DeviceLoader(img, labels, [3, 3], 2, mean=(0,) * 3, std=(1,) * 3)))
    assert torch.allclose(xa, xe.flip(-1))


def test_balanced_sampling_and_class_weights() -> None:
    labels = {"y": np.array([0] * 90 + [1] * 10 + [-1] * 5)}
    img = np.zeros((105, 4, 4, 3), dtype=np.uint8)
    dl = DeviceLoader(img, labels, np.arange(105), 35, train=True, balance="y", augment=False)
    ys = torch.cat([y["y"] for _, y in dl] + [y["y"] for _, y in dl])
    assert (ys >= 0).all()
    assert 0.35 < (ys == 1).float().mean().item() < 0.65
    w = class_weights(labels["y"], 3)
    assert w.tolist()[:2] == pytest.approx([100 / (3 * 90), 100 / (3 * 10)]) and w[2] == 0
    assert dl.class_weights("y", 2).shape == (2,)


def test_oversample() -> None:
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    o = oversample(x, 6)
    assert o.shape == (20, 3, 6, 6)
    assert torch.equal(o[0], x[0, :, :6, :6]) and torch.equal(o[1], x[0, :, :6, 2:])
    assert torch.equal(o[3], x[0, :, 2:, 2:]) and torch.equal(o[4], x[0, :, 1:7, 1:7])
    assert torch.equal(o[5], o[0].flip(-1)) and torch.equal(o[10], x[1, :, :6, :6])
    p = average_oversampled(torch.zeros(20, 4))
    assert p.shape == (2, 4) and torch.allclose(p, torch.full((2, 4), 0.25))


def _loaders(device: str, train: bool, augment: Augment | None) -> list:
    img, labels = _data(n=23, size=24)
    idx = np.array([5, 2, 9, 0, 7, 11, 3, 22, 14, 1, 19, 8, 13])  # unsorted: the reorder path
    loader = DeviceLoader(
        img, labels, idx, batch_size=4, device=device, train=train, input_size=16, augment=augment, seed=3
    )
    return [(x.cpu(), {k: v.cpu() for k, v in y.items()}) for x, y in loader]


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="the pinned-buffer ring and sync-free flips are CUDA code"
)
def test_cuda_batches_equal_the_cpu_batches() -> None:
    """CUDA path (pinned ring buffers reused across batches, flips by ``where``) = CPU path, batch for batch."""
    for train, aug in [
        (False, None),
        (True, Augment(flip=1.0, **_NO_GEOMETRY)),
        (True, Augment(flip=0.0, **_NO_GEOMETRY)),
    ]:
        cpu, gpu = _loaders("cpu", train, aug), _loaders("cuda", train, aug)
        assert len(cpu) == len(gpu) >= 3  # more batches than ring buffers when batch 4 of 13 (+ drop_last)
        for (xc, yc), (xg, yg) in zip(cpu, gpu, strict=True):
            assert torch.allclose(xc, xg, atol=1e-5)
            assert yc.keys() == yg.keys() and all(torch.equal(yc[k], yg[k]) for k in yc)


_NO_GEOMETRY = {
    "scale": (1.0, 1.0),
    "ratio": (1.0, 1.0),
    "rotate": 0.0,
    "translate": False,
    "brightness": 0.0,
    "contrast": 0.0,
}


def _coords(n: int, size: int) -> np.ndarray:
    """Image k's pixel (i, j) holds (i, j, k): a crop tells where it was taken from."""
    img = np.zeros((n, size, size, 3), np.uint8)
    img[..., 0] = np.arange(size)[None, :, None]
    img[..., 1] = np.arange(size)[None, None, :]
    img[..., 2] = np.arange(n)[:, None, None]
    return img


def test_levi_hassner_crops_are_whole_pixel_windows_of_the_stored_faces() -> None:
    """Training: random 8-px windows of 10-px images at every whole-pixel offset, never rescaled; evaluation: the
    centre window (offset 1, 1), the same one ``oversample`` takes as its 5th crop."""
    img = _coords(6, 10)
    labels = {"gender": np.array([0, 1] * 3)}
    unit = {"mean": (0.0, 0.0, 0.0), "std": (1 / 255,) * 3}  # x = the pixel values themselves
    ev = DeviceLoader(img, labels, np.arange(6), 6, input_size=8, crop="center", **unit)
    x, _ = next(iter(ev))
    assert x.shape == (6, 3, 8, 8)
    assert torch.equal(x[:, 0], torch.arange(1.0, 9.0).view(1, 8, 1).expand(6, 8, 8))
    assert torch.equal(x[:, 1], torch.arange(1.0, 9.0).view(1, 1, 8).expand(6, 8, 8))
    whole = torch.from_numpy(img).permute(0, 3, 1, 2).float()
    assert torch.equal(x, oversample(whole, 8).view(6, 10, 3, 8, 8)[:, 4])
    tr = DeviceLoader(
        img, labels, np.arange(6), 3, train=True, input_size=8, crop="random", augment=False, seed=1, **unit
    )
    offsets = set()
    for _ in range(30):
        for x, _ in tr:
            for b in range(len(x)):
                t, left, k = int(x[b, 0, 0, 0]), int(x[b, 1, 0, 0]), int(x[b, 2, 0, 0])
                assert torch.equal(x[b], whole[k, :, t : t + 8, left : left + 8])
                offsets.add((t, left))
    assert offsets == {(t, left) for t in range(3) for left in range(3)}
    # the functions themselves, on NHWC tensors
    u8 = torch.from_numpy(img)
    assert torch.equal(center_crop(u8, (6, 4)), u8[:, 2:8, 3:7])
    r = random_crop(u8, (10, 10), torch.Generator().manual_seed(0))
    assert torch.equal(r, u8)  # a crop the size of the image: the image
    with pytest.raises(ValueError, match="larger than the stored images"):
        DeviceLoader(img, labels, np.arange(6), 3, input_size=12, crop="center")


def test_the_cpu_path_equals_the_batch_wide_computation(tmp_path: Path) -> None:
    """Per image from the (memory-mapped) array, mirrored by a view: bit for bit the batch-wide float maths."""
    img = np.random.default_rng(3).integers(0, 256, (10, 6, 5, 3), dtype=np.uint8)
    mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.uint8, shape=img.shape)
    mm[:] = img
    labels = {"y": np.arange(10)}
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    scale, shift = 1.0 / (255.0 * std), torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1) / std

    def want(idx: list[int]) -> torch.Tensor:
        return torch.from_numpy(img[idx]).permute(0, 3, 1, 2).float().mul(scale).sub(shift)

    x, y = next(iter(DeviceLoader(mm, labels, [7, 2, 2, 9, 0], 5)))  # evaluation keeps the order
    assert torch.equal(x, want([7, 2, 2, 9, 0])) and y["y"].tolist() == [7, 2, 2, 9, 0]
    dl = DeviceLoader(mm, labels, np.arange(10), 10, train=True, augment=Augment.flip_only(), seed=4)
    x, _ = next(iter(dl))
    flip = torch.rand(10, generator=torch.Generator().manual_seed(4)) < 0.5  # the loader's first draw
    expected = want(list(range(10)))
    expected[flip] = expected[flip].flip(-1)
    assert 0 < int(flip.sum()) < 10 and torch.equal(x, expected)
