"""Running `anamnesis` commands as real processes for the end-to-end and fault tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import uvicorn

from anamnesis.storage.config import StorageConfig

ANAMNESIS = str(Path(sys.executable).parent / "anamnesis")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def environment(config: StorageConfig, **settings: object) -> dict[str, str]:
    env = {
        **os.environ,
        "ANAMNESIS_HOME": str(config.home),
        "ANAMNESIS_DATABASE_URL": config.database_url,
        "ANAMNESIS_PATIENT_KEY": "process-test-key",
        "ANAMNESIS_MODEL_POLL_S": "0.3",
        "ANAMNESIS_PREDICTION_FLUSH_S": "0.1",
        "ANAMNESIS_WORKER_TICK_S": "0.5",
        "ANAMNESIS_LEASE_TTL_S": "3",
        "ANAMNESIS_STALE_RUN_S": "6",
        "ANAMNESIS_DRIFT_INTERVAL_S": "3600",
        "ANAMNESIS_MAX_LENGTH": "32",
        "ANAMNESIS_TRAINING__MAX_LENGTH": "32",
        "ANAMNESIS_TRAINING__BATCH_SIZE": "8",
        "ANAMNESIS_TRAINING__EPOCHS": "3",
        "ANAMNESIS_TRAINING__LEARNING_RATE": "0.002",
        "ANAMNESIS_TRAINING__MIN_STEPS": "0",
        "PYTHONUNBUFFERED": "1",
    }
    env.update({f"ANAMNESIS_{name.upper()}": str(value) for name, value in settings.items()})
    return env


@contextmanager
def running(
    args: list[str], env: dict[str, str], log: Path, *, port: int | None = None, ready_timeout: float = 90.0
) -> Iterator[subprocess.Popen[bytes]]:
    """Starts an anamnesis process; waits for /healthz when it serves; stops it with SIGTERM."""
    handle = log.open("ab")
    process = subprocess.Popen(
        [ANAMNESIS, *args], env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        if port is not None:
            wait_healthy(port, process, log, ready_timeout)
        yield process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        handle.close()


def wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"process exited early ({process.returncode}):\n{log.read_text()[-4000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"no /healthz on port {port} after {timeout}s:\n{log.read_text()[-4000:]}")


def wait_for(condition, timeout: float, interval: float = 0.3, message: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {message}")


PG_BIN = Path("/usr/lib/postgresql/15/bin")


class PrivatePostgres:
    """A PostgreSQL server of the test's own (initdb into a temporary folder), to stop and restart
    without disturbing the shared server the other tests use."""

    def __init__(self, root: Path, port: int) -> None:
        self.root = root
        self.port = port
        self.data = root / "data"

    def _as_postgres(self, *args: str) -> None:
        subprocess.run(["runuser", "-u", "postgres", "--", *args], check=True, capture_output=True, timeout=120)

    def init(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.root, "postgres", "postgres")
        self.root.chmod(0o700)
        self._as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._as_postgres(
            str(PG_BIN / "pg_ctl"),
            "-D",
            str(self.data),
            "-o",
            options,
            "-l",
            str(self.root / "server.log"),
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"


@contextmanager
def serving_in_thread(app: Any) -> Iterator[int]:
    """The app under uvicorn in a thread (its lifespan runs there), on a free port: the port."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.05)
    try:
        yield port
    finally:
        server.should_exit = True
        thread.join(timeout=30)
