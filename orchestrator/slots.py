"""Slots: where trials run. One slot is one GPU (or one share of a GPU, or one CPU worker).

``parse_slots`` turns ``--slots`` / ``defaults.slots`` into a list of :class:`Slot`:

- ``auto`` — every visible GPU (``CUDA_VISIBLE_DEVICES`` if set, else ``nvidia-smi``), one trial each; with no GPU,
  CPU slots (``cpu:N`` with N = number of cores, at most 4).
- ``cpu:N`` — N CPU slots (each child gets ``CUDA_VISIBLE_DEVICES=""`` and ``OMP_NUM_THREADS = cores // N``).
- ``gpu:0,1`` — those GPUs; ``gpu:0x2`` or ``gpu:0,1x2`` — two trials per GPU; ``gpu:all`` — every visible GPU.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from orchestrator.trial.errors import UsageError


@dataclass(frozen=True)
class Slot:
    id: str  # "cpu0", "gpu1", "gpu1.2" (second share of GPU 1), "host:gpu0" for remote hosts
    kind: str  # "cpu" | "gpu"
    gpu: str | None = None  # the device index as CUDA_VISIBLE_DEVICES sees it
    host: str = "local"
    threads: int = 1  # OMP/torch threads for CPU work in this slot

    def env(self) -> dict[str, str]:
        """The environment that pins a child to this slot."""
        env = {"CUDA_VISIBLE_DEVICES": self.gpu if self.kind == "gpu" and self.gpu is not None else ""}
        env["OMP_NUM_THREADS"] = str(self.threads)
        env["MKL_NUM_THREADS"] = str(self.threads)
        return env


def visible_gpus() -> list[str]:
    """GPU indices visible to this process: CUDA_VISIBLE_DEVICES when set, else nvidia-smi, else none."""
    cvd = os.environ.get("CUDA_VISIBLE_DEVICES")
    if cvd is not None:
        return [g.strip() for g in cvd.split(",") if g.strip() and g.strip() != "-1"]
    exe = shutil.which("nvidia-smi")
    if not exe:
        return []
    try:
        out = subprocess.run(
            [exe, "--query-gpu=index", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return []
    if out.returncode != 0:
        return []
    return [line.strip() for line in out.stdout.splitlines() if line.strip().isdigit()]


_GPU_RE = re.compile(r"^gpu:(?P<ids>all|[0-9]+(?:,[0-9]+)*)(?:x(?P<k>[0-9]+))?$")
_CPU_RE = re.compile(r"^cpu:(?P<n>[0-9]+)$")


def parse_slots(spec: str | None, *, cores: int | None = None) -> list[Slot]:
    spec = (spec or "auto").strip().lower()
    cores = cores or os.cpu_count() or 1
    if spec == "auto":
        gpus = visible_gpus()
        if gpus:
            return _gpu_slots(gpus, 1, cores)
        return _cpu_slots(min(cores, 4), cores)
    m = _CPU_RE.match(spec)
    if m:
        n = int(m.group("n"))
        if n < 1:
            raise UsageError(f"slots {spec!r}: need at least one CPU slot", hint="use e.g. --slots cpu:2")
        return _cpu_slots(n, cores)
    m = _GPU_RE.match(spec)
    if m:
        k = int(m.group("k") or 1)
        if k < 1:
            raise UsageError(f"slots {spec!r}: trials per GPU must be ≥ 1", hint="use e.g. --slots gpu:0x2")
        if m.group("ids") == "all":
            ids = visible_gpus()
            if not ids:
                raise UsageError(
                    "slots 'gpu:all': no GPU is visible", hint="use --slots cpu:N on a machine without GPUs"
                )
        else:
            ids = m.group("ids").split(",")
            if len(set(ids)) != len(ids):
                raise UsageError(
                    f"slots {spec!r}: a GPU is listed twice", hint="use gpu:0x2 for two trials per GPU"
                )
        return _gpu_slots(ids, k, cores)
    raise UsageError(
        f"slots {spec!r} is not a slot specification",
        hint="use auto, cpu:N, gpu:0,1, gpu:0x2 (two trials per GPU) or gpu:all",
    )


def _cpu_slots(n: int, cores: int) -> list[Slot]:
    threads = max(1, cores // n)
    return [Slot(id=f"cpu{i}", kind="cpu", threads=threads) for i in range(n)]


def _gpu_slots(ids: list[str], per_gpu: int, cores: int) -> list[Slot]:
    n = len(ids) * per_gpu
    threads = max(1, cores // n)
    slots = []
    for gpu in ids:
        for share in range(per_gpu):
            sid = f"gpu{gpu}" if per_gpu == 1 else f"gpu{gpu}.{share}"
            slots.append(Slot(id=sid, kind="gpu", gpu=gpu, threads=threads))
    return slots
