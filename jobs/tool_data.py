"""Write the tool-use fine-tuning data and the held-out questions, from the real tools.

    python -m jobs.tool_data --index runs/local/index.sqlite --out runs/local/data

Files (deterministic for the same index, dictionaries and seed):
  research.jsonl  research transcripts of the training split (lamda.data's research schema):
                  calculator, translator and retrieval, real tool output, multi-step where a
                  result misses
  dialogs.jsonl   the same training questions with their grounded replies (no URLs), plus small
                  talk, as generative examples for LaMDA-Base (dialog schema)
  documents.jsonl the bundled documents less the held-out ones, for pre-training and the
                  tokenizer (retrieval keeps them all: the research loop must find them)
  drills.jsonl    copy drills (repeat training-split words and numbers back) as generative
                  dialogs: the copying the research task needs, paid for from the first steps
  labelled.jsonl  replies and drafts of training transcripts rated safe by construction
                  (lamda.tool_data.safety_labels), for the safety discriminator
  heldout.jsonl   questions of the evaluation split with their known answers and sources
                  (lamda.tool_data.Question); its operands, elements, words, documents and
                  phrasings occur in no training file
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from jobs.flags import parse

from lamda import tool_data as TD
from lamda.data import SAMPLE_DIR
from lamda.research import URL
from lamda.tools import Toolset
from lamda.tools.retrieval import Retriever

# held-out questions per kind (documents: one per held-out document question)
HELDOUT = dict(n_arithmetic=60, per_element=1, per_word=1, chat_repeats=1)
MAX_HELDOUT_WORDS = 60  # translation questions in the held-out set


def write_jsonl(path: Path, lines: list[str]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    tmp.replace(path)


def generative_dialogs(records: list[dict], rng: random.Random, n: int) -> list[dict]:
    """Up to n research records as dialogs whose LaMDA turn is the grounded reply without its
    URL (what LaMDA-Base learns to draft), and every small-talk record."""
    chat = [r for r in records if not r["steps"]]
    answered = [r for r in records if r["steps"] and r["reply"] != TD.NOT_FOUND]
    facts = rng.sample(answered, min(n, len(answered)))
    out = []
    for r in chat + facts:
        reply = " ".join(URL.sub("", r["reply"]).split()).rstrip(" (),:")
        reply = re.sub(r",? according to$", ".", reply) or r["reply"]
        out.append({"id": f"dlg-{r['id']}", "turns": [*r["context"], {"speaker": "lamda", "text": reply}]})
    return out


def build(index: Path, out: Path, doc_questions: Path, documents: Path, seed: int = 0,
          generative: int = 1500, fraction: float = 1.0, drills: int = 2000,
          safety_labels: int = 750, misleading_drafts: float = TD.MISLEADING_DRAFTS,
          made_up: int = 600) -> dict:
    """Write the six files; returns counts. `fraction` < 1 makes a smaller training split (tests)."""
    src = TD.Sources.load(doc_questions)
    if not src.elements or not src.words:
        raise SystemExit("dict-elements and the FreeDict dictionaries (eng-fra/deu/spa) are needed: "
                         "make installs them")
    # a generous time budget: loading a dictionary must not look like a tool failure here
    toolset = Toolset(retriever=Retriever(index), timeout_s=120.0).warm_up(TD.LANGUAGES)
    records = TD.build(src, toolset, "train", seed, n_arithmetic=int(3000 * fraction),
                       per_element=max(1, round(6 * fraction)), per_word=2,
                       max_words=int(4000 * fraction), chat_repeats=max(1, round(5 * fraction)),
                       unknown_elements=int(600 * fraction), made_up=int(made_up * fraction),
                       misleading_drafts=misleading_drafts)
    heldout = TD.build_questions(src, "eval", seed, **HELDOUT)
    words = [q for q in heldout if q.kind == "translation"][:MAX_HELDOUT_WORDS]
    heldout = [q for q in heldout if q.kind != "translation"] + words
    random.Random(seed).shuffle(heldout)
    out.mkdir(parents=True, exist_ok=True)
    dialogs = generative_dialogs(records, random.Random(seed), generative)
    write_jsonl(out / "research.jsonl", [json.dumps(r, ensure_ascii=False) for r in records])
    write_jsonl(out / "dialogs.jsonl", [json.dumps(d, ensure_ascii=False) for d in dialogs])
    copies = TD.copy_drills(src, int(drills * fraction), seed)
    write_jsonl(out / "drills.jsonl", [json.dumps(d, ensure_ascii=False) for d in copies])
    labels = TD.safety_labels(records, random.Random(f"{seed}:labels"), int(safety_labels * fraction))
    write_jsonl(out / "labelled.jsonl", [json.dumps(d, ensure_ascii=False) for d in labels])
    held_out = src.held_out_urls("train")
    train_docs = [line.rstrip("\n") for line in open(documents, encoding="utf-8")
                  if line.strip() and json.loads(line)["url"] not in held_out]
    write_jsonl(out / "documents.jsonl", train_docs)
    write_jsonl(out / "heldout.jsonl", [q.to_json() for q in heldout])  # last: the stage's marker
    counts = {"research": dict(Counter(r["id"].split("-")[1] for r in records)),
              "dialogs": len(dialogs), "drills": len(copies), "labelled": len(labels),
              "documents": len(train_docs),
              "heldout": dict(Counter(q.kind for q in heldout))}
    print(f"tool-use data -> {out}: {json.dumps(counts)}")
    return counts


@dataclass(frozen=True, kw_only=True)
class ToolDataJob:
    """The flags of jobs.tool_data."""

    index: Path  # retrieval index (lamda.tools.retrieval)
    out: Path  # directory for the six files
    doc_questions: Path = SAMPLE_DIR / "doc_questions.jsonl"  # questions on the documents
    documents: Path = SAMPLE_DIR / "documents.jsonl"  # the corpus whose training split
    #                                                   documents.jsonl gets
    seed: int = 0  # which questions, operands and words; the same seed writes the same files
    generative: int = 1500  # research questions also written as generative dialogs
    fraction: float = 1.0  # scale of the training split
    drills: int = 2000  # copy drills
    safety_labels: int = 750  # transcripts whose reply and draft are labelled safe
    misleading_drafts: float = TD.MISLEADING_DRAFTS  # share of tool transcripts whose draft
    #                  misleads (another question's, or the entity copied wrong): lamda.tool_data
    made_up: int = 600  # element questions about made-up element names (TD.made_up_elements)


def run(job: ToolDataJob) -> dict:
    return build(job.index, job.out, job.doc_questions, job.documents, job.seed, job.generative,
                 job.fraction, job.drills, job.safety_labels, job.misleading_drafts, job.made_up)


def main(argv=None) -> dict:
    return run(parse(ToolDataJob, argv, __doc__))


if __name__ == "__main__":
    main()
