"""jobs.pipeline on a local Ray cluster: every stage, the served check, a re-run, and Ctrl-C."""

import contextlib
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from jobs import pipeline
from lamda.checkpoint import load_export
from tests.integration.conftest import free_port

pytestmark = pytest.mark.slow

ARGS = ["--preset", "debug", "--vocab-size", "1024", "--pretrain-steps", "10", "--finetune-steps",
        "5", "--safe-finetune-steps", "3", "--seq-len", "128", "--tool-data-fraction", "0.05",
        "--eval-per-kind", "1", "--check-per-kind", "2"]


@pytest.fixture(scope="module")
def first_run(ray_cluster, tmp_path_factory):
    """Every stage and the chat server, in this process on the module's Ray cluster:
    (workdir, console output, SIGINT handler before the run)."""
    work = tmp_path_factory.mktemp("pipeline")
    handler = signal.getsignal(signal.SIGINT)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        pipeline.main(["--workdir", str(work), *ARGS, "--serve", "--port", str(free_port())])
    from ray import serve
    serve.shutdown()
    return work, out.getvalue(), handler


def test_pipeline_runs_every_stage_and_skips_finished_ones(first_run, capsys):
    work, out, handler = first_run
    for stage in ("[1/9] retrieval index", "[2/9] tool-use data", "[3/9] tokenizer",
                  "[5/9] fine-tuning", "[6/9] safe-data filtering", "[7/9] fine-tuning on safe data",
                  "[8/9] evaluation", "[9/9] chat server", "held-out questions through POST",
                  "arithmetic", "USER: ", "LAMDA: ", "pipeline done"):
        assert stage in out, stage
    assert "pretrain" in out and "10/10" in out  # the training progress line
    assert signal.getsignal(signal.SIGINT) is handler  # Ray Train's handler is gone after fit
    for name in ("report.json", "grounding.png", "served.json"):
        assert (work / "eval" / name).exists(), name
    served = json.loads((work / "eval" / "served.json").read_text())
    assert len(served["turns"]) == 2 * 5 and "accuracy_arithmetic" in served["metrics"]
    model, tok = load_export(work / "finetuned_safe")
    assert model.cfg.n_layer == 2 and tok.vocab_size == 1024
    assert list((work / "safe_dialogs").glob("*.json*"))
    pipeline.main(["--workdir", str(work), *ARGS])  # again, without serving
    out = capsys.readouterr().out
    assert out.count("exists:") == 8 and "[1/8] retrieval index" in out, out


def running(procs: list[psutil.Process]) -> list[psutil.Process]:
    alive = []
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p)
    return alive


@pytest.mark.timeout(300)
def test_ctrl_c_while_serving_stops_the_pipeline_and_its_local_ray(first_run):
    """`make run` on finished stages: its own local Ray serves until Ctrl-C, which ends it with
    status 130 and leaves none of its processes behind."""
    work, _, _ = first_run
    # lamda.ray_train._Trainer overrides it so that Ctrl-C while training raises KeyboardInterrupt
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
    assert callable(getattr(DataParallelTrainer, "_register_sigint_handler", None))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}  # not the module's cluster
    # as from a terminal's foreground, whatever ran this suite (a background job ignores SIGINT,
    # and so would the pipeline)
    proc = subprocess.Popen(
        [sys.executable, "-u", "-m", "jobs.pipeline", "--workdir", str(work), *ARGS,
         "--check-per-kind", "1", "--serve", "--block", "--port", str(free_port())],
        cwd=Path(__file__).parents[2], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True, start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    ray_procs = []
    try:
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("serving until Ctrl-C"):
                break
        assert lines and lines[-1].startswith("serving until Ctrl-C"), "".join(lines)
        ray_procs = psutil.Process(proc.pid).children(recursive=True)
        assert {"raylet", "gcs_server"} <= {p.name() for p in ray_procs}
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        try:
            rest, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            pytest.fail("still running 30 s after Ctrl-C; it printed: " + proc.communicate()[0][-3000:])
        assert proc.returncode == 130, rest
        assert "interrupted" in rest
        psutil.wait_procs(running(ray_procs), timeout=10)
        assert not running(ray_procs)
    finally:  # checked above; a failure leaves no pipeline or Ray behind for the next modules
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        for p in running(ray_procs):
            p.kill()
