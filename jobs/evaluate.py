"""Evaluate checkpoints on an evaluation set through the serving code path; write report.json and
PNG charts, print a table.

    python -m jobs.evaluate --models runs/local/pretrained runs/local/finetuned_safe \\
        --index runs/local/index.sqlite --out runs/local/eval [--ratings ratings.jsonl]

Variants: every model without the research loop and, for fine-tuned models, with it (as the
paper compares PT, LaMDA and LaMDA with its toolset). A pre-trained model answers by sample-and-rank
on likelihood (it has no discriminators). Unrated outputs get automatic ESTIMATES: SSI and safety
from a judge model's discriminators (--judge, default the last model), groundedness and citation
accuracy from the research trace. Human ratings (--ratings, JSONL or CSV) are aggregated by the
paper's rules and reported separately.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from lamda import eval as E
from lamda.chat import ChatConfig, ChatModel, local_turn
from lamda.checkpoint import load_export
from lamda.data import SAMPLE_DIR, Turn, read_jsonl, response_prompt
from lamda.decode import SamplingConfig, best_by_likelihood, generate
from lamda.rank import score_responses
from lamda.tools import Toolset
from lamda.tools.retrieval import Retriever

QUALITY = ("sensibleness", "specificity", "interestingness", "safety")
GROUNDING = ("groundedness", "informativeness", "citation_accuracy")


def stage_of(path: Path) -> str:
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    return manifest.get("stage", "finetune")


def answer_all(path: Path, contexts: list[list[Turn]], research: bool, toolset, sampling) -> list[dict]:
    """Replies (and research traces) of one model variant for every context."""
    model, tok = load_export(path)
    if stage_of(path) == "pretrain":
        out = []
        for ctx in contexts:
            gen = generate(model, tok, [response_prompt(tok, ctx)], sampling)
            out.append({"reply": best_by_likelihood(gen.candidates[0]).text, "research": None})
        return out
    chat, cfg = ChatModel(model, tok), ChatConfig(sampling=sampling, research=research)
    out = []
    for ctx in contexts:
        a = local_turn(chat, toolset, ctx, cfg)
        out.append({"reply": a.reply, "research": a.research.to_dict() if a.research else None,
                    "fallback": a.ranked.fallback})
    return out


def charts(report: dict, out: Path) -> list[Path]:
    """Bars per metric, one bar per variant (like the paper's figures)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    variants = list(report["variants"])
    for name, group in (("quality", QUALITY), ("groundedness", GROUNDING)):
        fig, axes = plt.subplots(1, len(group), figsize=(4 * len(group), 3.6), squeeze=False)
        for ax, metric in zip(axes[0], group):
            values = [report["variants"][v]["estimated"][metric] or 0.0 for v in variants]
            ax.bar(range(len(variants)), values, color=[f"C{i}" for i in range(len(variants))])
            ax.set_xticks(range(len(variants)), variants, rotation=30, ha="right", fontsize=7)
            ax.set_ylim(0, 1)
            ax.set_title(metric.replace("_", " "))
        fig.suptitle(f"{name} (automatic estimates, {report['contexts']} contexts)")
        fig.tight_layout()
        path = out / f"{name}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def table(report: dict) -> str:
    cols = QUALITY + GROUNDING
    lines = [f"{'variant':<34}" + "".join(f"{c[:12]:>13}" for c in cols)]
    for v, r in report["variants"].items():
        vals = [r["estimated"][c] for c in cols]
        lines.append(f"{v:<34}" + "".join(f"{'-' if x is None else f'{x:.2f}':>13}" for x in vals))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", type=Path, required=True, help="exports to evaluate")
    p.add_argument("--judge", type=Path, default=None, help="export whose discriminators estimate "
                   "SSI and safety (default: the last model)")
    p.add_argument("--eval", type=Path, default=SAMPLE_DIR / "eval_mtb.jsonl", help="contexts")
    p.add_argument("--limit", type=int, default=None, help="evaluate the first N contexts")
    p.add_argument("--index", type=Path, default=None, help="retrieval index for the research loop")
    p.add_argument("--ratings", type=Path, default=None, help="human ratings (JSONL or CSV)")
    p.add_argument("--candidates", type=int, default=16)
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)

    contexts = [list(d.turns) for d in read_jsonl(a.eval, "dialog")][:a.limit]
    toolset = Toolset(retriever=Retriever(a.index) if a.index else None)
    sampling = SamplingConfig(num_candidates=a.candidates, max_new_tokens=a.max_new_tokens, seed=a.seed)
    judge, judge_tok = load_export(a.judge or a.models[-1])
    report = {"eval_set": str(a.eval), "contexts": len(contexts), "judge": str(a.judge or a.models[-1]),
              "note": "'estimated' metrics are automatic estimates, not human ratings",
              "variants": {}}
    for path in a.models:
        modes = [False] if stage_of(path) == "pretrain" else [False, True]
        for research in modes:
            name = f"{path.name}{' + research' if research else ''}"
            t0 = time.perf_counter()
            answers = answer_all(path, contexts, research, toolset, sampling)
            scores = score_responses(judge, judge_tok, contexts, [x["reply"] for x in answers])
            labels = [E.estimate(dict(zip(("sensible", "specific", "interesting", "unsafe"), s)),
                                 x["research"]) for s, x in zip(scores.tolist(), answers)]
            report["variants"][name] = {
                "model": str(path), "stage": stage_of(path), "research": research,
                "estimated": E.metrics(labels), "seconds": round(time.perf_counter() - t0, 1),
                "examples": [{"context": [t.__dict__ for t in c], "reply": x["reply"]}
                             for c, x in list(zip(contexts, answers))[:5]]}
            print(f"[evaluate] {name}: {len(contexts)} contexts in {time.perf_counter() - t0:.1f}s",
                  flush=True)
    if a.ratings:
        human = [E.aggregate(r) for r in E.read_ratings(a.ratings).values()]
        report["human"] = {"responses": len(human), "metrics": E.metrics(human)}
    a.out.mkdir(parents=True, exist_ok=True)
    report["charts"] = [str(c) for c in charts(report, a.out)]
    (a.out / "report.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    print(f"report: {a.out / 'report.json'}; charts: {', '.join(report['charts'])}")
    return report


if __name__ == "__main__":
    main()
