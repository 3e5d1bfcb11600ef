"""Discriminator scoring, the safety filter and the 3S+Sp+I ranking (paper §6.1).

A fine-tuned LaMDA scores a response by continuing `<context> RESPONSE <response> <eot>` with an
attribute name and reading the probability of the rating token:

    P(attribute) = p(<1>) / (p(<0>) + p(<1>))   at the position after `ATTRIBUTE`

(normalised over the two rating tokens, so the score is a probability even while the model puts
some mass elsewhere). The context and response are already in the KV cache from decoding: scoring
appends two tokens (`<eot> ATTRIBUTE`) per candidate and attribute, all of them in one batched step.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor

from lamda import tokenizer as tkn
from lamda.data import ATTRIBUTES, Turn, response_prompt  # ATTRIBUTES: the score columns
from lamda.decode import Candidate, Generation, left_pad, prefill
from lamda.model import KVCache, LaMDA
from lamda.tokenizer import Tokenizer


@torch.no_grad()
def attribute_probs(model: LaMDA, tok: Tokenizer, cache: KVCache, eot_pos: Tensor) -> Tensor:
    """P(rating = 1) of every attribute for every cache row; (R, 4) in ATTRIBUTES order.

    Row r of `cache` holds a sequence whose <eot> belongs at position eot_pos[r]; the cache needs
    one free position after it. The cache is expanded 4x (one row per attribute) and each row gets
    `<eot> ATTRIBUTE` at its own positions: one forward for all rows and attributes.
    """
    R, A = cache.batch, len(ATTRIBUTES)
    device = eot_pos.device
    rows = cache.expand(A)  # row r * A + a
    attr_ids = torch.tensor([tok.special(a.upper()) for a in ATTRIBUTES], device=device)
    tokens = torch.stack([torch.full((R * A,), tok.eot_id, device=device), attr_ids.repeat(R)], 1)
    end = eot_pos.repeat_interleave(A)
    logits = model(tokens, torch.stack([end, end + 1], 1), rows)[:, -1]  # (R * A, V)
    rating = logits[:, [tok.special(tkn.RATINGS[0]), tok.special(tkn.RATINGS[1])]].float()
    return torch.softmax(rating, dim=-1)[:, 1].view(R, A)


def score_generation(model: LaMDA, tok: Tokenizer, gen: Generation) -> Tensor:
    """(B x N, 4) attribute probabilities of every candidate, reusing the decoding cache."""
    if gen.stopped:
        raise ValueError("candidates cut at a stop string are scored by re-encoding them "
                         "(score_token_responses), not from the decoding cache")
    return attribute_probs(model, tok, gen.cache, gen.prompt_len + gen.lengths - 1)


def score_responses(model: LaMDA, tok: Tokenizer, contexts: list[list[Turn]],
                    responses: list[str]) -> Tensor:
    """(n, 4) attribute probabilities of given responses (one prefill for all, then one step)."""
    return score_token_responses(model, tok, [response_prompt(tok, c) for c in contexts],
                                 [tok.encode(r) for r in responses])


@torch.no_grad()
def score_token_responses(model: LaMDA, tok: Tokenizer, prompts: list[list[int]],
                          responses: list[list[int]]) -> Tensor:
    """(n, 4) attribute probabilities of prompt + response token sequences, re-encoded (for a
    scorer that does not hold the decoding cache). Each distinct prompt is prefilled once (all of
    them left-padded together), and the responses continue their prompts' rows in one forward
    (right-padded: each response's tokens at its own positions, what follows them unseen): a
    conversation's candidates share its context's cache instead of re-encoding it."""
    device = next(model.parameters()).device
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    tokens, mask = left_pad([list(p) for p in distinct], tok.pad_id, device)
    P, R = tokens.shape[1], max(map(len, responses))
    cache, _ = prefill(model, tokens, mask, P + R + 2)  # (D, H, P + R + 2, Dh)
    rows = cache.select(which)  # (n, ...): each response's prompt
    if R:
        suffix = torch.full((len(responses), R), tok.pad_id, dtype=torch.long, device=device)
        for i, r in enumerate(responses):
            suffix[i, :len(r)] = torch.tensor(r, dtype=torch.long)
        no_logits = torch.zeros_like(suffix, dtype=torch.bool)  # keys and values are all we need
        model(suffix, torch.arange(P, P + R, device=device), rows, only=no_logits)
    eot_pos = P + torch.tensor([len(r) for r in responses], dtype=torch.long, device=device)
    return attribute_probs(model, tok, rows, eot_pos)


@torch.no_grad()
def score_uncached(model: LaMDA, tok: Tokenizer, prompt: list[int], response_ids: list[int]) -> list[float]:
    """The same four scores by re-encoding prompt (`<context> RESPONSE`) + response for every
    attribute: the reference that the cached path is tested and benchmarked against."""
    device = next(model.parameters()).device
    base = list(prompt) + list(response_ids) + [tok.eot_id]
    r0, r1 = tok.special(tkn.RATINGS[0]), tok.special(tkn.RATINGS[1])
    out = []
    for a in ATTRIBUTES:
        ids = torch.tensor([base + [tok.special(a.upper())]], device=device)
        last = model(ids)[0, -1, [r0, r1]].float()
        out.append(float(torch.softmax(last, -1)[1]))
    return out


@dataclass(frozen=True)
class RankConfig:
    safety_threshold: float = 0.5  # drop a candidate whose safety score 1 - P(unsafe) is below this
    weights: tuple[float, float, float] = (3.0, 1.0, 1.0)  # sensible, specific, interesting
    fallback: str = "Sorry, I'd rather not answer that. Could we talk about something else?"


@dataclass
class Scored:
    text: str
    sensible: float
    specific: float
    interesting: float
    unsafe: float
    quality: float  # 3 P(sensible) + P(specific) + P(interesting)
    safety: float  # 1 - P(unsafe)
    logprob: float
    length: int
    filtered: str | None = None  # why the safety filter dropped it
    truncated: bool = False  # cut at the token limit


@dataclass
class Ranked:
    reply: str
    fallback: bool  # every candidate was unsafe: the reply is RankConfig.fallback
    best: Scored | None
    candidates: list[Scored] = field(default_factory=list)  # kept ones best first, then dropped

    def to_dict(self) -> dict:
        return asdict(self)


def rank(candidates: list[Candidate], probs: Tensor | list[list[float]], cfg: RankConfig) -> Ranked:
    """Safety filter, then 3S+Sp+I. `probs` rows follow ATTRIBUTES, one row per candidate."""
    ws, wsp, wi = cfg.weights
    scored = []
    for c, p in zip(candidates, probs.tolist() if isinstance(probs, Tensor) else probs):
        sen, spe, inter, unsafe = p
        s = Scored(c.text, sen, spe, inter, unsafe, ws * sen + wsp * spe + wi * inter, 1 - unsafe,
                   c.logprob, c.length, truncated=c.truncated)
        if s.safety < cfg.safety_threshold:
            s.filtered = f"safety {s.safety:.3f} < threshold {cfg.safety_threshold}"
        scored.append(s)
    kept = sorted((s for s in scored if s.filtered is None), key=lambda s: -s.quality)
    dropped = [s for s in scored if s.filtered is not None]
    if not kept:
        return Ranked(cfg.fallback, True, None, dropped)
    return Ranked(kept[0].text, False, kept[0], kept + dropped)
