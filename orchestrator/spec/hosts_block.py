"""``defaults.hosts``: the remote boxes reached over ssh (a list, or the name of a YAML file holding it)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from orchestrator.spec.context import Ctx, kind_of
from orchestrator.spec.model import HostSpec
from orchestrator.spec.yamlio import LineDict, LineList, as_number, load_yaml, plain

HOST_KEYS = (
    "name",
    "ssh",
    "port",
    "identity_file",
    "known_hosts",
    "gpus",
    "per_gpu",
    "workdir",
    "python",
    "cost_per_hour",
    "labels",
    "data_roots",
)
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_HOST_GPUS = re.compile(r"^(auto|cpu:[1-9]\d*|\d+(,\d+)*)$")


def parse_hosts(ctx: Ctx, d: LineDict) -> tuple[HostSpec, ...]:
    """``defaults.hosts``: a list of hosts, or the name of a YAML file holding that list (or ``hosts:``)."""
    ctx, raw, prefix = _hosts_list(ctx, d)
    hosts: list[HostSpec] = []
    seen: dict[str, int | None] = {}
    for i, item in enumerate(raw):
        hosts.append(_parse_host(ctx, item, raw.line_of(i), f"{prefix}[{i}]", seen))
    return tuple(hosts)


def _hosts_list(ctx: Ctx, d: LineDict) -> tuple[Ctx, LineList, str]:
    """The hosts' list, the context it is read in (the hosts file's, for a file name) and its key path."""
    raw = d["hosts"]
    prefix = "defaults.hosts"
    line = d.line_of("hosts")
    if isinstance(raw, str):
        path = Path(raw).expanduser()
        if not path.is_absolute():
            path = ctx.file.parent / path
        if not path.exists():
            ctx.fail(f"no hosts file {raw!r} ({path})", line, prefix, hint="write the hosts list there")
        ctx = Ctx(path, ctx.experiments_dir)
        raw = load_yaml(path)
        prefix, line = "hosts", getattr(raw, "line", 1)
        if isinstance(raw, LineDict):
            ctx.unknown_keys(raw, ("hosts",), "", "the hosts file")
            line = raw.line_of("hosts")
            raw = raw.get("hosts")
    if not isinstance(raw, LineList) or not raw:
        ctx.fail(
            f"hosts must be a non-empty list of hosts, not {kind_of(raw)}",
            line,
            prefix,
            hint="e.g. - {name: box1, ssh: me@10.0.0.5, gpus: auto, workdir: ~/faces}",
        )
    return ctx, raw, prefix


def _parse_host(ctx: Ctx, item: Any, line: int | None, key: str, seen: dict[str, int | None]) -> HostSpec:
    """One host; ``seen``: the names so far (and their lines), this one added."""
    h = ctx.mapping(item, line, key, f"'{key}'")
    ctx.unknown_keys(h, HOST_KEYS, key, "a host")
    name = ctx.string(h, "name", key, optional=False) or ""
    if not _HOST_NAME.match(name):
        ctx.fail(
            f"invalid host name {name!r}", h.line_of("name"), f"{key}.name", hint="letters, digits, - _ ."
        )
    if name in seen or name == "local":
        ctx.fail(
            f"duplicate host name {name!r}" + (f" (first on line {seen[name]})" if name in seen else ""),
            h.line_of("name"),
            f"{key}.name",
            hint="give every host its own name ('local' is this machine)",
        )
    seen[name] = h.line_of("name")
    dest = ctx.string(h, "ssh", key, optional=False) or ""
    if not dest or dest.startswith("-") or any(c.isspace() for c in dest):
        ctx.fail(f"invalid ssh destination {dest!r}", h.line_of("ssh"), f"{key}.ssh", hint="use user@host")
    port = ctx.integer(h, "port", key, minimum=1)
    if port is not None and port > 65535:
        ctx.fail(f"port {port} is out of range", h.line_of("port"), f"{key}.port")
    gpus = _host_gpus(ctx, h, key)
    cost = ctx.number(h, "cost_per_hour", key)
    labels = _words(ctx, h, "labels", key, "labels must be a list of words")
    roots = _words(ctx, h, "data_roots", key, "data_roots must be a list of paths")
    return HostSpec(
        name=name,
        ssh=dest,
        port=port,
        identity_file=ctx.string(h, "identity_file", key),
        known_hosts=ctx.string(h, "known_hosts", key),
        gpus=gpus,
        per_gpu=ctx.integer(h, "per_gpu", key, minimum=1) or 1,
        workdir=ctx.string(h, "workdir", key) or "~/orchestrate",
        python=ctx.string(h, "python", key) or "python3",
        cost_per_hour=None if cost is None else float(cost),
        labels=labels,
        data_roots=roots,
        line=line,
    )


def _host_gpus(ctx: Ctx, h: LineDict, key: str) -> str | tuple[str, ...]:
    """``gpus:``: auto, cpu:N, or GPU indices (a list, or ``0,1``)."""
    gpus_raw = h.get("gpus", "auto")
    if isinstance(gpus_raw, LineList):
        if not gpus_raw or not all(
            as_number(g) is not None and float(as_number(g) or 0).is_integer() for g in gpus_raw
        ):
            ctx.fail("gpus must list GPU indices, e.g. [0, 1]", h.line_of("gpus"), f"{key}.gpus")
        return tuple(str(int(as_number(g) or 0)) for g in gpus_raw)
    text = str(plain(gpus_raw)).strip().lower().replace(" ", "")
    if not _HOST_GPUS.match(text):
        ctx.fail(
            f"invalid gpus {gpus_raw!r}",
            h.line_of("gpus"),
            f"{key}.gpus",
            hint="use auto, a list of GPU indices like [0, 1], or cpu:N for a box without GPUs",
        )
    return text if text == "auto" or text.startswith("cpu:") else tuple(text.split(","))


def _words(ctx: Ctx, h: LineDict, k: str, key: str, message: str) -> tuple[str, ...]:
    """``labels`` / ``data_roots``: one word or a list of them."""
    words = h.get(k) or []
    if isinstance(words, str):
        words = [words]
    if not isinstance(words, list) or not all(isinstance(x, str) for x in words):
        ctx.fail(message, h.line_of(k), f"{key}.{k}")
    return tuple(str(x) for x in words)
