"""Real services for tests, started by the test itself on loopback ports and stopped after it.

PostgreSQL (the Debian package's binaries: a throwaway cluster), Redis (Debian's `redis-server`) and
processes such as `mlflow server` or Airflow's components, each in its own process group with its
log in a file, so that a failure shows the service's own words.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import psutil


def rest(method: str, url: str, body: dict | None = None, token: str | None = None, timeout: float = 60) -> dict:
    """One JSON request to a REST API (Airflow's), as a user's script makes it: the reply's JSON ({} if empty)."""
    import json

    headers = {"Content-Type": "application/json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    with urllib.request.urlopen(urllib.request.Request(url, data, headers, method=method), timeout=timeout) as reply:
        return json.loads(reply.read() or b"{}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin(name: str) -> str:
    """A PostgreSQL server program (initdb, pg_ctl): on PATH, else the Debian package's folder."""
    found = shutil.which(name)
    if found:
        return found
    for folder in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
        if (folder / name).exists():
            return str(folder / name)
    raise FileNotFoundError(f"{name}: install the Debian package postgresql (apt-get install postgresql)")


def wait_for(what: str, ready: Callable[[], bool], log: Path | None = None, limit_s: float = 180,
              alive: Callable[[], bool] = lambda: True) -> None:
    deadline = time.monotonic() + limit_s
    while not ready():
        tail = log.read_text(errors="replace")[-4000:] if log and log.exists() else ""
        if not alive():
            raise RuntimeError(f"{what} exited before it was ready:\n{tail}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {limit_s:.0f} s:\n{tail}")
        time.sleep(0.5)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, if only to refuse
    except OSError:
        return False


def answers_ok(url: str) -> bool:
    """Whether `url` answers 200 (a server still loading may answer, with another status)."""
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status == 200
    except OSError:  # refused, or an HTTP error status
        return False


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Process:
    """A started service: one process group, its log file."""

    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill_tree(self, sig: int = signal.SIGKILL) -> None:
        """Signal the process and every descendant (tasks may start their own sessions)."""
        try:
            root = psutil.Process(self.popen.pid)
            family = [*root.children(recursive=True), root]
        except psutil.NoSuchProcess:
            family = []
        for proc in family:
            try:
                proc.send_signal(sig)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(family, timeout=30)
        try:
            self.popen.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass

    def stop(self) -> None:
        if self.alive():
            try:
                os.killpg(self.popen.pid, signal.SIGTERM)
                self.popen.wait(timeout=30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                pass
        self.kill_tree(signal.SIGKILL)


def start(name: str, command: list[str], log_dir: Path, env: dict[str, str] | None = None,
          cwd: Path | None = None) -> Process:
    log = log_dir / f"{name}.log"
    with log.open("a") as out:
        popen = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                 env=env, cwd=cwd, start_new_session=True)
    return Process(name, popen, log)


@dataclass
class Services:
    """Everything a test started, stopped in reverse order by `close()`."""

    log_dir: Path
    processes: list[Process] = field(default_factory=list)
    cleanups: list[Callable[[], None]] = field(default_factory=list)

    def add(self, process: Process) -> Process:
        self.processes.append(process)
        return process

    def close(self) -> None:
        for process in reversed(self.processes):
            process.stop()
        for cleanup in reversed(self.cleanups):
            cleanup()


def start_postgres(services: Services, databases: list[str]) -> int:
    """A throwaway PostgreSQL cluster on a free port, trusting loopback; returns the port.

    PostgreSQL refuses to run as root: as root, the cluster belongs to the Debian package's
    `postgres` user, in a folder that user can reach.
    """
    as_root = os.geteuid() == 0
    data_root = Path(tempfile.mkdtemp(prefix="medsql-pg-"))
    services.cleanups.append(lambda: shutil.rmtree(data_root, ignore_errors=True))
    prefix: list[str] = []
    if as_root:
        user = pwd.getpwnam("postgres")
        os.chmod(data_root, 0o755)
        os.chown(data_root, user.pw_uid, user.pw_gid)
        prefix = ["runuser", "-u", "postgres", "--"]
    data, port = data_root / "data", free_port()
    subprocess.run([*prefix, postgres_bin("initdb"), "-D", str(data), "-U", "postgres", "--auth=trust",
                    "-E", "UTF8", "--no-instructions"], check=True, capture_output=True, timeout=120)
    log = data_root / "postgres.log"  # where the server's user can write; copied to the test's logs at the end
    services.cleanups.append(lambda: log.exists() and shutil.copy(log, services.log_dir / "postgres.log"))
    started = subprocess.run([*prefix, postgres_bin("pg_ctl"), "-D", str(data), "-l", str(log), "-w", "-o",
                              f"-p {port} -k {data_root} -c listen_addresses=127.0.0.1 -c fsync=off", "start"],
                             capture_output=True, text=True, timeout=120)
    if started.returncode != 0:
        raise RuntimeError(f"PostgreSQL did not start: {started.stderr}\n"
                           f"{log.read_text() if log.exists() else ''}")
    services.cleanups.append(lambda: subprocess.run(
        [*prefix, postgres_bin("pg_ctl"), "-D", str(data), "-m", "immediate", "stop"], capture_output=True))
    for database in databases:
        subprocess.run(["psql", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", "-v", "ON_ERROR_STOP=1",
                        "-c", f"CREATE DATABASE {database}"], check=True, capture_output=True, timeout=60)
    return port


def start_redis(services: Services) -> int:
    port = free_port()
    server = shutil.which("redis-server")
    if not server:
        raise FileNotFoundError("redis-server: install the Debian package redis-server")
    process = services.add(start("redis", [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                                           "--appendonly", "no"], services.log_dir))
    wait_for("redis", lambda: port_open(port), process.log, 60, process.alive)
    return port
