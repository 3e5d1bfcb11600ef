"""The model-side deployments of the chat graph: Sampler, Ranker and Toolset.

Sampler and Ranker each hold the model (loaded from an export: safetensors + config + tokenizer,
local or s3://). The Sampler batches concurrent conversations into one decode (`@serve.batch`);
the Ranker scores a conversation's candidates by re-encoding them in one prefill, so the two scale
separately (in one process, lamda.chat reuses the decoding cache instead). Settings that may change
while serving arrive as `user_config` through `reconfigure`.
"""

from __future__ import annotations

import dataclasses
import os
import time

import torch
from ray import serve
from ray.serve.metrics import Gauge

from lamda.accounting import EnergyMeter, hardware
from lamda.chat import ChatModel
from lamda.checkpoint import load_export, load_export_dispatched
from lamda.data import ResearchStep, Turn
from lamda.decode import Candidate, SamplingConfig
from lamda.rank import RankConfig
from lamda.storage import cached
from lamda.tools import Toolset as Tools
from lamda.tools.retrieval import Retriever


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


def from_user_config(cls, config: dict):
    """The config dataclass with the user_config fields it knows set (unknown keys are refused)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = set(config) - fields
    if unknown:
        raise ValueError(f"unknown {cls.__name__} settings in user_config: {sorted(unknown)}")
    return cls(**config)


def turns(context: list[dict]) -> list[Turn]:
    return [Turn(t["speaker"], t["text"]) for t in context]


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


@serve.deployment
class Sampler(_ModelReplica):
    def __init__(self, model_path: str, threads: int | None = None):
        super().__init__(model_path, threads)
        self.sampling = SamplingConfig()
        self.chat.warm_up(self.sampling)  # on GPU: compile the CUDA-graph step before serving

    def reconfigure(self, config: dict) -> None:
        """user_config: num_candidates, top_k, temperature, max_new_tokens, seed."""
        self.sampling = from_user_config(SamplingConfig, config)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.002)
    async def generate(self, contexts: list[list[dict]], settings: list[dict]) -> list[dict]:
        """Candidates for each context; concurrent requests share one decode, each with its own
        sampling `settings` (SamplingConfig fields over the replica's user_config)."""
        meter, t0 = self._meter(), time.perf_counter()
        cfgs = [dataclasses.replace(self.sampling, **s) for s in settings]
        results = self.chat.sample([turns(c) for c in contexts], cfgs)
        kwh, seconds = meter.kwh(), time.perf_counter() - t0
        total = sum(tok["prompt"] + tok["generated"] for _, _, tok in results) or 1
        out = []
        for cands, flops, tokens in results:
            share = (tokens["prompt"] + tokens["generated"]) / total
            out.append({"candidates": [dataclasses.asdict(c) for c in cands], "flops": flops,
                        "tokens": tokens, "energy_kwh": kwh * share, "batch": len(contexts),
                        "seconds": seconds})
        return out

    async def research(self, context: list[dict], draft: str, steps: list[dict],
                       settings: dict | None = None) -> dict:
        """The research task's next output for one conversation; `settings`: SamplingConfig
        fields over the replica's user_config (the Chat sends num_candidates and temperature)."""
        meter = self._meter()
        sampling = dataclasses.replace(self.sampling, **{"num_candidates": 1, "temperature": 0.0,
                                                         **(settings or {})})
        output, flops, tokens = self.chat.research(
            turns(context), draft, [ResearchStep(s["query"], tuple(s["results"])) for s in steps],
            sampling)
        return {"output": output, "flops": flops, "tokens": tokens, "energy_kwh": meter.kwh()}

    async def finish(self, context: list[dict], replies: list[str], truncated: list[bool],
                     max_tokens: int | None = None, stop: list[str] = (),
                     top_logprobs: int | None = None) -> list[dict]:
        """The replies as the client gets them: cut at stop strings and max_tokens, counted, with
        finish_reason and (on request) logprobs (lamda.chat.ChatModel.finish)."""
        return self.chat.finish(turns(context), replies, truncated, max_tokens, tuple(stop),
                                top_logprobs)


@serve.deployment
class Ranker(_ModelReplica):
    def __init__(self, model_path: str, threads: int | None = None):
        super().__init__(model_path, threads)
        self.cfg = RankConfig()

    def reconfigure(self, config: dict) -> None:
        """user_config: safety_threshold, fallback."""
        self.cfg = from_user_config(RankConfig, config)

    async def rank(self, context: list[dict], candidates: list[dict]) -> dict:
        return self._rank(context, [Candidate(**c) for c in candidates])

    async def rank_reply(self, context: list[dict], reply: str) -> dict:
        """One reply written elsewhere (the research loop's), through the same safety filter."""
        return self._rank(context, [self.chat.candidate(reply)])

    def _rank(self, context: list[dict], candidates: list[Candidate]) -> dict:
        meter = self._meter()
        ranked, flops, tokens = self.chat.score(turns(context), candidates, self.cfg)
        return {"ranked": ranked.to_dict(), "flops": flops, "tokens": tokens,
                "energy_kwh": meter.kwh()}


@serve.deployment
class Toolset:
    """Calculator, translator (dictd, optionally LibreTranslate) and retrieval over an index (a
    local SQLite file, or an s3:// one fetched once per node). Retrieval remembers per
    conversation which results it gave (bounded: `max_sessions`, each for `session_ttl_s` idle)."""

    def __init__(self, index_path: str | None = None, translate_url: str | None = None,
                 max_sessions: int = 10_000, session_ttl_s: float = 3600.0):
        if translate_url:
            os.environ["LAMDA_TRANSLATE_URL"] = translate_url
        tools = Tools.from_env()
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
