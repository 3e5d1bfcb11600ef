"""Ray Train end to end on a local Ray cluster: 2 CPU workers with gloo, FSDP2, DCP checkpoints."""

import json
import math
import random
import threading
import time
import urllib.request

import boto3
import pytest
import torch

from jobs import finetune, pretrain
from lamda import ray_data as RD
from lamda import ray_train as R
from lamda.checkpoint import export_checkpoint, load_export, save_export
from lamda.data import SAMPLE_DIR
from lamda.storage import S3Location
from tests.integration.conftest import KillWorker

pytestmark = pytest.mark.slow

STEPS, SEQ = 30, 64
TRAIN_FLAGS = ["--preset", "debug", "--workers", "2", "--steps", str(STEPS), "--seq-len", str(SEQ),
               "--batch-size", "8", "--lr", "3e-3", "--checkpoint-every", "10", "--eval-every", "10",
               "--log-every", "5", "--export-shard-mb", "0.1", "--no-cpu-bf16"]
# float32 throughout: each run decides bf16 at its first start by timing its CPU, and the runs
# compared here must compute alike (a busy 2-core CPU can time either way)


@pytest.fixture(scope="module", autouse=True)
def _s3_before_ray(s3_server):
    """The S3 credentials must be in the environment before Ray starts its workers."""


@pytest.fixture(scope="module")
def work(tmp_path_factory, tok):
    d = tmp_path_factory.mktemp("train")
    tok.save(d / "tokenizer.model")
    return d


@pytest.fixture(scope="module")
def bucket(s3_server):
    boto3.client("s3", endpoint_url=f"http://{s3_server}").create_bucket(Bucket="lamda")
    return f"s3://lamda/runs?endpoint_override={s3_server}&scheme=http"


class MetricsPoller(threading.Thread):
    """Reads Ray's Prometheus endpoint every half second and keeps the lamda_train_* lines."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url, self.seen, self.stop = f"http://127.0.0.1:{port}/metrics", set(), threading.Event()

    def run(self):
        while not self.stop.wait(0.5):
            try:
                text = urllib.request.urlopen(self.url, timeout=2).read().decode()
            except OSError:
                continue
            self.seen |= {line.split("{")[0] for line in text.splitlines()
                          if line.startswith("ray_lamda_train_")}


@pytest.fixture(scope="module")
def pretrained(ray_cluster, work):
    poller = MetricsPoller(ray_cluster.metrics_port)
    poller.start()
    result = pretrain.main(["--run-name", "pt", "--tokenizer", str(work / "tokenizer.model"),
                            "--storage-path", str(work / "runs"), *TRAIN_FLAGS])
    time.sleep(2)
    poller.stop.set()
    result.metrics_seen = poller.seen
    return result


def test_training_metrics_reach_rays_prometheus_endpoint(pretrained):
    assert {"ray_lamda_train_loss", "ray_lamda_train_tokens_per_second",
            "ray_lamda_train_tokens_total", "ray_lamda_train_energy_kwh_total"} <= pretrained.metrics_seen


def checkpoint_metrics(result):
    return sorted((m for _, m in result.best_checkpoints), key=lambda m: m["step"])


def test_pretraining_loss_falls_and_parameters_are_sharded(pretrained, tok):
    m = pretrained.metrics
    assert m["step"] == STEPS and m["restarts"] == []
    first = checkpoint_metrics(pretrained)[0]
    assert first["step"] == 20 and m["loss"] < first["loss"] < math.log(tok.vocab_size)
    assert m["eval_loss"] < first["eval_loss"]
    total = R.ModelConfig.from_name("debug", vocab_size=tok.vocab_size).num_params(non_embedding=False)
    assert sum(m["param_shards"]) == total
    assert all(abs(s - total / 2) < 0.05 * total for s in m["param_shards"])  # about half each
    assert m["tokens"] == STEPS * 2 * 8 * SEQ and m["energy_kwh"] > 0


def test_checkpoint_layout_and_export_match(pretrained, work, tmp_path):
    ckpt = pretrained.checkpoint.path
    names = {p.name for p in (work / "runs" / "pt").glob("checkpoint_*/*")}
    assert {".metadata", "__0_0.distcp", "__1_0.distcp", "train_state.json", "config.json",
            "tokenizer.model"} <= names
    assert json.loads(open(f"{ckpt}/train_state.json").read())["step"] == STEPS
    # the end-of-run export (sharded: each rank wrote its files, no full state dict anywhere)
    # equals an offline consolidation into one file
    index = json.loads((work / "runs" / "pt" / "export" / "model.safetensors.index.json").read_text())
    assert len(set(index["weight_map"].values())) >= 4
    end_of_run, _ = load_export(work / "runs" / "pt" / "export")
    export_checkpoint(ckpt, tmp_path / "offline")
    offline, tok2 = load_export(tmp_path / "offline")
    x = torch.randint(0, tok2.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(end_of_run(x), offline(x), atol=0, rtol=0)


def test_finetuning_starts_from_the_pretrained_export(pretrained, work):
    export = str(work / "runs" / "pt" / "export")
    result = finetune.main(["--run-name", "ft", "--init-from", export, "--storage-path",
                            str(work / "runs"), "--workers", "2", "--steps", "10", "--seq-len",
                            str(SEQ), "--checkpoint-every", "5", "--eval-every", "5",
                            "--log-every", "5", "--lr", "1e-3"])
    first = checkpoint_metrics(result)[0]
    # a fresh model starts near log(V); a pre-trained one well below it
    assert first["eval_loss"] < pretrained.metrics["eval_loss"] + 1.0
    assert result.metrics["step"] == 10
    tuned, _ = load_export(work / "runs" / "ft" / "export")
    base, _ = load_export(export)
    assert not torch.equal(tuned.embed.weight, base.embed.weight)


def crash_run(tok, storage, name, marker, export=None, blocks=None, tp=1, steps=STEPS,
              budget=None):
    """The pre-training run of `pretrained`, with its last worker killed at step 15 (none when
    `marker` is None); `blocks`: the training rows cut into that many blocks, each delayed by a
    random time on every pass; `tp` > 1: 2 x tp workers, tensor parallelism inside pairs;
    `budget`: a StepBudget, its minutes counted from now."""
    spec = R.RunSpec(model=R.ModelConfig.from_name("debug", vocab_size=tok.vocab_size),
                     train=R.TrainConfig(steps=steps, batch_size=8, seq_len=SEQ, lr=3e-3,
                                         warmup_steps=3, log_every=5),
                     tokenizer=tok, parallel=R.ParallelConfig(tp=tp, cpu_bf16=False),
                     checkpoint_every=10, eval_every=10, export_to=export,
                     after_step=KillWorker(15, str(marker)) if marker else None,
                     budget=budget or R.StepBudget(), deadline=budget and budget.deadline())
    ds = RD.pretraining_dataset(tok, [str(SAMPLE_DIR / "documents.jsonl")],
                               [str(SAMPLE_DIR / "dialogs.jsonl")], SEQ, 0.5)
    train, evaluation = RD.split_eval(ds, 0.05)
    if blocks:  # blocks that finish out of order, as they do on a busy cluster
        train = train.repartition(blocks).map_batches(
            lambda b: time.sleep(random.random() * 0.05) or b, batch_format="numpy")
    return R.fit(spec, R.ClusterSpec(workers=2 * tp, cpus_per_worker=1 / tp, storage_path=storage,
                                     run_name=name, max_failures=1), train, evaluation)


def losses(result) -> dict[int, float]:
    return {int(r["step"]): r["loss"] for _, r in result.metrics_dataframe.iterrows()}


def test_a_killed_worker_is_replaced_and_training_resumes(pretrained, tok, work):
    result = crash_run(tok, str(work / "runs"), "crash", work / "crashed")
    assert (work / "crashed").read_text() == "15"  # the worker really died at step 15
    m = result.metrics
    assert m["restarts"] == [10] and m["step"] == STEPS
    # same data position and state after the restart: the loss curve is the uninterrupted one
    assert m["loss"] == pytest.approx(pretrained.metrics["loss"], rel=1e-4)


def test_steps_replanned_for_a_deadline_are_kept_by_a_resumed_run(pretrained, tok, work):
    """After `replan_after` steps the run re-plans its steps to end by the deadline (here one
    already past: the floor, 18 steps, not the 200 given). A worker killed at step 15 resumes from
    the checkpoint at 10, which holds the plan: the run ends at 18. Re-planned again (a new
    timing from step 15, at step 20), it would have ended at 21."""
    budget = R.StepBudget(minutes=0.01, replan_after=5, min_steps=18)
    result = crash_run(tok, str(work / "runs"), "deadline", work / "crashed-deadline", steps=200,
                       budget=budget)
    assert (work / "crashed-deadline").read_text() == "15"
    m = result.metrics
    assert m["restarts"] == [10] and m["step"] == m["steps"] == 18


def test_the_replan_times_the_steps_after_the_first_checkpoint(pretrained, tok, work):
    """With a checkpoint within the re-plan's steps (every 10, re-plan after 10), the rate is timed
    from the first log step after it (15), so the steps are re-planned at 25: the checkpoint at 20
    still has the 200 given, the one at 30 ends the run at the floor. Timed from the first log
    step (5), the re-plan would have come at 15, before the checkpoint at 20."""
    budget = R.StepBudget(minutes=0.01, replan_after=10, min_steps=30)
    result = crash_run(tok, str(work / "runs"), "replan", None, steps=200, budget=budget)
    # the checkpoints kept (the last two) with their metrics
    planned = {int(r["step"]): int(r["steps"]) for _, r in result.metrics_dataframe.iterrows()}
    assert planned == {20: 200, 30: 30} and result.metrics["step"] == 30


def test_non_finite_steps_are_skipped_then_the_run_stops_with_a_clear_error(pretrained, tok, work):
    """Weights that make every loss NaN (one NaN in the final norm): each step is skipped on
    both ranks, and after max_nonfinite_steps in a row the run stops and says why."""
    model, _ = load_export(work / "runs" / "pt" / "export")
    state = model.state_dict()
    state["norm.weight"][0] = float("nan")
    save_export(work / "poisoned", state, model.cfg, tok)
    spec = R.RunSpec(model=model.cfg, train=R.TrainConfig(steps=20, batch_size=8, seq_len=SEQ,
                                                          max_nonfinite_steps=3, log_every=5),
                     tokenizer=tok, init_from=str(work / "poisoned"), checkpoint_every=100,
                     eval_every=0)
    ds = RD.pretraining_dataset(tok, [], [str(SAMPLE_DIR / "dialogs.jsonl")], SEQ, 0.5)
    with pytest.raises(R.NonFiniteTraining, match="stopped at step 3: 3 steps in a row.*"
                                                  "none was written"):
        R.fit(spec, R.ClusterSpec(workers=2, storage_path=str(work / "runs"), run_name="nan",
                                  max_failures=0), ds)


def test_resume_is_exact_on_data_of_many_blocks(pretrained, tok, work):
    """The order of the rows is fixed by the seed and the epoch, not by how Ray Data's blocks
    arrive: with 12 blocks, the resumed run's loss curve is the uninterrupted one."""
    whole = crash_run(tok, str(work / "runs"), "blocks", None, blocks=12)
    resumed = crash_run(tok, str(work / "runs"), "blocks-crash", work / "crashed-blocks", blocks=12)
    assert resumed.metrics["restarts"] == [10]
    after = {s: v for s, v in losses(resumed).items() if s > 10}  # the checkpoints' metrics
    assert sorted(after) == [20, 30]
    assert after == pytest.approx({s: losses(whole)[s] for s in after}, rel=1e-5)


def test_a_2x2_mesh_trains_resumes_onto_its_curve_and_exports(pretrained, tok, work):
    """4 workers as 2 (FSDP) x 2 (tensor parallel): the loss falls as with FSDP alone, a killed
    worker resumes onto the uninterrupted curve, and the sharded export loads whole. The curves
    agree to float noise, not bit for bit: one CI machine's differed by 7.7e-5 (relative) ten
    steps after the restart, while the loss of one batch and the next differ by 0.5% or more."""
    whole = crash_run(tok, str(work / "runs"), "tp", None, export=str(work / "tp-export"), tp=2)
    resumed = crash_run(tok, str(work / "runs"), "tp-crash", work / "crashed-tp", tp=2)
    assert resumed.metrics["restarts"] == [10] and whole.metrics["step"] == STEPS
    assert whole.metrics["tokens"] == STEPS * 2 * 8 * SEQ  # two groups' batches per step
    assert whole.metrics["loss"] < pretrained.metrics["loss"] + 0.3
    after = {s: v for s, v in losses(resumed).items() if s > 10}
    assert sorted(after) == [20, 30]
    assert after == pytest.approx({s: losses(whole)[s] for s in after}, rel=1e-3)
    model, _ = load_export(work / "tp-export")
    assert model.blocks[0].attn.q.weight.shape == (model.cfg.d_attn, model.cfg.d_model)


def test_s3_storage_checkpoints_resume_and_export(ray_cluster, tok, bucket, work, s3_server):
    export = bucket.replace("/runs?", "/exports/crash?")
    result = crash_run(tok, bucket, "crash-s3", work / "crashed-s3", export=export)
    assert result.metrics["restarts"] == [10] and result.metrics["step"] == STEPS
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket="lamda", Prefix="runs/crash-s3/")["Contents"]]
    assert any(k.endswith("/.metadata") for k in keys)
    assert any(k.endswith("/__1_0.distcp") for k in keys)
    model, _ = load_export(export)
    ckpt = f"s3://{result.checkpoint.path}?endpoint_override={s3_server}&scheme=http"  # bucket/key
    offline = export_checkpoint(ckpt, work / "from-s3")
    again, _ = load_export(offline)
    assert torch.equal(model.embed.weight, again.embed.weight)


def test_training_reads_s3_data(ray_cluster, tok, bucket, s3_server):
    loc = S3Location.parse(bucket)
    s3 = loc.client()
    s3.upload_file(str(SAMPLE_DIR / "dialogs.jsonl"), "lamda", "data/dialogs.jsonl")
    uri = f"s3://lamda/data/dialogs.jsonl?endpoint_override={s3_server}&scheme=http"
    ds = RD.pretraining_dataset(tok, [], [uri], SEQ, 0.5)
    local = RD.pretraining_dataset(tok, [], [str(SAMPLE_DIR / "dialogs.jsonl")], SEQ, 0.5)
    assert ds.count() == local.count() > 0


def test_missing_or_corrupt_checkpoints_are_clear_errors(pretrained, work, tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint at"):
        export_checkpoint(tmp_path / "nope", tmp_path / "out")
    with pytest.raises(FileNotFoundError):
        finetune.main(["--run-name", "x", "--init-from", str(tmp_path / "nope")])
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(pretrained.checkpoint.path, bad)
    (bad / "train_state.json").unlink()
    with pytest.raises(ValueError, match="missing train_state.json"):
        export_checkpoint(bad, tmp_path / "out")
    shutil.rmtree(bad)
    shutil.copytree(pretrained.checkpoint.path, bad)
    (bad / "__1_0.distcp").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="unreadable checkpoint"):
        export_checkpoint(bad, tmp_path / "out")
    assert not (tmp_path / "out").exists()
