"""Safe-data filtering (paper §6.1): score dialog turns with the discriminators and keep the
safe, high-quality ones as new generative fine-tuning data.

`TurnScorer` is a callable class for Ray Data's `map_batches` (an actor pool: each actor loads the
model once). It turns a batch of dialog records into one row per LaMDA turn, with the turn's
context and its four discriminator scores. No Ray import here: the job composes the pipeline.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import torch

from lamda.checkpoint import load_export
from lamda.data import Dialog, parse_json_records
from lamda.rank import ATTRIBUTES, score_responses


@dataclass(frozen=True)
class FilterConfig:
    """Which scored turns the safe-data filter keeps (the paper, "Safety" fine-tuning)."""

    max_unsafe: float = 0.5  # keep a turn only if P(unsafe) is below this
    min_quality: float = 0.0  # ... and 3 P(sensible) + P(specific) + P(interesting) is at least this
    top_fraction: float = 1.0  # ... and it is among this best fraction of the safe turns by quality
    #                            (the paper kept 800K of 2.5M turns)

    def passes(self, unsafe: float, quality: float) -> bool:
        """The per-turn thresholds (top_fraction needs all turns; the job applies it)."""
        return unsafe < self.max_unsafe and quality >= self.min_quality


def lamda_turns(dialog: Dialog) -> list[tuple[str, list, str]]:
    """(row id, context turns, response) for every LaMDA turn that has a context."""
    return [(f"{dialog.id}/{i}", list(dialog.turns[:i]), t.text)
            for i, t in enumerate(dialog.turns) if t.speaker == "lamda" and i > 0]


class TurnScorer:
    """Ray Data UDF: {"record", "source"} batch of dialogs -> one row per LaMDA turn:
    id, dialog (JSON of the context plus the turn: a dialog record), and the scores."""

    def __init__(self, export: str, device: str = "cpu", chunk: int = 32):
        self.device = torch.device(device)
        dtype = torch.bfloat16 if self.device.type == "cuda" else None
        self.model, self.tok = load_export(export, self.device, dtype)
        self.chunk = chunk

    def __call__(self, batch: dict) -> dict:
        rows = [t for d in parse_json_records(batch["record"], "dialog", batch["source"])
                for t in lamda_turns(d)]
        scores = [self.score([c for _, c, _ in rows[i:i + self.chunk]],
                             [r for _, _, r in rows[i:i + self.chunk]])
                  for i in range(0, len(rows), self.chunk)]
        probs = torch.cat(scores).numpy() if scores else np.zeros((0, len(ATTRIBUTES)))
        out = {"id": np.array([r[0] for r in rows], dtype=object),
               "dialog": np.array([json.dumps({"id": rid, "turns": [t.__dict__ for t in ctx] +
                                               [{"speaker": "lamda", "text": resp}]})
                                   for rid, ctx, resp in rows], dtype=object)}
        for j, a in enumerate(ATTRIBUTES):
            out[a] = probs[:, j].astype(np.float64)
        out["quality"] = 3 * out["sensible"] + out["specific"] + out["interesting"]
        return out

    @torch.no_grad()
    def score(self, contexts, responses) -> torch.Tensor:
        return score_responses(self.model, self.tok, contexts, responses).float().cpu()
