"""Real components for integration tests, each on loopback and stopped afterwards."""

import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import ray.cloudpickle

from jobs.common import slow_machine_serve

slow_machine_serve()  # for every Ray these tests start (`ray.init` and `ray start` inherit it)


@dataclass(frozen=True)
class KillWorker:
    """A RunSpec.after_step hook: the last worker dies abruptly (no cleanup, no report) at `step`,
    once: it records the death in `marker`, so the restarted group trains on."""

    step: int
    marker: str

    def __call__(self, step: int, rank: int, world: int) -> None:
        if step == self.step and rank == world - 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(step))
            os._exit(1)


# sent to the Ray Train workers by value: they need not import this test package
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout}s")


@pytest.fixture(scope="module")
def s3_server():
    """moto's S3 server process; credentials in the environment (inherited by Ray workers when
    this fixture runs before the module's Ray cluster starts). Yields the endpoint host:port."""
    port = free_port()
    moto = Path(sys.executable).with_name("moto_server")
    proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        wait_for_port(port)
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster per test module (4 logical CPUs: 2 train workers + Ray Data), with
    its Prometheus metrics on a known port (`ray_cluster.metrics_port`), reported every second.
    Modules that use S3 start `s3_server` first (autouse), so workers inherit its credentials."""
    import ray
    port = free_port()
    ray.init(address="local", num_cpus=4, include_dashboard=False, _node_ip_address="127.0.0.1",
             _metrics_export_port=port, _system_config={"metrics_report_interval_ms": 1000})
    ray.metrics_port = port
    yield ray
    ray.shutdown()
