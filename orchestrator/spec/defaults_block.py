"""``defaults:``: what every sweep of the file shares (storage, slots, W&B mode, hosts, Slurm …)."""

from __future__ import annotations

import re
from typing import Any

from orchestrator.leases import MIN_LEASE_S
from orchestrator.spec.context import Ctx, join_key
from orchestrator.spec.hosts_block import parse_hosts
from orchestrator.spec.model import WANDB_MODES, Defaults
from orchestrator.spec.slurm_block import parse_slurm
from orchestrator.spec.yamlio import LineDict

DEFAULT_KEYS = (
    "project",
    "entity",
    "storage",
    "runs_dir",
    "slots",
    "wandb",
    "retries",
    "data_root",
    "hosts",
    "lease",
    "slurm",
)
_SLOTS = re.compile(r"^(auto|hosts|slurm|cpu:[1-9]\d*|gpu:(all|\d+)(x[1-9]\d*)?(,\d+(x[1-9]\d*)?)*)$")


def parse_defaults(ctx: Ctx, raw: Any, line: int | None) -> Defaults:
    if raw is None:
        return Defaults()
    d = ctx.mapping(raw, line, "defaults", "'defaults'")
    ctx.unknown_keys(d, DEFAULT_KEYS, "defaults", "'defaults'")
    base = Defaults()
    slots = ctx.string(d, "slots", "defaults") or base.slots
    if not _SLOTS.match(slots):
        ctx.fail(
            f"invalid slots '{slots}'",
            d.line_of("slots"),
            "defaults.slots",
            hint="use auto, cpu:N, gpu:0,1 (GPU ids), gpu:0x2 (2 trials on GPU 0), hosts (only defaults.hosts) "
            "or slurm (jobs on a Slurm cluster, see defaults.slurm)",
        )
    storage = ctx.string(d, "storage", "defaults") or base.storage
    runs_dir = ctx.string(d, "runs_dir", "defaults") or base.runs_dir
    wandb = wandb_mode(ctx, d, "defaults") or base.wandb
    retries = ctx.integer(d, "retries", "defaults", minimum=0)
    lease = ctx.number(d, "lease", "defaults")
    if lease is not None and lease < MIN_LEASE_S:
        ctx.fail(
            f"must be at least {MIN_LEASE_S:g} (seconds), not {lease}",
            d.line_of("lease"),
            "defaults.lease",
            hint="the seconds a controller sharing the storage may stay silent before another takes its "
            "trials over; 30 is the default",
        )
    return Defaults(
        project=ctx.string(d, "project", "defaults"),
        entity=ctx.string(d, "entity", "defaults"),
        storage=storage,
        runs_dir=runs_dir,
        slots=slots,
        wandb=wandb,
        retries=base.retries if retries is None else retries,
        data_root=ctx.string(d, "data_root", "defaults"),
        hosts=parse_hosts(ctx, d) if d.get("hosts") is not None else (),
        lease=base.lease if lease is None else float(lease),
        slurm=parse_slurm(ctx, d, "defaults", None) if d.get("slurm") is not None else None,
    )


def wandb_mode(ctx: Ctx, d: LineDict, prefix: str) -> str | None:
    if "wandb" not in d or d["wandb"] is None:
        return None
    value = d["wandb"]
    if not isinstance(value, str) or value not in WANDB_MODES:
        hint = "use one of: " + ", ".join(WANDB_MODES)
        if isinstance(value, bool):
            hint += " (YAML reads off/no/false as a boolean: write 'disabled')"
        ctx.fail(f"invalid wandb mode {value!r}", d.line_of("wandb"), join_key(prefix, "wandb"), hint)
    return value
