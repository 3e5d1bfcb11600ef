"""One chat turn with a LaMDA model: sample-and-rank, then the research loop, then the reply.

`ChatModel` answers with a model in this process (jobs, tests, the CPU demo); the Serve app wraps
the same calls in deployments. `chat_turn` is the orchestration both use: it only sees callables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lamda.accounting import inference_flops_per_token
from lamda import tokenizer as tkn
from lamda.data import ResearchStep, Turn, research_prompt, response_prompt
from lamda.decode import (Candidate, EagerStep, GraphStep, SamplingConfig, best_by_likelihood,
                          before_stop, default_step, generate, left_pad, text_only_mask)
from lamda.model import LaMDA
from lamda.rank import RankConfig, Ranked, rank, score_generation, score_token_responses
from lamda.research import ResearchResult, research_loop
from lamda.tokenizer import Tokenizer


@dataclass(frozen=True)
class ChatConfig:
    sampling: SamplingConfig = SamplingConfig()
    rank: RankConfig = RankConfig()
    research: bool = True  # run the research loop after sample-and-rank
    max_iterations: int = 4  # tool calls per turn (paper's example: 4)
    research_candidates: int = 8  # samples per research step; the likeliest is used
    research_temperature: float = 1.0  # 0: greedy (2.5 points less held-out accuracy than 8
    #                                    samples at 1.0, on average over four models; RESULTS.md)


@dataclass
class Answer:
    reply: str
    ranked: Ranked  # sample-and-rank: every candidate with its scores
    research: ResearchResult | None  # the research loop, when it ran
    flops: float  # model FLOPs spent on the turn
    tokens: dict = field(default_factory=dict)  # prompt / generated / scored token counts

    @property
    def fallback(self) -> bool:
        """The safety filter replaced the reply: every candidate, or the research reply."""
        return self.ranked.fallback or bool(self.research and self.research.filtered)


class ChatModel:
    """Sample-and-rank and research steps with one model in this process. `respond` reuses the
    decoding cache for scoring; `sample` and `score` are the same work split in two, for a sampler
    and a ranker that run apart (the Serve graph). Decoding steps run as CUDA graphs on one GPU
    (`lamda.decode.default_step`); calls must not overlap (they share the static cache)."""

    def __init__(self, model: LaMDA, tok: Tokenizer, step: EagerStep | None = None):
        self.model, self.tok = model, tok
        self.step = step or default_step(model)
        self.turn_starts = {tok.special(s) for s in (tkn.USER, tkn.LAMDA)}  # speaker tokens

    def warm_up(self, sampling: SamplingConfig) -> None:
        """Compile the decoding step before the first request: with `GraphStep`, one shape and then
        a second, which makes the compiled step dynamic, so later shapes only record a CUDA graph.
        Nothing to do for the eager step."""
        if isinstance(self.step, GraphStep):
            for n in (1, 2):
                self.sample([[Turn("user", "Hello!")]] * n, sampling)

    def fit(self, prompt: list[int], room: int) -> list[int]:
        """The prompt's end that leaves `room` positions within the model's context length (or
        keeps half of that length, when `room` asks for more), starting at a turn where it can:
        the oldest turns go first."""
        keep = max(self.model.cfg.max_seq_len - room, self.model.cfg.max_seq_len // 2)
        if len(prompt) <= keep:
            return prompt
        kept = prompt[-keep:]
        starts = [i for i, t in enumerate(kept) if t in self.turn_starts]
        return kept[starts[0]:] if starts else kept

    def flops(self, context_len: int, tokens: int) -> float:
        return inference_flops_per_token(self.model.cfg, context_len) * tokens

    def respond(self, contexts: list[list[Turn]], sampling: SamplingConfig | list[SamplingConfig],
                rank_cfg: RankConfig) -> list[tuple[Ranked, float, dict]]:
        """Ranked candidates for each context (one batch; one SamplingConfig or one per context),
        with FLOPs and token counts each; the discriminators reuse the decoding cache, except
        for candidates cut at a stop string, which are re-encoded."""
        gen, sampled = self._generate(contexts, sampling)
        if gen.stopped:
            return [(ranked, flops + f, {**tokens, **t}) for ctx, (cands, flops, tokens) in
                    zip(contexts, sampled) for ranked, f, t in [self.score(ctx, cands, rank_cfg)]]
        probs = score_generation(self.model, self.tok, gen)
        N, out = len(sampled[0][0]), []
        for i, (cands, flops, tokens) in enumerate(sampled):
            scored = SCORED_PER_CANDIDATE * N
            flops += self.flops(tokens["prompt"] + max(c.length for c in cands), scored)
            out.append((rank(cands, probs[i * N:(i + 1) * N], rank_cfg), flops,
                        {**tokens, "scored": scored}))
        return out

    def sample(self, contexts: list[list[Turn]], sampling: SamplingConfig | list[SamplingConfig]
               ) -> list[tuple[list[Candidate], float, dict]]:
        """Candidates for each context (one batch; one SamplingConfig or one per context), with
        FLOPs and token counts each."""
        return self._generate(contexts, sampling)[1]

    def _generate(self, contexts: list[list[Turn]], sampling: SamplingConfig | list[SamplingConfig]):
        """The decode of all contexts, and per context (candidates, FLOPs, token counts)."""
        room = max(c.max_new_tokens for c in (sampling if isinstance(sampling, list) else [sampling]))
        prompts = [self.fit(response_prompt(self.tok, c), room + 2) for c in contexts]
        gen = generate(self.model, self.tok, prompts, sampling, step=self.step)
        return gen, [self.sampled(p, cands) for p, cands in zip(prompts, gen.candidates)]

    def response_prompt(self, context: list[Turn], sampling: SamplingConfig) -> list[int]:
        """The prompt whose continuation is LaMDA's response to `context` (fitted to the model)."""
        return self.fit(response_prompt(self.tok, context), sampling.max_new_tokens + 2)

    def sampled(self, prompt: list[int], cands: list[Candidate], reused: int = 0
                ) -> tuple[list[Candidate], float, dict]:
        """Candidates decoded from `prompt` (of which `reused` positions came from a cache, not
        computed), with their FLOPs and token counts."""
        generated = sum(c.length for c in cands)
        flops = self.flops(len(prompt) + max(c.length for c in cands), len(prompt) - reused + generated)
        return cands, flops, {"prompt": len(prompt), "generated": generated, "reused": reused}

    def candidate(self, text: str) -> Candidate:
        """A reply written elsewhere (the research loop's) as a candidate to score."""
        ids = self.tok.encode(text)
        return Candidate(ids, text, 0.0, len(ids) + 1, False)

    def score(self, context: list[Turn], candidates: list[Candidate], rank_cfg: RankConfig
              ) -> tuple[Ranked, float, dict]:
        """Discriminator scores by re-encoding the context (once) and the candidates, then ranking."""
        return self.score_many([(context, candidates)], rank_cfg)[0]

    def score_many(self, items: list[tuple[list[Turn], list[Candidate]]], rank_cfg: RankConfig
                   ) -> list[tuple[Ranked, float, dict]]:
        """`score` for several conversations at once (each context prefilled once, its candidates
        continuing it; lamda.rank.score_token_responses): the Ranker batches concurrent
        conversations."""
        prompts, rows, out = [], [], []
        for context, candidates in items:
            prompt = self.fit(response_prompt(self.tok, context), max(c.length for c in candidates) + 2)
            prompts.append(prompt)
            rows += [(prompt, c.ids) for c in candidates]
        probs = score_token_responses(self.model, self.tok, [p for p, _ in rows], [r for _, r in rows])
        at = 0
        for prompt, (_, candidates) in zip(prompts, items):
            tokens = len(prompt) + sum(len(c.ids) + SCORED_PER_CANDIDATE for c in candidates)
            flops = self.flops(len(prompt) + max(c.length for c in candidates), tokens)
            out.append((rank(candidates, probs[at:at + len(candidates)], rank_cfg), flops,
                        {"scored": tokens}))
            at += len(candidates)
        return out

    def research(self, context: list[Turn], draft: str, steps: list[ResearchStep],
                 sampling: SamplingConfig) -> tuple[str, float, dict]:
        """The research task's next output ("TS, query" or "User, reply"), its FLOPs and token
        counts. The first token is one of the two routing words; the rest is text."""
        prompt, routes = self.research_request(context, draft, steps, sampling)
        gen = generate(self.model, self.tok, [prompt], sampling, step=self.step, first_tokens=routes)
        return self.research_output(prompt, gen.candidates[0])

    def research_request(self, context: list[Turn], draft: str, steps: list[ResearchStep],
                         sampling: SamplingConfig) -> tuple[list[int], list[int]]:
        """The research task's prompt and the tokens allowed first (its two routing words)."""
        prompt = self.fit(research_prompt(self.tok, context, draft, steps), sampling.max_new_tokens + 2)
        return prompt, [self.tok.special(tkn.TO_TOOLSET), self.tok.special(tkn.TO_USER)]

    def research_output(self, prompt: list[int], cands: list[Candidate], reused: int = 0
                        ) -> tuple[str, float, dict]:
        """The likeliest of the research task's samples, its FLOPs and token counts (`reused` as
        in `sampled`)."""
        best = best_by_likelihood(cands)
        _, flops, tokens = self.sampled(prompt, cands, reused)
        return self.tok.decode(best.ids), flops, tokens

    @torch.no_grad()
    def reply_logprobs(self, context: list[Turn], replies: list[str], top: int = 0) -> list[list[dict]]:
        """Each reply read as the response to `context` (one prefill for all): per token its text,
        bytes, log p under the model (temperature 1, over the tokens a response may hold, as
        Candidate.logprob) and the `top` likeliest tokens at that position (OpenAI's `logprobs`)."""
        ids = [self.tok.encode(r) for r in replies]
        prompt = self.fit(response_prompt(self.tok, context), max(map(len, ids), default=0) + 1)
        device = next(self.model.parameters()).device
        tokens, mask = left_pad([prompt + i + [self.tok.eot_id] for i in ids], self.tok.pad_id, device)
        logits = self.model(tokens, key_mask=mask).float()  # (n, T, V)
        logp = torch.log_softmax(logits + text_only_mask(self.tok, logits.shape[-1], device), -1)
        S, out = tokens.shape[1], []
        for row, reply in enumerate(ids):
            first = S - 1 - len(reply) - 1  # the position predicting the reply's first token
            at = logp[row, first:first + len(reply)]  # (L, V)
            best = at.topk(top, -1) if top else None
            out.append([{**self.piece(t), "logprob": float(at[j, t]), "top_logprobs": [] if best is None
                         else [{**self.piece(int(i)), "logprob": float(v)}
                               for v, i in zip(best.values[j], best.indices[j])]}
                        for j, t in enumerate(reply)])
        return out

    def finish(self, context: list[Turn], replies: list[str], truncated: list[bool],
               max_tokens: int | None = None, stop: tuple[str, ...] = (),
               top_logprobs: int | None = None) -> list[dict]:
        """The replies as a client gets them: each ends before its first stop string and holds at
        most `max_tokens` tokens; with its token count, finish_reason ("length" when cut at the
        token limit, here or while decoding (`truncated`), else "stop") and, when `top_logprobs`
        is not None, its logprobs."""
        out = []
        for text, cut in zip(replies, truncated):
            stopped = before_stop(text, stop)
            text = text if stopped is None else stopped
            ids = self.tok.encode(text)
            if max_tokens is not None and len(ids) > max_tokens:
                cut, keep = True, max_tokens
                text = self.tok.decode(ids[:keep])
                # not half a character (its bytes decode to U+FFFD, which re-encodes longer)
                while keep and (text.endswith("\ufffd") or len(self.tok.encode(text)) > max_tokens):
                    keep -= 1
                    text = self.tok.decode(ids[:keep])
                ids = self.tok.encode(text)
            out.append({"text": text, "tokens": len(ids), "finish_reason": "length" if cut else "stop"})
        if top_logprobs is not None:
            for o, lp in zip(out, self.reply_logprobs(context, [o["text"] for o in out], top_logprobs)):
                o["logprobs"] = lp
        return out

    def piece(self, token_id: int) -> dict:
        """A token as OpenAI reports it: its text (a word-initial piece with its space) and bytes.
        A byte piece of an ASCII character is that character; one byte of a longer character
        keeps its piece's name ("<0xE2>"), and the client joins the bytes."""
        piece, byte = self.tok.piece(token_id), self.tok.byte_value(token_id)
        if byte is not None:
            return {"token": chr(byte) if byte < 0x80 else piece, "bytes": [byte]}
        text = piece.replace("\u2581", " ")
        return {"token": text, "bytes": list(text.encode())}


SCORED_PER_CANDIDATE = 8  # tokens the discriminators add per candidate: "<eot> ATTRIBUTE" x 4


def chat_turn(context: list[Turn], respond: Callable, research: Callable,
              toolset: Callable[[str], list[str]], cfg: ChatConfig,
              check: Callable | None = None) -> Answer:
    """One turn: `respond(context) -> (Ranked, flops, tokens)`, then, unless the safety filter fell
    back, the research loop with `research(context, draft, steps) -> (output, flops)`. The
    research loop's final reply passes the safety filter like any candidate: `check(context,
    reply) -> (Ranked, flops)` ranks it alone, and a filtered reply becomes the fallback."""
    ranked, flops, tokens = respond(context)
    if not cfg.research or ranked.fallback:
        return Answer(ranked.reply, ranked, None, flops, tokens)
    spent = [flops]

    def research_step(ctx, draft, steps):
        output, f = research(ctx, draft, steps)
        spent.append(f)
        return output

    result = research_loop(context, lambda _: ranked.reply, research_step, toolset,
                           cfg.max_iterations)
    reply = result.reply
    if check is not None and reply != ranked.reply:
        final, f = check(context, reply)
        spent.append(f)
        if final.fallback:
            result.filtered = next((c.filtered for c in final.candidates if c.filtered),
                                   "safety filter")
            result.citations = []  # the reply that cited them is gone
            reply = final.reply
    return Answer(reply, ranked, result, sum(spent), tokens)


def research_sampling(cfg: ChatConfig) -> SamplingConfig:
    """The sampling settings of the research task's outputs."""
    return dataclasses.replace(cfg.sampling, num_candidates=cfg.research_candidates,
                               temperature=cfg.research_temperature)


def local_turn(chat: ChatModel, toolset: Callable[[str], list[str]], context: list[Turn],
               cfg: ChatConfig = ChatConfig()) -> Answer:
    """chat_turn with a ChatModel in this process."""
    sampling = research_sampling(cfg)

    def check(ctx, reply):
        ranked, flops, _ = chat.score(ctx, [chat.candidate(reply)], cfg.rank)
        return ranked, flops

    return chat_turn(
        context,
        lambda ctx: chat.respond([ctx], cfg.sampling, cfg.rank)[0],
        lambda ctx, draft, steps: chat.research(ctx, draft, steps, sampling)[:2],
        toolset, cfg, check)
