"""Export people's ratings (the chat console's, stored with the conversations) as labelled JSONL
that jobs.finetune trains the discriminators on (paper §4-5: crowd workers' labels).

    python -m jobs.export_ratings --conversations runs/serve/conversations.sqlite \\
        --out runs/local/ratings.jsonl
    python -m jobs.export_ratings --conversations postgresql://lamda@db:5432/lamda \\
        --out s3://bucket/labelled/ratings.jsonl --min-raters 3
    python -m jobs.finetune --run-name ft2 --init-from runs/local/finetuned_safe \\
        --labelled data/sample/labelled.jsonl runs/local/ratings.jsonl

One record per rated response (a reply, or a candidate a rater chose to rate): its context, its
text, one vote per rater and attribute (a rater's latest rating counts), and the labels those votes
aggregate to by the paper's rules (lamda.data.aggregate_ratings; jobs.finetune applies the same).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from jobs.flags import parse

from lamda.conversations import ConversationStore, rated_text
from lamda.data import Turn
from lamda.ratings import context_of, labelled_records
from lamda.storage import S3Location, is_s3


@dataclass(frozen=True, kw_only=True)
class ExportRatingsJob:
    """The flags of jobs.export_ratings."""

    out: str  # labelled JSONL file (local or s3://)
    conversations: str = "runs/serve/conversations.sqlite"  # the chat service's store: a SQLite
    #                                                         file or a postgresql:// URL
    min_raters: int = 1  # export only responses rated by at least this many raters (paper: 3 to 5)
    max_context_turns: int = 64  # turns of context kept


def export(store: ConversationStore, min_raters: int = 1, max_context_turns: int = 64) -> list[dict]:
    """The store's ratings as labelled records (lamda.ratings.labelled_records)."""
    ratings = store.ratings()
    rated = defaultdict(set)  # conversation -> its rated (turn, candidate) pairs
    for r in ratings:
        rated[r.conversation_id].add((r.turn, r.candidate))
    responses = {}
    for cid in sorted(rated):  # each conversation read once
        turns = store.conversation(cid)
        history = [Turn(t["speaker"], t["text"]) for t in turns]
        for turn, candidate in rated[cid]:
            t = turns[turn]
            responses[(cid, turn, candidate)] = (
                context_of(history, turn, max_context_turns),
                rated_text(t["text"], t["trace"], candidate))
    return labelled_records(ratings, responses, min_raters)


def write_jsonl(records: list[dict], out: str) -> None:
    """Write the file whole: a reader never sees half of it (a rename locally, one PUT on S3)."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if is_s3(out):
        loc = S3Location.parse(out)
        loc.client().put_object(Bucket=loc.bucket, Key=loc.key, Body=text.encode())
        return
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=Path(out).parent, prefix=".ratings-")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, out)


def run(job: ExportRatingsJob) -> dict:
    store = ConversationStore(job.conversations)
    try:
        records = export(store, job.min_raters, job.max_context_turns)
    finally:
        store.close()
    write_jsonl(records, job.out)
    votes = sum(r["raters"] for r in records)
    print(f"export_ratings: {len(records)} rated responses ({votes} raters' votes) -> {job.out}")
    return {"responses": len(records), "votes": votes, "out": job.out}


def main(argv=None) -> dict:
    return run(parse(ExportRatingsJob, argv, __doc__))


if __name__ == "__main__":
    main()
