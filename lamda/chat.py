"""One chat turn with a LaMDA model: sample-and-rank, then the research loop, then the reply.

`ChatModel` answers with a model in this process (jobs, tests, the CPU demo); the Serve app wraps
the same calls in deployments. `chat_turn` is the orchestration both use: it only sees callables.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field

from lamda.accounting import inference_flops_per_token
from lamda import tokenizer as T
from lamda.data import ResearchStep, Turn, research_prompt, response_prompt
from lamda.decode import (Candidate, EagerStep, GraphStep, SamplingConfig, best_by_likelihood,
                          default_step, generate)
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
    research_candidates: int = 1  # samples per research step; the likeliest is used
    research_temperature: float = 0.0  # 0: greedy research outputs (queries copy exactly)


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

    def warm_up(self, sampling: SamplingConfig) -> None:
        """Compile the decoding step before the first request: with `GraphStep`, one shape and then
        a second, which makes the compiled step dynamic, so later shapes only record a CUDA graph.
        Nothing to do for the eager step."""
        if isinstance(self.step, GraphStep):
            for n in (1, 2):
                self.sample([[Turn("user", "Hello!")]] * n, sampling)

    def flops(self, context_len: int, tokens: int) -> float:
        return inference_flops_per_token(self.model.cfg, context_len) * tokens

    def respond(self, contexts: list[list[Turn]], sampling: SamplingConfig,
                rank_cfg: RankConfig) -> list[tuple[Ranked, float, dict]]:
        """Ranked candidates for each context (one batch), with FLOPs and token counts each;
        the discriminators reuse the decoding cache."""
        gen, sampled = self._generate(contexts, sampling)
        probs = score_generation(self.model, self.tok, gen)
        N, out = sampling.num_candidates, []
        for i, (cands, flops, tokens) in enumerate(sampled):
            scored = SCORED_PER_CANDIDATE * N
            flops += self.flops(tokens["prompt"] + max(c.length for c in cands), scored)
            out.append((rank(cands, probs[i * N:(i + 1) * N], rank_cfg), flops,
                        {**tokens, "scored": scored}))
        return out

    def sample(self, contexts: list[list[Turn]], sampling: SamplingConfig
               ) -> list[tuple[list[Candidate], float, dict]]:
        """Candidates for each context (one batch), with FLOPs and token counts each."""
        return self._generate(contexts, sampling)[1]

    def _generate(self, contexts: list[list[Turn]], sampling: SamplingConfig):
        """The decode of all contexts, and per context (candidates, FLOPs, token counts)."""
        prompts = [response_prompt(self.tok, c) for c in contexts]
        gen = generate(self.model, self.tok, prompts, sampling, step=self.step)
        out = []
        for prompt, cands in zip(prompts, gen.candidates):
            generated = sum(c.length for c in cands)
            flops = self.flops(len(prompt) + max(c.length for c in cands), len(prompt) + generated)
            out.append((cands, flops, {"prompt": len(prompt), "generated": generated}))
        return gen, out

    def candidate(self, text: str) -> Candidate:
        """A reply written elsewhere (the research loop's) as a candidate to score."""
        ids = self.tok.encode(text)
        return Candidate(ids, text, 0.0, len(ids) + 1, False)

    def score(self, context: list[Turn], candidates: list[Candidate], rank_cfg: RankConfig
              ) -> tuple[Ranked, float, dict]:
        """Discriminator scores by re-encoding context + candidates (one prefill), then ranking."""
        prompt = response_prompt(self.tok, context)
        probs = score_token_responses(self.model, self.tok, [prompt] * len(candidates),
                                      [c.ids for c in candidates])
        tokens = sum(len(prompt) + c.length + 1 for c in candidates)  # + "<eot> ATTR" (x4 rows)
        flops = self.flops(len(prompt) + max(c.length for c in candidates), tokens)
        return rank(candidates, probs, rank_cfg), flops, {"scored": tokens}

    def research(self, context: list[Turn], draft: str, steps: list[ResearchStep],
                 sampling: SamplingConfig) -> tuple[str, float]:
        """The research task's next output ("TS, query" or "User, reply") and its FLOPs. The first
        token is one of the two routing words; the rest is text."""
        prompt = research_prompt(self.tok, context, draft, steps)
        routes = [self.tok.special(T.TO_TOOLSET), self.tok.special(T.TO_USER)]
        gen = generate(self.model, self.tok, [prompt], sampling, step=self.step, first_tokens=routes)
        best = best_by_likelihood(gen.candidates[0])
        tokens = len(prompt) + sum(c.length for c in gen.candidates[0])
        return self.tok.decode(best.ids), self.flops(len(prompt) + best.length, tokens)


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
        lambda ctx, draft, steps: chat.research(ctx, draft, steps, sampling),
        toolset, cfg, check)
