"""What the controller says: its log lines and the launch's failure summary, formatted here."""

from __future__ import annotations

import re
from typing import Any


def duration_text(seconds: float) -> str:
    """90 → '90s', 5400 → '1.5h' (how a timeout is said back)."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


def last_line(text: str) -> str:
    """The child's last non-empty stderr line (a traceback's last line names the error), shortened."""
    line = next((ln.strip() for ln in reversed(text.splitlines()) if ln.strip()), "")
    return line if len(line) <= 300 else line[:297] + "..."


def failure_summary(failures: list[dict[str, Any]]) -> list[str]:
    """One line per distinct failure (reason and the child's last stderr line), most frequent first:
    ``3× exit code 3: boom: simulated crash in epoch 1 [crashy: trial(s) 3, 4, 5]``."""
    groups: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for f in failures:
        reason = re.sub(r" in fold \d+", "", str(f.get("reason") or "failed"))
        groups.setdefault((reason, str(f.get("line") or "")), []).append(f)
    lines = []
    for (reason, line), members in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        where = "; ".join(
            f"{sweep}: trial(s) {', '.join(str(m['trial']) for m in members if m['sweep'] == sweep)}"
            for sweep in dict.fromkeys(m["sweep"] for m in members)
        )
        lines.append(f"{len(members)}× {reason}" + (f": {line}" if line else "") + f" [{where}]")
    return lines


def timeout_reason(limit: float, fold: int | None) -> str:
    """A trial that ran longer than its sweep's ``timeout:`` (its failure reason)."""
    where = "" if fold is None else f" (fold {fold})"
    return f"timeout: ran longer than {duration_text(limit)}{where}"


def bad_line_reason(event: dict[str, Any], fold: int | None) -> str:
    """A trial that printed a line that is not a protocol event (its failure reason quotes the line)."""
    where = "" if fold is None else f" (fold {fold})"
    return f"bad protocol line{where}: {event.get('error')}: {event.get('line')}"


def unrecorded(count: int, faults: Any) -> str:
    """An interrupted launch leaves results the storage did not take: where they wait."""
    causes = "; ".join(f"{f.resource} {f.where}: {f.cause}" for f in faults)
    return (
        f"{count} finished result(s) could not be recorded ({causes}): they are kept "
        f"in their run directories (result.json) and the next `orchestrate launch` imports them"
    )


def resumed(number: int, sweep: str, fold: int | None, epoch: Any) -> str:
    """A trial continued from its checkpoint (it says after which epoch)."""
    where = "" if fold is None else f" fold {fold}"
    return f"trial {number} of {sweep}{where} resumed from its checkpoint after epoch {epoch}"


def requeued(lost: str, number: int, sweep: str, resumes: bool) -> str:
    """A job whose host went away goes back to the queue (not a failure)."""
    how = "; it resumes from its checkpoint copied back" if resumes else ""
    return f"{lost}: trial {number} of {sweep} goes back to the queue (not a failure{how})"


def result_waits(sweep: str, number: int, where: str | None) -> str:
    """A finished trial's result waits for the storage: in its run dir (``where``), or in memory only."""
    kept = f"in {where}" if where else "in memory only (the runs dir fails too)"
    return f"[{sweep}] trial {number}: its result waits for the storage, kept {kept}"
