"""``slurm:`` in ``defaults`` or in a sweep: the Slurm job of every trial."""

from __future__ import annotations

import re
import shlex
from dataclasses import replace
from typing import Any

from orchestrator.spec.context import Ctx, join_key, kind_of
from orchestrator.spec.model import SlurmSpec
from orchestrator.spec.yamlio import LineDict, LineList, plain

SLURM_KEYS = (
    "partition",
    "account",
    "qos",
    "time",
    "gres",
    "cpus_per_trial",
    "mem_per_trial",
    "max_concurrent",
    "srun_flags",
)
_SLURM_WORD = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.,:+-]*$")
_SLURM_TIME = re.compile(
    r"^(\d+|\d+:\d{1,2}|\d+:\d{1,2}:\d{1,2}|\d+-\d+|\d+-\d+:\d{1,2}|\d+-\d+:\d{1,2}:\d{1,2}|infinite|unlimited)$"
)
_SLURM_GRES = re.compile(
    r"^[A-Za-z_][A-Za-z0-9_-]*(:[A-Za-z0-9_.-]+)*(,[A-Za-z_][A-Za-z0-9_-]*(:[A-Za-z0-9_.-]+)*)*$"
)
_SLURM_MEM = re.compile(r"^[1-9]\d*[KMGT]?$")
#: set by orchestrate for every trial's job: a flag of srun_flags must not change them
_SLURM_OWN = ("-J", "--job-name", "--comment", "-o", "--output", "-i", "--input", "-D", "--chdir")


def parse_slurm(ctx: Ctx, d: LineDict, prefix: str, base: SlurmSpec | None) -> SlurmSpec:
    """``slurm:`` in ``defaults`` (``base`` None) or in a sweep (over ``base``, the defaults' block)."""
    key = join_key(prefix, "slurm")
    s = ctx.mapping(d["slurm"], d.line_of("slurm"), key, f"'{key}'")
    ctx.unknown_keys(s, SLURM_KEYS, key, "'slurm'")
    out = base or SlurmSpec()
    changes: dict[str, Any] = {"line": s.line or d.line_of("slurm")}
    for k in ("partition", "account", "qos"):
        if k in s:
            value = ctx.string(s, k, key)
            if value is not None and not _SLURM_WORD.match(value):
                ctx.fail(f"invalid {k} {value!r}", s.line_of(k), f"{key}.{k}", hint="a Slurm name: no spaces")
            changes[k] = value
    if "time" in s and s["time"] is not None:
        changes["time"] = _slurm_time(ctx, s, key)
    if "gres" in s:
        changes["gres"] = _slurm_gres(ctx, s, key)
    if "cpus_per_trial" in s:
        changes["cpus_per_trial"] = ctx.integer(s, "cpus_per_trial", key, minimum=1)
    if "mem_per_trial" in s and s["mem_per_trial"] is not None:
        changes["mem_per_trial"] = _slurm_mem(ctx, s, key)
    if "max_concurrent" in s:
        if base is not None:
            ctx.fail(
                "max_concurrent is one number for the whole launch",
                s.line_of("max_concurrent"),
                f"{key}.max_concurrent",
                hint="set it in defaults.slurm",
            )
        n = ctx.integer(s, "max_concurrent", key, minimum=1)
        if n is not None:
            changes["max_concurrent"] = n
    if "srun_flags" in s and s["srun_flags"] is not None:
        changes["srun_flags"] = _srun_flags(ctx, s, key)
    return replace(out, **changes)


def _slurm_time(ctx: Ctx, s: LineDict, key: str) -> str:
    raw = s["time"]
    text = str(plain(raw)).strip().lower()
    if isinstance(raw, bool) or not _SLURM_TIME.match(text):
        ctx.fail(
            f"invalid time limit {raw!r}",
            s.line_of("time"),
            f"{key}.time",
            hint="Slurm's --time: minutes (90), HH:MM:SS (01:30:00) or D-HH:MM:SS (1-12:00:00)",
        )
    return text


def _slurm_gres(ctx: Ctx, s: LineDict, key: str) -> str | None:
    raw = s["gres"]
    if raw is None or raw is False or (isinstance(raw, str) and raw.strip().lower() in ("none", "")):
        return None
    if not isinstance(raw, str) or not _SLURM_GRES.match(raw.strip()):
        ctx.fail(
            f"invalid gres {raw!r}",
            s.line_of("gres"),
            f"{key}.gres",
            hint="per trial, e.g. gpu:1, gpu:a100:1 or gpu:1,shard:2; 'none' for CPU-only trials",
        )
    return raw.strip()


def _slurm_mem(ctx: Ctx, s: LineDict, key: str) -> str:
    raw = s["mem_per_trial"]
    text = str(plain(raw)).strip().upper().removesuffix("B")
    if isinstance(raw, bool) or not _SLURM_MEM.match(text):
        ctx.fail(
            f"invalid memory {raw!r}",
            s.line_of("mem_per_trial"),
            f"{key}.mem_per_trial",
            hint="Slurm's --mem: 16G, 4000M, or a number of megabytes",
        )
    return text


def _srun_flags(ctx: Ctx, s: LineDict, key: str) -> tuple[str, ...]:
    """``srun_flags``: a list of flags or one shell-like line; none may change what orchestrate sets."""
    raw = s["srun_flags"]
    flags: list[str]
    if isinstance(raw, str):
        try:
            flags = shlex.split(raw)
        except ValueError as exc:
            ctx.fail(f"cannot split srun_flags: {exc}", s.line_of("srun_flags"), f"{key}.srun_flags")
    elif isinstance(raw, LineList) and all(isinstance(x, (str, int, float)) for x in raw):
        flags = [str(plain(x)) for x in raw]
    else:
        ctx.fail(
            f"srun_flags must be a list of flags or one line, not {kind_of(raw)}",
            s.line_of("srun_flags"),
            f"{key}.srun_flags",
            hint='e.g. srun_flags: ["--constraint=a100", "--exclusive"]',
        )
    for flag in flags:
        name = flag.split("=", 1)[0]
        if name in _SLURM_OWN or (name.startswith("-J") and not name.startswith("--")):
            ctx.fail(
                f"srun_flags: {flag!r} is set by orchestrate for every trial",
                s.line_of("srun_flags"),
                f"{key}.srun_flags",
                hint="job names and comments identify the launch's jobs (orphans are found by them); "
                "remove the flag",
            )
    return tuple(flags)
