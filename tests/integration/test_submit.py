"""jobs.submit against a cluster started with `ray start --head` (token auth on, as Ray >= 2.59
does by default), on loopback; the job's output file and logs come back."""

import os
import subprocess
import urllib.error
import urllib.request
import sys
from pathlib import Path

import pytest

from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


@pytest.fixture()
def head():
    gcs, dashboard = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # Ray turns token auth on itself
    subprocess.run([str(BIN / "ray"), "start", "--head", f"--port={gcs}", "--num-cpus=2",
                    "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                    f"--dashboard-port={dashboard}", "--include-dashboard=true", "--disable-usage-stats"],
                   env=env, check=True, capture_output=True, timeout=180)
    try:
        yield f"http://127.0.0.1:{dashboard}"
    finally:
        subprocess.run([str(BIN / "ray"), "stop", "--force"], capture_output=True, timeout=120)


def test_submit_runs_a_job_and_follows_its_logs(head, tmp_path):
    out = tmp_path / "tok.model"
    proc = subprocess.run([sys.executable, "-m", "jobs.submit", "--address", head,
                           "--env", "LAMDA_EXAMPLE=1", "train_tokenizer", "--vocab-size", "600",
                           "--out", str(out)], capture_output=True, text=True, timeout=600,
                          cwd=Path(__file__).resolve().parents[2])
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "submitted" in proc.stdout and "tokenizer: 600 pieces" in proc.stdout
    assert "SUCCEEDED" in proc.stdout and out.is_file()


def test_the_cluster_refuses_clients_without_the_token(head):
    """So the submission above really went through Ray's token auth."""
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"{head}/api/jobs/", timeout=30)
    assert e.value.code in (401, 403)
