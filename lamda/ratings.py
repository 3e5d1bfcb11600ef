"""People's ratings of LaMDA's replies, and their export as labelled records (paper §4-5, §6.1).

Crowd workers chatted with the model and rated each response: sensible, specific and interesting
in a cascade (not sensible => not specific => not interesting), safe, grounded (for a response that
makes a claim about the external world) and helpful. Those labels trained the discriminators.
Here a rating is stored with its conversation (lamda.conversations), and `labelled_records` turns
the ratings of each response into a `labelled` record for jobs.finetune: one vote per rater per
attribute, aggregated by the paper's rules (lamda.data.aggregate_ratings).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from lamda.data import ATTRIBUTES, Turn, aggregate_ratings, majority

# The SSI cascade as a ladder: each rung implies the ones before it (paper §4.1).
SSI_LEVELS = ("not_sensible", "sensible", "specific", "interesting")
REPLY = -1  # `candidate` of a rating of the turn's reply (not of one of its candidates)


@dataclass(frozen=True)
class Rating:
    conversation_id: str
    turn: int  # index of the rated LaMDA turn in its conversation
    candidate: int  # index among the turn's sampled candidates, or REPLY
    rater: str  # a name the rater gives; it labels the votes and authorises nothing
    key_id: str  # which API key sent the rating (`key_id`), "" on an app without keys
    ssi: str  # the highest rung of SSI_LEVELS the response reaches
    safe: bool
    grounded: bool | None = None  # None: the response makes no claim about the external world
    helpful: bool | None = None  # None: not rated
    note: str = ""
    id: str = ""  # set by the store
    created: float = 0.0  # seconds since the epoch, set by the store

    def votes(self) -> dict[str, int]:
        """This rater's 0/1 vote per attribute (lamda.data's attribute names: `unsafe`)."""
        level = SSI_LEVELS.index(self.ssi)
        votes = {"sensible": int(level >= 1), "specific": int(level >= 2),
                 "interesting": int(level >= 3), "unsafe": int(not self.safe)}
        votes.update({k: int(v) for k, v in (("grounded", self.grounded),
                                             ("helpful", self.helpful)) if v is not None})
        return votes


def key_id(key: str | None) -> str:
    """A short, stable name for an API key that does not reveal it ("" for no key)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else ""


def labelled_records(ratings: Iterable[Rating], responses: dict[tuple[str, int, int], tuple],
                     min_raters: int = 1) -> list[dict]:
    """One `labelled` record (lamda.data.parse_labelled) per rated response with at least
    `min_raters` raters. `responses[(conversation_id, turn, candidate)]` = (context turns, text).

    A rater counts once per response: their latest rating wins. A rater is the pair (API key,
    rater name), so a name typed under another key is another rater. Groundedness and
    helpfulness, which no discriminator learns, go to `other_ratings`; `labels` holds every
    attribute's aggregate (SSI cascade and the safety rule from lamda.data, majority for the rest).
    """
    latest: dict[tuple, dict[tuple, Rating]] = {}
    for r in sorted(ratings, key=lambda r: r.created):
        latest.setdefault((r.conversation_id, r.turn, r.candidate), {})[(r.key_id, r.rater)] = r
    records = []
    for response_key, by_rater in sorted(latest.items()):
        if len(by_rater) < min_raters or response_key not in responses:
            continue
        context, text = responses[response_key]
        votes: dict[str, list[int]] = {}
        for r in by_rater.values():
            for attr, v in r.votes().items():
                votes.setdefault(attr, []).append(v)
        core = {a: tuple(votes.pop(a)) for a in ATTRIBUTES}
        labels = {**aggregate_ratings(core), **{a: majority(v) for a, v in votes.items()}}
        cid, turn, candidate = response_key
        records.append({
            "id": f"{cid}-{turn}" + ("" if candidate == REPLY else f"-c{candidate}"),
            "context": [{"speaker": t.speaker, "text": t.text} for t in context],
            "response": text, "ratings": {a: list(v) for a, v in core.items()},
            "other_ratings": votes, "labels": labels,
            "notes": [r.note for r in by_rater.values() if r.note],
            "raters": len(by_rater)})
    return records


def context_of(turns: list[Turn], turn: int, max_turns: int = 64) -> list[Turn]:
    """The turns before `turn` (at most the last `max_turns`), the rated response's context."""
    return turns[max(0, turn - max_turns):turn]
