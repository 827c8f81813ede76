"""Processes and their groups: signal a group, end what a trial left behind, die with the parent, reap.

Every process a trial runs in (a fresh one, a warm worker's fork, a daemon's fork) leads its own process group
(its pid is the group's id), so a stop reaches all it started. Standard library only: this runs on remote boxes
before anything else is checked.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

#: seconds a trial's leftover processes get after its main process ended (SIGTERM, then SIGKILL)
ORPHAN_GRACE = 5.0

_SETPRIV = shutil.which("setpriv") if sys.platform.startswith("linux") else None


def kill_group(pgid: int, sig: int) -> bool:
    """Signal a process group (never a lone process of that id); False when the group is gone."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        return False
    return True


def signal_group(pid: int, sig: int) -> None:
    """Signal the group ``pid`` leads, or ``pid`` alone when it leads none (yet)."""
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_group(pgid: int, grace: float, reap: bool = False) -> None:
    """SIGTERM to what is left of process group ``pgid``, SIGKILL once ``grace`` seconds passed with some of it
    still there. Waits (so that a process about to exit leaves nothing behind); returns at once when the group
    is empty.

    ``reap``: the caller is its trials' subreaper (a warm worker), so what they left behind is its child:
    reaped here, never a zombie that looks alive."""
    if not kill_group(pgid, signal.SIGTERM):
        if reap:
            reap_children()
        return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        time.sleep(0.02 if reap else 0.05)
        if reap:
            reap_children()
        if not kill_group(pgid, 0):
            return
    kill_group(pgid, signal.SIGKILL)
    if reap:
        reap_children()


def reap_children() -> None:
    """Collect every ended child (leftovers of finished trials adopted by this process)."""
    with contextlib.suppress(ChildProcessError):
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass


def become_subreaper() -> None:
    """Linux: processes a trial leaves behind are re-parented to this process (PR_SET_CHILD_SUBREAPER), not to
    init, so that ``end_group(…, reap=True)`` can reap them and see its group empty at once."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(36, 1)
    except (OSError, AttributeError):
        pass


def die_with_parent() -> None:
    """In a child: ask Linux to SIGTERM it if its parent dies (SIGKILL included; PR_SET_PDEATHSIG)."""
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def dies_with_parent(
    argv: list[str], env: dict[str, str], cwd: Path
) -> tuple[list[str], Callable[[], None] | None]:
    """The command line and pre-exec hook that make the child die with the controller (PR_SET_PDEATHSIG).

    With util-linux's ``setpriv --pdeathsig`` as the first program, Popen needs no ``preexec_fn`` and can
    use vfork: 2.7 ms a start against 36 ms for a fork of a controller holding 200 MB (measured here), which
    is slot time at every trial start. The program is resolved first, so a missing one is still reported by
    us (exit 127) rather than by setpriv. Without setpriv (not Linux, or a bare image): a ctypes pre-exec hook.
    """
    if _SETPRIV is None or not argv:
        return argv, die_with_parent
    exe = argv[0]
    if os.sep in exe:
        path: str | None = exe if os.path.isabs(exe) else os.path.join(str(cwd), exe)
        if path is not None and not (os.path.isfile(path) and os.access(path, os.X_OK)):
            path = None
    else:
        path = shutil.which(exe, path=env.get("PATH", os.defpath))
    if path is None:
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), exe)
    return [_SETPRIV, "--pdeathsig", "TERM", "--", os.path.abspath(path), *argv[1:]], None


def start_ticks(pid: int) -> str:
    """When ``pid`` started (clock ticks since boot, from /proc): tells a process from a recycled pid; "?": gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as fh:
            return fh.read().rpartition(")")[2].split()[19]
    except (OSError, IndexError):
        return "?"


def redirect(out: int | None, err: int | None) -> None:
    """In a forked trial: stdin from /dev/null, stdout and stderr to ``out`` and ``err`` (their descriptors are
    then closed); None leaves that one as it is."""
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    moved = [null]
    for fd, target in ((out, 1), (err, 2)):
        if fd is not None:
            os.dup2(fd, target)
            moved.append(fd)
    for fd in moved:
        if fd > 2:
            os.close(fd)


def enter(env: dict[str, str], cwd: str) -> None:
    """In a forked trial: exactly ``env`` as its environment, ``cwd`` as its directory."""
    os.environ.clear()
    os.environ.update(env)
    os.chdir(cwd)


def exit_with(body: Callable[..., int], *args: Any, show_errors: bool = False) -> NoReturn:
    """In a forked child: run ``body(*args)``, flush, and ``os._exit`` with its code (1 if it raised; the
    traceback is printed when ``show_errors``). A forked child never returns into its parent's loop."""
    code = 1
    try:
        code = body(*args)
    except BaseException:
        if not show_errors:
            raise
        import traceback

        traceback.print_exc()
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
