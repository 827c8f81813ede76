"""Real services on loopback for the remote tests: two sshd ("rented boxes") and one PostgreSQL server.

Each sshd listens on 127.0.0.1 on its own free port, with a generated host key (a test ``known_hosts`` lists
it: host keys stay verified) and a generated user key as its only ``AuthorizedKeysFile``. PostgreSQL runs from
``initdb`` in a temp dir as user ``postgres``. Both are stopped at teardown. The tests are skipped (with the
reason) only when the binaries are absent; ``.ci/setup`` installs them.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SSHD = shutil.which("sshd") or ("/usr/sbin/sshd" if os.path.exists("/usr/sbin/sshd") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_port(port: int, timeout: float = 15.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on 127.0.0.1:{port}")


def descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (sshd's session processes call setsid, so a process group is not enough)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="ascii", errors="replace") as fh:
                ppid = int(fh.read().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


@dataclass
class SSHBox:
    """One sshd on 127.0.0.1 standing in for a rented box."""

    name: str
    port: int
    root: Path  # its temp dir: config, host key, log, and the box's workdir
    key: Path  # the user's private key
    known_hosts: Path
    proc: subprocess.Popen[bytes] | None = None
    config: Path = field(init=False)

    def __post_init__(self) -> None:
        self.config = self.root / "sshd_config"

    @property
    def dest(self) -> str:
        return f"{getpass.getuser()}@127.0.0.1"

    @property
    def workdir(self) -> Path:
        return self.root / "work"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [SSHD, "-D", "-f", str(self.config), "-E", str(self.root / "sshd.log")],
            start_new_session=True,
        )
        _wait_port(self.port)

    def kill(self) -> None:
        """The box dies: sshd, every session and every process started through it, at once."""
        if self.proc is None:
            return
        pids = [self.proc.pid, *descendants(self.proc.pid)]
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

    def freeze(self, sig: int = signal.SIGSTOP) -> None:
        """The box stops answering (SIGSTOP on sshd and everything below it; SIGCONT thaws it): the TCP
        connections stay open, so only keep-alives can tell."""
        assert self.proc is not None
        for pid in [self.proc.pid, *descendants(self.proc.pid)]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)

    def host_yaml(self, *, slots: int = 1, python: str | None = None, extra: str = "") -> str:
        """One item of ``defaults.hosts:`` for this box (indent it where it goes)."""
        return (
            f"- name: {self.name}\n"
            f"  ssh: {self.dest}\n"
            f"  port: {self.port}\n"
            f"  identity_file: {self.key}\n"
            f"  known_hosts: {self.known_hosts}\n"
            f"  gpus: cpu:{slots}\n"
            f"  workdir: {self.workdir}\n"
            f"  python: {python or sys.executable}\n" + extra
        )

    def ssh(self, *cmd: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "BatchMode=yes",
             "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
             self.dest, *cmd],
            capture_output=True, text=True, timeout=timeout, check=False,
        )  # fmt: skip


def _keygen(path: Path) -> None:
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "orchestrate-test", "-f", str(path)], check=True
    )


def have_sshd() -> bool:
    return SSHD is not None and bool(shutil.which("ssh")) and bool(shutil.which("ssh-keygen"))


@contextlib.contextmanager
def sshd_boxes(names: tuple[str, ...] = ("boxa", "boxb"), extra_config: str = "") -> Iterator[list[SSHBox]]:
    """sshd on 127.0.0.1, one port per name, a user key and a known_hosts listing their host keys.

    ``extra_config``: more sshd_config lines (e.g. ``SetEnv PATH=…`` to give a box its own programs)."""
    assert SSHD is not None
    # short path: ssh's ControlPath sockets must fit in 108 bytes
    base = Path(tempfile.mkdtemp(prefix="orch-sshd-", dir="/tmp"))
    key = base / "id_ed25519"
    _keygen(key)
    known = base / "known_hosts"
    if os.geteuid() == 0:
        Path("/run/sshd").mkdir(parents=True, exist_ok=True)  # privilege separation dir
    boxes = []
    lines = []
    for name in names:
        root = base / name
        root.mkdir()
        (root / "work").mkdir()
        _keygen(root / "host_key")
        box = SSHBox(name=name, port=free_port(), root=root, key=key, known_hosts=known)
        box.config.write_text(
            f"ListenAddress 127.0.0.1:{box.port}\n"
            f"HostKey {root / 'host_key'}\n"
            f"PidFile {root / 'sshd.pid'}\n"
            f"AuthorizedKeysFile {key}.pub\n"
            "UsePAM no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\n"
            "StrictModes no\nPermitRootLogin prohibit-password\nPubkeyAuthentication yes\n"
            "LogLevel ERROR\nMaxSessions 64\nMaxStartups 64:30:128\n" + extra_config
        )
        pub = (root / "host_key.pub").read_text().split()
        lines.append(f"[127.0.0.1]:{box.port} {pub[0]} {pub[1]}\n")
        boxes.append(box)
    known.write_text("".join(lines))
    try:
        for box in boxes:
            box.start()
        yield boxes
    finally:
        for box in boxes:
            box.kill()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def ssh_boxes() -> Iterator[list[SSHBox]]:
    """Two sshd on 127.0.0.1 (two ports) standing in for two rented boxes."""
    if not have_sshd():
        pytest.skip("openssh-server/openssh-client not installed (.ci/setup installs them)")
    with sshd_boxes() as boxes:
        yield boxes


def _pg_bin() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return versions[-1].parent if versions else None


class PostgresServer:
    """A real PostgreSQL server on 127.0.0.1 from ``initdb`` in a temp dir (trust auth), which a test may stop
    and start again (a database going away mid-sweep). ``url(name)`` creates a database and gives its URL."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.base = Path(tempfile.mkdtemp(prefix="orch-pg-", dir="/tmp"))
        self.data = self.base / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            shutil.chown(self.base, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run(
            str(bindir / "initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8"
        )

    def _run(self, *cmd: str) -> None:
        subprocess.run([*self.as_user, *cmd], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        self._run(
            str(self.bindir / "pg_ctl"), "-D", str(self.data), "-l", str(self.base / "pg.log"), "-o",
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.base} -c fsync=off -c max_connections=200",
            "-w", "start",
        )  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        """``fast``: clients are disconnected, as when an admin restarts the server; ``immediate``: a crash."""
        self._run(str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop")

    def url(self, name: str) -> str:
        self._run(
            str(self.bindir / "createdb"), "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", name
        )
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.base, ignore_errors=True)


def postgres_server() -> PostgresServer:
    """A started server, or a skip (with the reason) when PostgreSQL or psycopg2 is not installed."""
    bindir = _pg_bin()
    if bindir is None:
        pytest.skip("postgresql not installed (.ci/setup installs it)")
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        pytest.skip("psycopg2 not installed")
    server = PostgresServer(bindir)
    try:
        server.start()
    except BaseException:
        server.close()
        raise
    return server


@pytest.fixture(scope="session")
def postgres_url():
    """A real PostgreSQL server on 127.0.0.1 (trust auth, temp dir); yields a factory of fresh databases."""
    server = postgres_server()
    try:
        yield server.url
    finally:
        server.close()
