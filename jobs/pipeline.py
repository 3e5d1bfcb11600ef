"""The LaMDA pipeline as one job: retrieval index -> tool-use data -> tokenizer -> pre-training ->
fine-tuning -> safe-data filtering -> second fine-tuning -> evaluation against held-out questions
-> the chat server, checked over HTTP on the held-out questions (with example turns).

    python -m jobs.pipeline [--workdir runs/local] [--preset tiny] [--workers 2] [--serve --block]
    ray job submit --working-dir . -- python -m jobs.pipeline --workers 4 --gpus-per-worker 1

Each stage prints a progress line and is skipped when its output exists; training stages resume
from their latest checkpoint (delete the workdir to start over). Runs on the Ray cluster of
`ray job submit`, or on a local Ray started for the job. Ctrl-C stops it at any stage (exit status
130), and stops the chat app and the local Ray if the job started them.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path

from jobs import evaluate, filter_safe, finetune, pretrain, tool_data, train_tokenizer
from jobs.common import init_ray, shutdown_ray
from jobs.flags import parse
from lamda import eval as E
from lamda.cluster import ClusterSpec
from lamda.config import PRESETS
from lamda.data import SAMPLE_DIR
from lamda.safety_filter import FilterConfig
from lamda.tool_data import element_symbols, read_questions
from lamda.training import StepBudget
from lamda.tools import retrieval


# Training budget of the embedded default (`tiny` on one 2-CPU worker): see bench/RESULTS.md for the
# held-out accuracy these reach and the curve against steps. The fine-tuning's steps are, unless
# given, as many as end the pipeline within --minutes (finetune_budget).
PRETRAIN_STEPS, SAFE_FINETUNE_STEPS = 20, 30
MIN_FINETUNE_STEPS = 200  # however slow the machine (at 1.9 s a step of rows of 256 tokens, 250
#                            ended the pipeline at 966 s)
MAX_FINETUNE_STEPS = 1800  # however fast (the longest curve of bench/RESULTS.md)
FINETUNE_WARMUP = 40  # learning-rate warm-up steps (a tenth of the ~450 steps that fit here)
# the time of what follows the fine-tuning's steps, in its steps: its export, safe-data
# filtering, the fine-tuning on safe data, evaluation and the served check took 215 s and 225 s
# after steps of 1.23 s and 1.25 s in two runs on the 2-core machine of bench/RESULTS.md (175-180
# steps), and 268 s after steps of 1.9 s with the served check sending 4 questions at a time,
# where 150 steps ended the pipeline at 902 s: the fine-tuning's own end (its last checkpoint and
# export) comes on top; mostly model work, so it scales with the step time. Those steps were of
# rows of 256 tokens; in the Ray Train loop a step of rows of 128 (finetune_seq_len) takes about
# 0.9 of one (bench/RESULTS.md, "Rows of 128 tokens"), and 260 steps of it ended at 759 s. On
# one worker (ONE_WORKER), 200 steps of 0.85 s ended the pipeline at 812 s (what follows the
# steps took about 140 s)
RESERVE_STEPS = 200
# one Ray Train worker with both CPUs: on the 2-core machine its steps were 1.14x (fine-tuning
# rows) and 1.10x (pre-training rows) as fast as two one-CPU workers', whose FSDP2 gathers and
# reductions over gloo wait for each other block by block (bench/RESULTS.md, "One worker with
# both CPUs"); --workers N --cpus-per-worker M for a larger machine or cluster
ONE_WORKER = ClusterSpec(workers=1, cpus_per_worker=2.0)


@dataclass(frozen=True, kw_only=True)
class PipelineJob:
    """The flags of jobs.pipeline."""

    workdir: Path = Path("runs/local")  # outputs of every stage
    data_dir: Path = SAMPLE_DIR  # corpus (the bundled sample)
    preset: str = field(default="tiny", metadata={"choices": list(PRESETS)})  # model size
    vocab_size: int = 4096  # tokenizer vocabulary
    max_piece_length: int = 5  # longest tokenizer piece: names the tool data repeats (elements)
    #                            stay several pieces, as unseen ones are (bench/RESULTS.md)
    cluster: ClusterSpec = field(default=ONE_WORKER,
                                 metadata={"skip": ("storage_path", "run_name")})  # in the workdir
    pretrain_steps: int = PRETRAIN_STEPS  # pre-training steps
    finetune_steps: int = 0  # fine-tuning steps (0: as many as fit `minutes`)
    minutes: float = 14.0  # with finetune_steps 0: the time the stages may take in all (the
    #                        fine-tuning gets what the others leave, at its own rate)
    safe_finetune_steps: int = SAFE_FINETUNE_STEPS  # steps of the fine-tuning on safe data
    finetune_lr: float = 2e-3  # peak learning rate of the fine-tuning (tiny learns tool use at 2e-3)
    safe_finetune_lr: float = 2e-4  # peak learning rate of the fine-tuning on safe data: it goes on
    #                                 from the first, which ended at a tenth of its peak
    top_fraction: float = 0.5  # safe-data filtering keeps this
    batch_size: int = 16  # pre-training rows a step, dealt among the workers (the fine-tunings
    #                       take as many tokens a step)
    seq_len: int = 256  # pre-training tokens per row
    finetune_seq_len: int = 128  # fine-tuning tokens per row, each row packed with several
    #                              examples: 99.8% of the tool-use examples fit (the rest are left
    #                              out), and a shorter row costs attention less per token
    tool_data_fraction: float = 1.0  # scale of the tool-use training split (1: about 12,000 transcripts)
    eval_per_kind: int = 4  # held-out questions of each kind in the evaluation stage
    check_per_kind: int = 20  # held-out questions of each kind sent to the served app (with --serve)
    check_clients: int = 4  # of those, sent at a time (the app batches concurrent conversations)
    serve: bool = False  # finish by deploying the chat app
    block: bool = False  # with --serve: keep serving until Ctrl-C
    port: int = 8000  # HTTP port of the chat app (127.0.0.1)
    address: str | None = None  # Ray address (default: the job's cluster or a local Ray)


def finetune_budget(job: "PipelineJob", elapsed_s: float) -> tuple[int, StepBudget]:
    """The fine-tuning's steps and time limit, `elapsed_s` into the pipeline: `job.finetune_steps`,
    or the steps that end the pipeline within `job.minutes`, re-planned by the fine-tuning from its
    own rate over 50 steps after its first checkpoint (a resumed fine-tuning keeps them)."""
    if job.finetune_steps:
        return job.finetune_steps, StepBudget()
    left_s = max(1.0, job.minutes * 60 - elapsed_s)  # a past deadline: the floor of steps
    return MAX_FINETUNE_STEPS, StepBudget(minutes=left_s / 60, min_steps=MIN_FINETUNE_STEPS,
                                          reserve_steps=RESERVE_STEPS)


def pretrain_rows(job: "PipelineJob") -> dict[str, int]:
    """The pre-training's rows per worker: `batch_size` a step, dealt among the workers."""
    return {"batch_size": per_worker(job.batch_size, job.cluster.workers), "seq_len": job.seq_len}


def finetune_rows(job: "PipelineJob") -> dict[str, int]:
    """The fine-tunings' rows per worker: `finetune_seq_len` tokens (at most the pre-training's),
    as many a step as give the pre-training's tokens a step."""
    seq_len = min(job.seq_len, job.finetune_seq_len)
    rows = max(1, job.batch_size * job.seq_len // seq_len)
    return {"batch_size": per_worker(rows, job.cluster.workers), "seq_len": seq_len}


def per_worker(rows: int, workers: int) -> int:
    """`rows` a step dealt evenly among `workers`."""
    if rows % workers:
        raise ValueError(f"{rows} rows a step do not deal evenly among {workers} workers; give "
                         f"--batch-size a multiple of --workers")
    return rows // workers


def deploy(work: Path, port: int) -> str:
    """The chat app from serve_apps/chat.yaml's settings, on this run's models; returns its URL."""
    from ray import serve

    from serve_apps.app import build_app, yaml_options
    logging.getLogger("ray.serve").setLevel(logging.WARNING)  # the replicas log to Ray's logs
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"model": str(work / "finetuned_safe"), "index": str(work / "index.sqlite"),
                         "conversations": str(work / "conversations.sqlite")}, yaml_options()),
              name="lamda", route_prefix="/")
    return f"http://127.0.0.1:{port}"


def build_index(index: Path, data: Path) -> None:
    """The retrieval index: the bundled documents and Debian's dict-elements."""
    retrieval.build_index(index, [data / "documents.jsonl"], ["elements"])


def complete(out: Path, build) -> None:
    """`build(tmp)`, then move tmp to `out`: an interrupted stage leaves no partial output that
    the next run would take for a finished one."""
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.unlink(missing_ok=True)
    build(tmp)
    tmp.rename(out)


def served_check(url: str, questions: Path, per_kind: int, out: Path, clients: int = 4) -> dict:
    """Held-out questions through the served POST /chat (model "lamda"), `clients` at a time,
    graded against their known answers; prints the figures and one example turn per tool, writes
    `out`."""
    import httpx

    def ask(q):
        r = httpx.post(f"{url}/chat", json={"message": q.text, "model": "lamda", "trace": True},
                       timeout=300)
        r.raise_for_status()
        return r.json()

    sample = evaluate.sample_questions(read_questions(questions), per_kind)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        bodies = list(pool.map(ask, sample))
    seconds = time.perf_counter() - t0
    graded, turns = [], []
    for q, body in zip(sample, bodies):
        calls = body["trace"]["tool_calls"]
        g = E.grade(q.kind, q.answers, q.url, body["reply"], body["trace"]["citations"], len(calls),
                    body["trace"]["fallback"])
        graded.append(g)
        turns.append({"kind": q.kind, "question": q.text, "reply": body["reply"], "correct": g.correct,
                      "tool_calls": [{"query": c["query"], "results": [x for t in c["calls"]
                                                                      for x in t["results"]][:3]}
                                     for c in calls]})
    metrics = E.grounding_metrics(graded)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"url": url, "metrics": metrics, "turns": turns}, indent=2,
                              ensure_ascii=False))
    print(f"  held-out questions through POST {url}/chat ({len(graded)}, {clients} at a time, "
          f"{seconds:.0f} s; answers checked against their sources):")
    for kind in ("arithmetic", "element", "translation", "document", "chat"):
        if f"accuracy_{kind}" in metrics:
            n = sum(g.kind == kind for g in graded)
            what = "clean replies without tools" if kind == "chat" else "correct"
            cited = (f", {metrics[f'cited_{kind}']:.1%} correct and citing the source"
                     if f"cited_{kind}" in metrics else "")
            print(f"    {kind:<12} {metrics[f'accuracy_{kind}']:6.1%} {what}{cited} ({n})")
    print(f"    groundedness {metrics['groundedness'] or 0:.1%}, citation accuracy "
          f"{metrics['citation_accuracy'] or 0:.1%}, replaced by the safety filter "
          f"{metrics['safety_fallback']:.1%}; details: {out}")
    for kind in ("arithmetic", "element", "translation"):
        t = next((t for t in turns if t["kind"] == kind and t["correct"]),
                 next((t for t in turns if t["kind"] == kind), None))
        if t:
            print(f"  USER: {t['question']}")
            for c in t["tool_calls"]:
                print(f"    TS, {c['query']} -> {c['results']}")
            print(f"  LAMDA: {t['reply']}")
    return metrics


def main(argv=None) -> None:
    run(parse(PipelineJob, argv, __doc__))


def run(job: PipelineJob) -> None:
    own_ray = False
    try:
        own_ray = init_ray(job.address, job.cluster.workers * job.cluster.cpus_per_worker)
        run_stages(job)
    except KeyboardInterrupt:
        print("\ninterrupted: finished stages are kept and training resumes from its last "
              "checkpoint; run again to continue", flush=True)
        if own_ray:
            shutdown_ray()
        raise SystemExit(130) from None


def run_stages(job: PipelineJob) -> None:
    """Every stage in turn; with --serve --block, serves until Ctrl-C (KeyboardInterrupt)."""
    work, data = job.workdir.resolve(), job.data_dir
    tok, pre, ft, safe, ft2, index = (work / "tokenizer.model", work / "pretrained",
                                      work / "finetuned", work / "safe_dialogs",
                                      work / "finetuned_safe", work / "index.sqlite")
    tools = work / "data"  # research, dialogs, drills, labelled and heldout .jsonl
    cluster = replace(job.cluster, storage_path=str(work / "ray"))  # safe-data filtering's actors too
    rows, ft_rows = pretrain_rows(job), finetune_rows(job)
    pretraining = pretrain.PretrainJob(
        run_name="pretrain", preset=job.preset, tokenizer=str(tok), export=str(pre), cluster=cluster,
        documents=(str(tools / "documents.jsonl"),), dialogs=(str(data / "dialogs.jsonl"),),
        train=replace(pretrain.TRAIN, steps=job.pretrain_steps, **rows))
    generated = (str(tools / "dialogs.jsonl"), str(tools / "drills.jsonl"))
    start = time.perf_counter()

    def finetuning(name: str, init_from: Path, dialogs: tuple[str, ...], steps: int, export: Path,
                   lr: float = job.finetune_lr, budget: StepBudget = StepBudget()):
        return finetune.FinetuneJob(
            run_name=name, init_from=str(init_from), export=str(export), cluster=cluster,
            labelled=(str(data / "labelled.jsonl"), str(tools / "labelled.jsonl")),
            research=(str(tools / "research.jsonl"),), dialogs=dialogs, budget=budget,
            train=replace(finetune.TRAIN, steps=steps, lr=lr, **ft_rows,
                          warmup_steps=FINETUNE_WARMUP if budget.minutes else None))

    def budgeted_finetuning():
        steps, budget = finetune_budget(job, time.perf_counter() - start)
        if budget.minutes:
            print(f"  fine-tuning steps: as many as end the pipeline within {job.minutes:g} "
                  f"minutes, planned from the fine-tuning's rate over {budget.replan_after} "
                  f"steps after its first checkpoint ({MIN_FINETUNE_STEPS} to {steps}; "
                  f"--finetune-steps sets them)",
                  flush=True)
        return finetune.run(finetuning("finetune", pre, generated, steps, ft, budget=budget))

    def filtering(out: Path):
        return filter_safe.FilterJob(
            model=str(ft), dialogs=(str(data / "dialogs.jsonl"),), out=str(out),
            filter=FilterConfig(top_fraction=job.top_fraction), actors=max(1, cluster.workers),
            cpus_per_actor=cluster.cpus_per_worker, gpus_per_actor=cluster.gpus_per_worker)

    stages = [
        ("retrieval index", index, lambda: complete(index, lambda tmp: build_index(tmp, data))),
        ("tool-use data (real tools) and held-out questions", tools / "heldout.jsonl",
         lambda: tool_data.run(tool_data.ToolDataJob(
             index=index, out=tools, doc_questions=data / "doc_questions.jsonl",
             documents=data / "documents.jsonl", fraction=job.tool_data_fraction))),
        ("tokenizer", tok, lambda: train_tokenizer.run(train_tokenizer.TokenizerJob(
            out=tok, documents=(tools / "documents.jsonl",),
            dialogs=(data / "dialogs.jsonl", tools / "dialogs.jsonl"), vocab_size=job.vocab_size,
            research=(tools / "research.jsonl",), index=index,
            max_piece_length=job.max_piece_length, spelled=tuple(element_symbols())))),
        ("pre-training", pre / "manifest.json",
         lambda: pretrain.run(pretraining)),
        ("fine-tuning", ft / "manifest.json", budgeted_finetuning),
        ("safe-data filtering", safe,
         lambda: complete(safe, lambda tmp: filter_safe.run(filtering(tmp)))),
        ("fine-tuning on safe data", ft2 / "manifest.json", lambda: finetune.run(finetuning(
            "finetune-safe", ft, (str(safe), *generated), job.safe_finetune_steps, ft2,
            job.safe_finetune_lr))),
        ("evaluation on held-out questions", work / "eval" / "report.json",
         lambda: evaluate.run(evaluate.EvalJob(
             models=(pre, ft2), questions=tools / "heldout.jsonl", index=index,
             per_kind=job.eval_per_kind, out=work / "eval",
             sampling=replace(evaluate.EvalJob.sampling, num_candidates=8)))),
    ]
    total = len(stages) + job.serve
    for i, (name, done_marker, build) in enumerate(stages, 1):
        print(f"[{i}/{total}] {name}", flush=True)
        if done_marker.exists():
            print(f"  exists: {done_marker}")
        else:
            t0 = time.perf_counter()
            build()
            print(f"  {name}: {time.perf_counter() - t0:.0f} s", flush=True)
    if job.serve:
        print(f"[{total}/{total}] chat server", flush=True)
        url = deploy(work, job.port)
        print(f"  serving on {url} (OpenAI API at {url}/v1, docs at {url}/docs)")
        served_check(url, tools / "heldout.jsonl", job.check_per_kind, work / "eval" / "served.json",
                     job.check_clients)
        body = {"message": "What is 135+7721?", "model": "lamda"}
        print(f"  try: curl -s {url}/chat -H 'Content-Type: application/json' -d '{json.dumps(body)}'")
        print("  chat in a terminal: .venv/bin/python -m serve_apps.client --model lamda --trace")
    print(f"pipeline done in {time.perf_counter() - start:.0f} s: {ft2}", flush=True)
    if job.serve and job.block:
        print("serving until Ctrl-C", flush=True)
        while True:
            time.sleep(3600)


if __name__ == "__main__":
    main()
