"""Evaluate checkpoints against ground truth: held-out questions with known answers, and held-out
rater-labelled responses for the discriminators. Writes report.json and PNG charts, prints a table.

    python -m jobs.evaluate --models runs/local/pretrained runs/local/finetuned_safe \\
        --questions runs/local/data/heldout.jsonl --index runs/local/index.sqlite \\
        --out runs/local/eval [--ratings ratings.jsonl]

Variants, as the paper compares PT, LaMDA and LaMDA with its toolset (paper §7): a pre-trained
model answers by sample-and-rank on likelihood; every fine-tuned model answers by sample-and-rank
with its discriminators, without and with the research loop. Each reply is graded against the
question's known answer and the URL of the source that holds it (lamda.eval.grade): factual
accuracy per kind, groundedness, informativeness, citation accuracy, clean small talk, and how often
the safety filter replaced a reply to these benign questions (false refusals). Each
fine-tuned model's discriminators are scored on held-out rater-labelled responses (accuracy, ROC
AUC; safety: recall on unsafe). Human ratings (--ratings, JSONL or CSV) are aggregated by the
paper's rules and reported apart. Nothing here is the model grading its own replies.
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from jobs.flags import parse

from lamda import eval as E
from lamda.checkpoint import load_export
from lamda.data import SAMPLE_DIR, Turn, aggregate_ratings, read_jsonl, response_prompt
from lamda.decode import SamplingConfig, best_by_likelihood, generate
from lamda.rank import ATTRIBUTES, score_responses
from lamda.tool_data import Question, read_questions
from lamda.tools import Toolset
from lamda.tools.retrieval import Retriever
from lamda.turn import ChatConfig, ChatModel, local_turn

GROUNDING = ("groundedness", "citation_accuracy", "accuracy")


def stage_of(path: Path) -> str:
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return manifest.get("stage", "finetune")


def sample_questions(questions: list[Question], per_kind: int | None) -> list[Question]:
    """The first `per_kind` questions of each kind (all of them when None), in file order."""
    seen: dict[str, int] = defaultdict(int)
    out = []
    for q in questions:
        if per_kind is None or seen[q.kind] < per_kind:
            seen[q.kind] += 1
            out.append(q)
    return out


def answer_all(path: Path, questions: list[Question], research: bool, toolset: Toolset,
               sampling: SamplingConfig) -> list[dict]:
    """Each question answered by one variant, graded against its known answer."""
    model, tok = load_export(path)
    pretrained = stage_of(path) == "pretrain"
    chat, cfg = ChatModel(model, tok), ChatConfig(sampling=sampling, research=research)
    out = []
    for q in questions:
        context = [Turn("user", q.text)]
        if pretrained:
            gen = generate(model, tok, [response_prompt(tok, context)], sampling)
            reply, citations, steps, fallback = best_by_likelihood(gen.candidates[0]).text, [], [], False
        else:
            session = f"{path}:{research}:{q.id}"  # each variant starts from the first result
            a = local_turn(chat, lambda query: toolset(query, session), context, cfg)
            steps = [{"query": s.query, "results": list(s.results)} for s in a.research.steps] \
                if a.research else []
            reply, citations, fallback = a.reply, a.research.citations if a.research else [], \
                a.fallback
        graded = E.grade(q.kind, q.answers, q.url, reply, citations, len(steps), fallback)
        out.append({"question": q.text, "kind": q.kind, "answers": list(q.answers)[:3], "url": q.url,
                    "reply": reply, "tool_calls": steps, "correct": graded.correct,
                    "graded": graded})
    return out


def discriminators(path: Path, labelled: Path) -> dict:
    """The fine-tuned model's discriminators on held-out labelled responses."""
    model, tok = load_export(path)
    recs = read_jsonl(labelled, "labelled")
    probs = score_responses(model, tok, [list(r.context) for r in recs], [r.response for r in recs])
    return E.discriminator_metrics([dict(zip(ATTRIBUTES, p)) for p in probs.tolist()],
                                   [aggregate_ratings(r.ratings) for r in recs])


def charts(report: dict, out: Path) -> list[Path]:
    """Grounding metrics per variant (as the paper's Figure 5 compares), accuracy per kind, and
    the discriminators' ROC AUC."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    variants = list(report["variants"])
    colors = [f"C{i}" for i in range(len(variants))]
    written = []

    def bars(name: str, metrics: list[str], values, title: str):
        fig, axes = plt.subplots(1, len(metrics), figsize=(3.6 * len(metrics), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], metrics):
            labels, vals = values(metric)
            ax.bar(range(len(vals)), [v or 0.0 for v in vals], color=colors[:len(vals)])
            ax.set_xticks(range(len(vals)), labels, rotation=30, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(metric.replace("_", " "), fontsize=9)
        fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    per_variant = lambda metric: (variants, [report["variants"][v]["metrics"].get(metric)  # noqa: E731
                                             for v in variants])
    n = report["questions"]
    bars("grounding", list(GROUNDING), per_variant,
         f"held-out questions with known answers ({n}); research fine-tuning should lift these")
    kinds = sorted({k[len("accuracy_"):] for v in report["variants"].values() for k in v["metrics"]
                    if k.startswith("accuracy_")})
    bars("accuracy", [f"accuracy_{k}" for k in kinds], per_variant, "accuracy by kind of question")
    if report["discriminators"]:
        models = list(report["discriminators"])
        bars("discriminators", [a for a in ATTRIBUTES],
             lambda a: (models, [report["discriminators"][m].get(a, {}).get("roc_auc") for m in models]),
             "discriminators: ROC AUC on held-out rater labels")
    return written


def table(report: dict) -> str:
    cols = ["accuracy", "groundedness", "citation_accuracy", "safety_fallback"] + sorted(
        {k for v in report["variants"].values() for k in v["metrics"] if k.startswith("accuracy_")})
    names = {"safety_fallback": "fallback"}
    lines = [f"{'variant':<30}" + "".join(f"{names.get(c, c).replace('accuracy_', 'acc ')[:12]:>13}"
                                          for c in cols)]
    for v, r in report["variants"].items():
        vals = [r["metrics"].get(c) for c in cols]
        lines.append(f"{v:<30}" + "".join(f"{'-' if x is None else f'{x:.2f}':>13}" for x in vals))
    for m, d in report["discriminators"].items():
        lines.append(f"discriminators of {m}: " + ", ".join(
            f"{a} acc {x['accuracy']:.2f} auc {x['roc_auc']:.2f}" if x["roc_auc"] is not None
            else f"{a} acc {x['accuracy']:.2f}" for a, x in d.items())
            + (f"; unsafe recall {d['unsafe']['recall_unsafe']:.2f}" if "unsafe" in d
               and d["unsafe"].get("recall_unsafe") is not None else ""))
    return "\n".join(lines)


@dataclass(frozen=True, kw_only=True)
class EvalJob:
    """The flags of jobs.evaluate."""

    models: tuple[Path, ...]  # exports to evaluate
    questions: Path  # held-out questions with known answers (jobs.tool_data writes heldout.jsonl)
    out: Path  # directory for report.json and the charts
    per_kind: int | None = None  # evaluate the first N questions of each kind (default: all)
    labelled: Path = SAMPLE_DIR / "labelled_eval.jsonl"  # held-out rater-labelled responses for
    #                                                      the discriminators
    index: Path | None = None  # retrieval index for the research loop
    ratings: Path | None = None  # human ratings (JSONL or CSV)
    sampling: SamplingConfig = SamplingConfig(max_new_tokens=48, seed=0)


def run(job: EvalJob) -> dict:
    questions = sample_questions(read_questions(job.questions), job.per_kind)
    toolset = Toolset(retriever=Retriever(job.index) if job.index else None).warm_up()
    report = {"questions": len(questions), "question_file": str(job.questions),
              "note": "graded against known answers and their sources; no self-assessment",
              "variants": {}, "discriminators": {}}
    for path in job.models:
        modes = [False] if stage_of(path) == "pretrain" else [False, True]
        for research in modes:
            name = f"{path.name}{' + research' if research else ''}"
            t0 = time.perf_counter()
            answers = answer_all(path, questions, research, toolset, job.sampling)
            graded = [x.pop("graded") for x in answers]
            report["variants"][name] = {
                "model": str(path), "stage": stage_of(path), "research": research,
                "metrics": E.grounding_metrics(graded), "seconds": round(time.perf_counter() - t0, 1),
                "examples": answers}
            print(f"[evaluate] {name}: {len(questions)} questions in {time.perf_counter() - t0:.1f}s",
                  flush=True)
        if stage_of(path) != "pretrain" and job.labelled.exists():
            report["discriminators"][path.name] = discriminators(path, job.labelled)
    if job.ratings:
        human = [E.aggregate(r) for r in E.read_ratings(job.ratings).values()]
        report["human"] = {"responses": len(human), "metrics": E.metrics(human)}
    job.out.mkdir(parents=True, exist_ok=True)
    report["charts"] = [str(c) for c in charts(report, job.out)]
    (job.out / "report.json").write_text(json.dumps(report, indent=2, ensure_ascii=False))
    print(table(report))
    print(f"report: {job.out / 'report.json'}; charts: {', '.join(report['charts'])}")
    return report


def main(argv=None) -> dict:
    return run(parse(EvalJob, argv, __doc__))


if __name__ == "__main__":
    main()
