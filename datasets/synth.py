"""Synthetic face images written in each dataset's real on-disk layout, so the real loaders read them.

The drawings are face-like and their appearance really depends on the labels (a small CNN learns them well
above chance in a few CPU epochs):

* age: face shape (round for children, longer for adults), eye size, hair colour greying after ~40,
  balding for older men, wrinkle-like stripes growing after ~30, paler/desaturated skin for the elderly;
* gender: long hair down the sides and redder lips (female) vs short hair, wider jaw and, for most adult
  men, a beard shadow;
* ethnicity (UTKFace): skin tone;
* nuisance: per-subject skin tone / hair colour / face proportions (the same for all images of one subject),
  per-image pose (shift, scale, in-plane rotation), lighting gradient and exposure, background, JPEG noise.

Layouts and label files (real formats, see FORMATS.md in the fixtures):

* ``adience``: the 5 real ``fold_{k}_data.txt`` files of the current release (copied byte for byte when
  ``limit`` is None; otherwise a per-fold subset of about ``limit * fold share`` rows, sampled systematically
  over the rows sorted by user, age and gender so every fold keeps its users and label mix; each file keeps its
  original line endings), and ``aligned/<user_id>/landmark_aligned_face.<face_id>.<original_image>`` JPEGs.
  Rows with an odd age label are drawn at their ``nearest`` group, ``None`` ages and unknown genders at a
  per-subject random value.
* ``celeba``: all 500 real attribute rows are in the train partition, so the synthetic copy has
  ``limit`` rows (default 1000): 80 % train (the real rows 000001… first, then generated ones), 10 % val from
  000162771… and 10 % test from 000182638…, i.e. inside the official partition ranges. Generated rows copy the
  attribute vector of a random real row (keeping attribute correlations), with identities ≥ 20001 in runs of
  ~8 images, disjoint between partitions. ``list_attr_celeba.txt`` uses the real format (count line = rows
  written, names with a trailing space, padded values, CRLF); ``list_eval_partition.txt`` is the full official
  file (all 202,599 rows, regenerated from the official ranges; identical bytes); ``identity_CelebA.txt`` has one
  row per image written. Images: ``img_align_celeba/NNNNNN.jpg``, 178×218 scaled to ``size`` wide.
* ``utkface``: file names from the real CORAL lists (``coral_utk_{train,test}.csv``, malformed ones included
  so loaders see them), ``UTKFace/<name>`` (the Aligned&Cropped layout), square ``size`` px.

The label files are found via ``$ORCHESTRATE_FIXTURES_DIR``, else the copies shipped in ``datasets/labels/``
(nothing outside the repository is needed).
"""

from __future__ import annotations

import csv
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from datasets.base import cache_dir, file_lock, line_ending, read_lines
from orchestrator.trial.errors import DataError

GENERATOR_VERSION = 1
TONES = np.array([0.82, 0.18, 0.68, 0.42, 0.55])  # skin brightness per UTKFace race 0..4


# ----------------------------------------------------------------------------------------------- drawing
def render_faces(
    age: np.ndarray,
    female: np.ndarray,
    subject: np.ndarray,
    *,
    size: int = 128,
    height: int | None = None,
    seed: int = 0,
    tone: np.ndarray | None = None,
) -> np.ndarray:
    """Draw a batch of faces; returns (B, height or size, size, 3) uint8.

    ``age`` in years, ``female`` 0/1, ``subject`` an integer id (subject-level appearance is seeded by it),
    ``tone`` optional skin brightness in [0, 1] (else per subject).
    """
    age = np.asarray(age, dtype=np.float32)
    female = np.asarray(female).astype(bool)
    b = len(age)
    h, w = (height or size), size
    rng = np.random.default_rng([seed, int(np.asarray(subject).sum()) % (2**31), b])
    # subject-level parameters (same subject → same look)
    sub = np.empty((b, 8), dtype=np.float32)
    for i, s in enumerate(np.asarray(subject)):
        sub[i] = np.random.default_rng([seed, 7919, int(s) & 0x7FFFFFFF]).random(8)
    skin = (
        sub[:, 0] * 0.8 + 0.1 if tone is None else np.clip(np.asarray(tone) + (sub[:, 0] - 0.5) * 0.12, 0, 1)
    )
    hair_dark = sub[:, 1]
    beard = (sub[:, 2] < 0.65) & ~female & (age >= 18)
    jaw = (sub[:, 3] - 0.5) * 0.05
    bg = sub[:, 4:7] * 0.8 + 0.1

    def col(x: np.ndarray) -> np.ndarray:
        return x.astype(np.float32)[:, None, None]

    v, u = np.meshgrid(
        np.linspace(-1, 1, h, dtype=np.float32), np.linspace(-1, 1, w, dtype=np.float32), indexing="ij"
    )
    u = u[None] * (w / h if h > w else 1.0)
    v = v[None] * (h / w if h > w else 1.0)
    cx, cy = rng.normal(0, 0.05, b), rng.normal(0, 0.05, b)
    th = np.deg2rad(rng.uniform(-14, 14, b))
    sc = rng.uniform(0.88, 1.1, b) * (0.82 + 0.18 * np.clip(age, 0, 18) / 18)
    du, dv = u - col(cx), v - col(cy)
    x = (du * col(np.cos(th)) + dv * col(np.sin(th))) / col(sc)
    y = (-du * col(np.sin(th)) + dv * col(np.cos(th))) / col(sc)

    child = np.clip(1 - age / 16, 0, 1)
    a = 0.42 + 0.09 * child + 0.04 * ~female + jaw + 0.05 * np.clip((age - 25) / 40, 0, 1)
    bb = 0.60 - 0.07 * child
    # jaw narrows towards the chin for adults (women more)
    taper = 1 - np.clip(y / col(bb), 0, 1) * col((1 - child) * (0.18 + 0.1 * female))
    face_r = (x / (col(a) * taper)) ** 2 + (y / col(bb)) ** 2
    face = 1 / (1 + np.exp(np.clip((face_r - 1) * 25, -30, 30)))

    skin_rgb = (
        np.array([235, 200, 175])[None] * skin[:, None] + np.array([92, 62, 44])[None] * (1 - skin[:, None])
    ) / 255
    old = np.clip((age - 55) / 30, 0, 1)
    skin_rgb = (
        skin_rgb * (1 - 0.25 * old[:, None])
        + 0.25 * old[:, None] * skin_rgb.mean(1, keepdims=True)
        + 0.08 * old[:, None]
    )
    grey = np.clip((age - 32) / 25, 0, 1) * (0.7 + 0.3 * sub[:, 7])
    hair_rgb = np.array([40, 28, 20])[None] * hair_dark[:, None] + np.array([150, 110, 60])[None] * (
        1 - hair_dark[:, None]
    )
    hair_rgb = (hair_rgb * (1 - grey[:, None]) + 205 * grey[:, None]) / 255
    hair_rgb = hair_rgb * (1 - 0.4 * child[:, None]) + 0.4 * child[:, None] * np.array([0.6, 0.45, 0.3])

    # hair: cap above the hairline; long side hair for women; balding crown for older men
    cap_r = (x / col(a * 1.13)) ** 2 + ((y + col(bb * 0.08)) / col(bb * 1.12)) ** 2
    hairline = y < col(-bb * (0.45 - 0.15 * child))
    cap = (cap_r < 1) & (hairline | (face_r >= 1))
    cap &= y < col(bb * np.where(female, 0.9, -0.05))
    long = (
        female[:, None, None]
        & (np.abs(x) < col(a * 1.45))
        & (y > col(-bb * 0.4))
        & (y < col(bb * 1.25))
        & (face_r >= 1)
    )
    bald = (
        (~female & (age > 48) & (sub[:, 7] > 0.35))[:, None, None]
        & (np.abs(x) < col(a * 0.55))
        & (y < col(-bb * 0.5))
    )
    baby = (age < 2.5)[:, None, None]
    hair = (cap | long) & ~bald & ~(baby & (y < col(-bb * 0.7)))

    img = np.empty((b, h, w, 3), dtype=np.float32)
    grad = 0.85 + 0.15 * v
    img[:] = (bg[:, None, None, :] * grad[..., None]).astype(np.float32)
    f3 = face[..., None]
    img = img * (1 - f3) + f3 * skin_rgb[:, None, None, :].astype(np.float32)

    # wrinkles: horizontal forehead stripes and cheek lines, amplitude grows with age
    wr = np.clip((age - 25) / 35, 0, 1) * 0.35
    stripes = (
        np.maximum(0, np.sin(y * 30 + col(sub[:, 5] * 6))) * (y < col(-bb * 0.15)) * (y > col(-bb * 0.6))
    )
    cheek = (
        np.maximum(0, np.sin((np.abs(x) * 1.2 - y) * 25))
        * (np.abs(x) > col(a * 0.3))
        * (y > 0)
        * (y < col(bb * 0.6))
    )
    img *= (1 - col(wr) * (stripes + 0.7 * cheek) * face)[..., None]

    # beard shadow
    bmask = beard[:, None, None] & (y > col(bb * 0.2)) & (face_r < 1)
    np.copyto(
        img, img * 0.55 + (0.27 * hair_rgb[:, None, None, :]).astype(np.float32), where=bmask[..., None]
    )

    # eyes (bigger for children), brows, mouth
    eye_r = (0.05 + 0.035 * child) * a / 0.44
    ey = -bb * 0.1
    for sgn in (-1, 1):
        ex = sgn * a * 0.42
        e = ((x - col(ex)) / col(eye_r * 1.3)) ** 2 + ((y - col(ey)) / col(eye_r)) ** 2 < 1
        np.copyto(img, np.array([0.08, 0.06, 0.05], dtype=np.float32), where=e[..., None])
        brow = (np.abs(x - col(ex)) < col(eye_r * 1.6)) & (
            np.abs(y - col(ey - eye_r * 2.2)) < col(0.012 + 0.012 * ~female)
        )
        np.copyto(img, (hair_rgb[:, None, None, :] * 0.7).astype(np.float32), where=brow[..., None])
    my = bb * (0.48 - 0.06 * child)
    mouth = (x / col(a * 0.38)) ** 2 + ((y - col(my)) / col(0.035 + 0.02 * female)) ** 2 < 1
    lip = np.where(female[:, None], np.array([[0.75, 0.2, 0.25]]), np.array([[0.55, 0.3, 0.28]]))
    np.copyto(img, lip[:, None, None, :].astype(np.float32), where=mouth[..., None])

    hair_tex = (
        hair_rgb[:, None, None, :].astype(np.float32) * (0.9 + 0.1 * np.sin(x * 40 + y * 13))[..., None]
    )
    np.copyto(img, hair_tex, where=hair[..., None])

    # lighting, exposure, noise
    phi = rng.uniform(0, 2 * np.pi, b)
    light = 1 + col(rng.uniform(0, 0.35, b)) * (u * col(np.cos(phi)) + v * col(np.sin(phi)))
    img *= (light * col(rng.uniform(0.75, 1.15, b)))[..., None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * col(rng.uniform(0.005, 0.03, b))[..., None]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _write_jpegs(root: Path, rels: Sequence[str], images: np.ndarray, quality: int = 90) -> None:
    made: set[Path] = set()
    for rel, arr in zip(rels, images, strict=True):
        p = root / rel
        if p.parent not in made:
            p.parent.mkdir(parents=True, exist_ok=True)
            made.add(p.parent)
        Image.fromarray(arr).save(p, quality=quality)


def _render_and_write(
    root: Path,
    rels: Sequence[str],
    age: np.ndarray,
    female: np.ndarray,
    subject: np.ndarray,
    *,
    size: int,
    seed: int,
    height: int | None = None,
    tone: np.ndarray | None = None,
    batch: int = 64,
) -> None:
    n = len(rels)
    t0 = time.monotonic()
    for s in range(0, n, batch):
        sl = slice(s, s + batch)
        imgs = render_faces(
            age[sl], female[sl], subject[sl], size=size, height=height, seed=seed + s,
            tone=None if tone is None else tone[sl],
        )  # fmt: skip
        _write_jpegs(root, rels[sl], imgs)
        if n > 2000 and time.monotonic() - t0 > 2 and (s // batch) % 20 == 0:
            print(f"synth: {min(s + batch, n)}/{n} images", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------- fixtures
def fixtures_dir() -> Path:
    """The real label files: ``$ORCHESTRATE_FIXTURES_DIR``, else the copies shipped in ``datasets/labels``
    (see its README); DataError if none is found."""
    env = os.environ.get("ORCHESTRATE_FIXTURES_DIR")
    cands = ([Path(env)] if env else []) + [Path(__file__).resolve().parent / "labels"]
    for c in cands:
        if (c / "adience").is_dir():
            return c
    raise DataError(
        "synthetic data needs the real label files (fixtures); looked in " + ", ".join(map(str, cands)),
        hint="set ORCHESTRATE_FIXTURES_DIR to the folder holding adience/, celeba/, utkface/",
    )


def _systematic(order_keys: list[tuple], k: int, rng: np.random.Generator) -> np.ndarray:
    """k indices spread evenly over the rows sorted by ``order_keys`` (a stratified sample), sorted."""
    n = len(order_keys)
    if k >= n:
        return np.arange(n)
    order = sorted(range(n), key=lambda i: order_keys[i])
    pos = (rng.uniform(0, n / k) + np.arange(k) * (n / k)).astype(int)
    return np.sort(np.asarray(order)[np.minimum(pos, n - 1)])


# ----------------------------------------------------------------------------------------------- writers
def _synth_adience(out: Path, limit: int | None, size: int, seed: int) -> None:
    from datasets.adience import AGE_BOUNDS, age_to_group, fold_file_name

    src = fixtures_dir() / "adience"
    rng = np.random.default_rng(seed)
    lines_per_fold = [read_lines(src / fold_file_name(k)) for k in range(5)]
    total = sum(len(x) - 1 for x in lines_per_fold)
    rels, ages, fem, subj = [], [], [], []
    for k, lines in enumerate(lines_per_fold):
        header, rows = lines[0], [ln.split("\t") for ln in lines[1:]]
        if limit is None:
            shutil.copyfile(src / fold_file_name(k), out / fold_file_name(k))
            keep = np.arange(len(rows))
        else:
            quota = max(1, round(limit * len(rows) / total))
            keep = _systematic([(r[0], r[3], r[4]) for r in rows], quota, rng)
            nl, final = line_ending(src / fold_file_name(k))
            text = nl.join([header] + ["\t".join(rows[i]) for i in keep]) + (nl if final else "")
            (out / fold_file_name(k)).write_bytes(text.encode())
        for i in keep:
            user, image, face_id, age_s, gender = rows[i][:5]
            r = np.random.default_rng([seed, int(face_id)])
            g = age_to_group(age_s, "nearest")
            if g < 0:
                g = int(r.integers(8))
            lo, hi = AGE_BOUNDS[g]
            ages.append(r.uniform(lo, min(hi, 80) + 0.99))
            fem.append({"m": 0, "f": 1}.get(gender, int(r.integers(2))))
            subj.append(int(face_id))
            rels.append(f"aligned/{user}/landmark_aligned_face.{face_id}.{image}")
    uniq = {}
    for i, rel in enumerate(rels):
        uniq.setdefault(rel, i)
    idx = np.fromiter(uniq.values(), dtype=int)
    _render_and_write(
        out, [rels[i] for i in idx], np.asarray(ages)[idx], np.asarray(fem)[idx], np.asarray(subj)[idx],
        size=size, seed=seed,
    )  # fmt: skip


def _celeba_partition_text() -> str:
    from datasets.celeba import PARTITION_RANGES

    return "".join(
        f"{i:06d}.jpg {p}\r\n" for p, (lo, hi) in PARTITION_RANGES.items() for i in range(lo, hi + 1)
    )


def _synth_celeba(out: Path, limit: int | None, size: int, seed: int) -> None:
    from datasets.celeba import PARTITION_RANGES, read_attr_file, read_pairs

    src = fixtures_dir() / "celeba"
    rng = np.random.default_rng(seed)
    names, images, vals, _ = read_attr_file(src / "list_attr_celeba.txt")
    ident = read_pairs(src / "identity_CelebA.txt")
    n = limit or 1000
    n_train = max(1, round(0.8 * n))
    n_val = max(1, round(0.1 * n)) if n >= 3 else 0
    n_test = max(0, n - n_train - n_val)
    rows: list[tuple[str, np.ndarray, int]] = []
    for im, v in zip(images[: min(n_train, len(images))], vals, strict=False):
        rows.append((im, v, ident.get(im, 20000)))
    next_id = 20001

    def gen(start: int, count: int) -> None:
        nonlocal next_id
        for j in range(count):
            if j % 8 == 0:
                next_id += 1
            rows.append((f"{start + j:06d}.jpg", vals[rng.integers(len(vals))], next_id))

    gen(len(rows) + 1, n_train - len(rows))
    gen(PARTITION_RANGES[1][0], n_val)
    gen(PARTITION_RANGES[2][0], n_test)
    attr = [str(len(rows)), " ".join(names) + " "]
    for im, v, _ in rows:
        attr.append(f"{im} {v[0]}" + "".join(f" {x:>2}" for x in v[1:]))
    (out / "list_attr_celeba.txt").write_bytes(("\r\n".join(attr) + "\r\n").encode())
    (out / "identity_CelebA.txt").write_bytes("".join(f"{im} {i}\r\n" for im, _, i in rows).encode())
    (out / "list_eval_partition.txt").write_bytes(_celeba_partition_text().encode())
    male = np.array([v[names.index("Male")] > 0 for _, v, _ in rows])
    young = np.array([v[names.index("Young")] > 0 for _, v, _ in rows])
    subj = np.array([i for _, _, i in rows])
    ages = np.array([np.random.default_rng([seed, int(s)]).uniform(18, 35) for s in subj])
    ages = np.where(young, ages, ages + 27)  # not young: 45..62
    height = round(size * 218 / 178)
    _render_and_write(
        out,
        ["img_align_celeba/" + im for im, _, _ in rows],
        ages,
        ~male,
        subj,
        size=size,
        seed=seed,
        height=height,
    )


def utk_names(fixtures: Path | None = None) -> list[str]:
    """The real UTKFace file names of the CORAL lists (train then test)."""
    src = (fixtures or fixtures_dir()) / "utkface"
    names: list[str] = []
    for part in ("train", "test"):
        with open(src / f"coral_utk_{part}.csv", newline="") as fh:
            names += [row[1] for row in csv.reader(fh) if len(row) >= 2 and row[1] != "file"]
    return names


def _synth_utkface(out: Path, limit: int | None, size: int, seed: int) -> None:
    from datasets.utkface import parse_name

    rng = np.random.default_rng(seed)
    names = utk_names()
    parsed = [parse_name(n) for n in names]
    bad = [i for i, p in enumerate(parsed) if isinstance(p, str)]
    good = [i for i, p in enumerate(parsed) if not isinstance(p, str)]
    if limit is not None:
        keys = [parsed[i] for i in good]
        sel = _systematic(keys, max(0, limit - len(bad)), rng)  # type: ignore[arg-type]
        good = [good[i] for i in sel]
    idx = sorted(good + bad)
    ages, fem, tone = [], [], []
    for i in idx:
        p = parsed[i]
        if isinstance(p, str):
            p = (int(rng.integers(21, 61)), int(rng.integers(2)), int(rng.integers(5)))
        ages.append(p[0])
        fem.append(p[1])
        tone.append(TONES[p[2]])
    _render_and_write(
        out, ["UTKFace/" + names[i] for i in idx], np.asarray(ages, dtype=np.float32), np.asarray(fem),
        np.asarray(idx), size=size, seed=seed, tone=np.asarray(tone),
    )  # fmt: skip


WRITERS = {"adience": _synth_adience, "celeba": _synth_celeba, "utkface": _synth_utkface}


def synthesize(
    name: str, out_dir: str | Path, limit: int | None = None, size: int = 128, seed: int = 0
) -> Path:
    """Write a synthetic ``name`` dataset in its real layout into ``out_dir`` (created); returns it."""
    key = name.lower()
    if key not in WRITERS:
        raise DataError(f"no synthetic generator for {name!r}", hint="known: " + ", ".join(WRITERS))
    if limit is not None and limit < 1:
        raise DataError(f"synthetic {name}: limit must be positive, got {limit}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    WRITERS[key](out, limit, int(size), int(seed))
    return out


def ensure_synthetic(name: str, *, limit: int | None, size: int, seed: int = 0) -> Path:
    """``$ORCHESTRATE_CACHE_DIR/synthetic/<name>-n<limit>-s<size>-r<seed>-v<version>`` made once.

    Idempotent and safe across processes: a file lock serialises builders, the data is written to a temporary
    folder and renamed into place, and a ``.complete`` marker says it is whole.
    """
    key = name.lower()
    if key not in WRITERS:
        raise DataError(f"no synthetic generator for {name!r}", hint="known: " + ", ".join(WRITERS))
    base = cache_dir() / "synthetic"
    final = base / f"{key}-n{limit or 'all'}-s{size}-r{seed}-v{GENERATOR_VERSION}"
    if (final / ".complete").exists():
        return final
    with file_lock(base / f"{final.name}.lock"):
        if (final / ".complete").exists():
            return final
        tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=base))
        try:
            synthesize(key, tmp, limit=limit, size=size, seed=seed)
            (tmp / ".complete").write_text(f"{key} limit={limit} size={size} seed={seed}\n")
            if final.exists():
                shutil.rmtree(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return final
