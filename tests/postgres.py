"""A real PostgreSQL server for tests (Debian's `postgresql` package): a fresh cluster in a
temporary directory, listening on loopback only, run as an unprivileged user (PostgreSQL refuses
to run as root), stopped and removed afterwards. `stop()` and `start()` simulate an outage."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path


def bin_dir() -> Path:
    """The newest installed server's binaries (/usr/lib/postgresql/<version>/bin on Debian)."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]))
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("postgres")
    if on_path:
        return Path(on_path).parent
    raise FileNotFoundError("PostgreSQL is not installed (Debian: apt-get install postgresql; "
                            "`make test` installs it)")


class PostgresServer:
    def __init__(self, port: int, user: str = "lamda"):
        self.port, self.user, self.bin = port, user, bin_dir()
        self.dir = Path(tempfile.mkdtemp(prefix="lamda-pg-"))
        self.data = self.dir / "data"
        self.proc: subprocess.Popen | None = None
        self._as = None
        if os.geteuid() == 0:  # run as the package's `postgres` user, else nobody
            name = "postgres" if _user_exists("postgres") else "nobody"
            pw = pwd.getpwnam(name)
            os.chown(self.dir, pw.pw_uid, pw.pw_gid)
            self._as = (pw.pw_uid, pw.pw_gid)
        self._run([str(self.bin / "initdb"), "-D", str(self.data), "-U", user, "-A", "trust",
                   "-E", "UTF8", "--no-sync"])

    @property
    def url(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/postgres"

    def _drop_privileges(self):
        if self._as:
            os.setgid(self._as[1])
            os.setuid(self._as[0])

    def _run(self, cmd: list[str]) -> None:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=120,
                             preexec_fn=self._drop_privileges, cwd=self.dir)
        if out.returncode:
            raise RuntimeError(f"{cmd[0]} failed: {out.stdout[-1000:]}{out.stderr[-1000:]}")

    def start(self, timeout: float = 60.0) -> None:
        self.proc = subprocess.Popen(
            [str(self.bin / "postgres"), "-D", str(self.data), "-h", "127.0.0.1",
             "-p", str(self.port), "-k", str(self.dir), "-c", "fsync=off",
             "-c", "max_connections=100"],
            stdout=subprocess.DEVNULL, stderr=open(self.dir / "server.log", "ab"),
            preexec_fn=self._drop_privileges, cwd=self.dir)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = subprocess.run([str(self.bin / "pg_isready"), "-h", "127.0.0.1", "-p",
                                    str(self.port), "-U", self.user], capture_output=True)
            if ready.returncode == 0:
                return
            if self.proc.poll() is not None:
                break
            time.sleep(0.2)
        raise RuntimeError(f"PostgreSQL did not start: {(self.dir / 'server.log').read_text()[-2000:]}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # fast shutdown: clients disconnected
            self.proc.wait(timeout=60)
        self.proc = None

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False
