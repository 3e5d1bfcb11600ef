"""The model-side deployments of the chat graph: Sampler, Ranker and Toolset.

Sampler and Ranker each hold the model (loaded from an export: safetensors + config + tokenizer,
local or s3://, cached per node). The Sampler decodes every request in one continuous batch
(lamda.engine), which reuses the cache of a prompt's beginning (a conversation's context) across
its candidates, research steps and turns; the Ranker re-encodes the context once and the
candidates after it, batched across conversations, so the two scale separately (in one
process, lamda.turn reuses the decoding cache instead).
Settings that may change while serving arrive as `user_config` through `reconfigure`. Energy per
request is modelled from its share of the device time (the engine splits each step by rows).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time

import torch
from ray import serve
from ray.serve.config import RequestRouterConfig
from ray.serve.metrics import Gauge

from lamda.accounting import EnergyMeter, energy_kwh, hardware
from lamda.checkpoint import load_export, load_export_dispatched
from lamda.data import ResearchStep, Turn
from lamda.decode import Candidate, SamplingConfig
from lamda.engine import Decoded, DecodeEngine, EngineConfig
from lamda.rank import RankConfig
from lamda.storage import cached
from lamda.tools import Toolset as Tools
from lamda.tools.retrieval import Retriever
from lamda.turn import ChatModel
from serve_apps.messages import RankResult, Researched, Sampled


def load_chat_model(model_path: str, threads: int | None = None) -> ChatModel:
    """The export on this replica's device: GPU (bf16) when Ray gave it one, spread over all of
    the replica's GPUs with Accelerate when it has several (`num_gpus` > 1), else CPU. Ray gives a
    replica with fractional CPUs one torch thread; `threads` overrides that."""
    if threads:
        torch.set_num_threads(threads)
    gpus = torch.cuda.device_count() if os.environ.get("CUDA_VISIBLE_DEVICES") else 0
    if gpus > 1:
        model, tok = load_export_dispatched(model_path, torch.bfloat16)
    else:
        device = "cuda" if gpus == 1 else "cpu"
        model, tok = load_export(model_path, device, torch.bfloat16 if gpus else None)
    return ChatModel(model, tok)


def from_user_config(cls, config: dict, settings: tuple[str, ...] | None = None):
    """The config dataclass with the user_config fields it knows set (unknown keys, and fields
    outside `settings` when given, are refused)."""
    fields = set(settings or (f.name for f in dataclasses.fields(cls)))
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings in user_config: {sorted(unknown)}")
    return cls(**config)


class _ModelReplica:
    """A replica holding the model, metering the energy of its work: NVML's counter on GPU, else
    the device's modelled power."""

    def __init__(self, model_path: str, threads: int | None = None):
        self.chat = load_chat_model(model_path, threads)
        on_gpu = next(self.chat.model.parameters()).device.type == "cuda"
        self._watts = hardware(torch.cuda.get_device_name() if on_gpu else "cpu").watts

    def _meter(self) -> EnergyMeter:
        return EnergyMeter(self._watts)

    async def ping(self) -> bool:
        """For the Chat's readiness check: this replica answers."""
        return True


# A conversation's calls go to one replica, which holds its state: the Sampler's prefix cache (its
# context's KV rows), the Toolset's retrieval session (how far each repeated query has got).
# Consistent hashing on the session id the Chat sets (the conversation), passing over a replica
# with more than max_excess requests in flight above the least loaded one's (serve_apps.routing).
CONVERSATION_AFFINITY = RequestRouterConfig(
    request_router_class="serve_apps.routing.ConversationRouter",
    request_router_kwargs={"num_fallback_replicas": 2, "max_excess": 4})


@serve.deployment(request_router_config=CONVERSATION_AFFINITY)
class Sampler(_ModelReplica):
    """Candidates and research outputs from one continuous-batching decode loop per replica
    (lamda.engine): each request joins the rows already decoding at the next step and leaves when
    its rows end; the model runs in the engine's thread, never on the event loop, and a cancelled
    request frees its rows. A conversation's calls come to the same replica
    (CONVERSATION_AFFINITY)."""

    def __init__(self, model_path: str, threads: int | None = None,
                 engine: dict | None = None):
        super().__init__(model_path, threads)
        self.sampling = SamplingConfig()
        self.engine = DecodeEngine(self.chat.model, self.chat.tok, EngineConfig(**(engine or {})))

    def reconfigure(self, config: dict) -> None:
        """user_config: num_candidates, top_k, temperature, max_new_tokens, seed."""
        self.sampling = from_user_config(SamplingConfig, config)

    async def _decode(self, prompt: list[int], sampling: SamplingConfig,
                      first_tokens: list[int] | None = None) -> tuple[Decoded, int]:
        """The engine's candidates for `prompt`, and the requests decoding when it was submitted;
        a cancelled call (the client went away) cancels the request in the engine."""
        running = self.engine.requests
        return (await asyncio.wrap_future(self.engine.submit(prompt, sampling, first_tokens)),
                running)

    def _energy_kwh(self, seconds: float) -> float:
        """The modelled energy of a request's share of the device time."""
        return energy_kwh(1, seconds, self._watts)

    async def generate(self, context: list[Turn], settings: dict) -> Sampled:
        """Candidates for one conversation, with its own sampling `settings` (SamplingConfig
        fields over the replica's user_config), decoded next to every other request."""
        t0 = time.perf_counter()
        sampling = dataclasses.replace(self.sampling, **settings)
        prompt = self.chat.response_prompt(context, sampling)
        decoded, running = await self._decode(prompt, sampling)
        cands, flops, tokens = self.chat.sampled(prompt, decoded.candidates, decoded.reused)
        return Sampled(flops, tokens, self._energy_kwh(decoded.seconds), cands, running + 1,
                       time.perf_counter() - t0)

    async def research(self, context: list[Turn], draft: str, steps: list[ResearchStep],
                       settings: dict | None = None) -> Researched:
        """The research task's next output for one conversation; `settings`: SamplingConfig
        fields over the replica's user_config (the Chat sends num_candidates and temperature)."""
        sampling = dataclasses.replace(self.sampling, **{"num_candidates": 1, "temperature": 0.0,
                                                         **(settings or {})})
        prompt, routes = self.chat.research_request(context, draft, steps, sampling)
        decoded, _ = await self._decode(prompt, sampling, routes)
        output, flops, tokens = self.chat.research_output(prompt, decoded.candidates, decoded.reused)
        return Researched(flops, tokens, self._energy_kwh(decoded.seconds), output)

    async def finish(self, context: list[Turn], replies: list[str], truncated: list[bool],
                     max_tokens: int | None = None, stop: list[str] = (),
                     top_logprobs: int | None = None) -> list[dict]:
        """The replies as the client gets them: cut at stop strings and max_tokens, counted, with
        finish_reason and (on request) logprobs (lamda.turn.ChatModel.finish)."""
        return await asyncio.to_thread(self.chat.finish, context, replies, truncated,
                                       max_tokens, tuple(stop), top_logprobs)


@serve.deployment
class Ranker(_ModelReplica):
    def __init__(self, model_path: str, threads: int | None = None):
        super().__init__(model_path, threads)
        self.cfg = RankConfig()

    def reconfigure(self, config: dict) -> None:
        """user_config: safety_threshold, fallback."""
        self.cfg = from_user_config(RankConfig, config)

    async def rank(self, context: list[Turn], candidates: list[Candidate]) -> RankResult:
        return await self._rank(context, candidates)

    async def rank_reply(self, context: list[Turn], reply: str) -> RankResult:
        """One reply written elsewhere (the research loop's), through the same safety filter."""
        return await self._rank(context, [self.chat.candidate(reply)])

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def _rank(self, contexts: list[list[Turn]], candidates: list[list[Candidate]]) -> list[RankResult]:
        """Concurrent conversations scored in one prefill, off the event loop; the energy is
        shared by their scored tokens."""
        return await asyncio.to_thread(self._rank_many, contexts, candidates)

    def _rank_many(self, contexts: list[list[Turn]], candidates: list[list[Candidate]]) -> list[RankResult]:
        meter = self._meter()
        scored = self.chat.score_many(list(zip(contexts, candidates)), self.cfg)
        kwh, total = meter.kwh(), sum(t["scored"] for _, _, t in scored) or 1
        return [RankResult(flops, tokens, kwh * tokens["scored"] / total, ranked)
                for ranked, flops, tokens in scored]


@serve.deployment(request_router_config=CONVERSATION_AFFINITY)
class Toolset:
    """Calculator, translator (dictd, optionally LibreTranslate) and retrieval over an index (a
    local SQLite file, or an s3:// one fetched once per node). Retrieval remembers per
    conversation which results it gave (bounded: `max_sessions`, each for `session_ttl_s` idle);
    a conversation's queries come to the same replica (CONVERSATION_AFFINITY)."""

    def __init__(self, index_path: str | None = None, translate_url: str | None = None,
                 max_sessions: int = 10_000, session_ttl_s: float = 3600.0):
        tools = Tools.from_env(translate_url)
        if index_path:
            tools.retriever = Retriever(cached(index_path), max_sessions=max_sessions,
                                        session_ttl_s=session_ttl_s)
        self.tools = tools.warm_up()
        self.sessions = Gauge("lamda_tool_sessions", "conversations whose retrieval state this "
                              "Toolset replica holds")

    async def ping(self) -> bool:
        return True

    async def run(self, query: str, session: str | None = None) -> list[dict]:
        calls = [dataclasses.asdict(c) for c in self.tools.run(query, session)]
        if self.tools.retriever is not None:
            self.sessions.set(len(self.tools.retriever.sessions))
        return calls
