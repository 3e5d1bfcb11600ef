"""Continuous batching: one decode loop per model replica that every request joins.

    engine = DecodeEngine(model, tok)
    future = engine.submit(prompt_ids, SamplingConfig(num_candidates=16, top_k=40))
    candidates = future.result().candidates

A request's prompt is prefilled when it is admitted, at a step boundary, and its N candidate rows
join the rows already decoding; a request leaves as soon as all its rows have ended. So a request
arriving while others decode waits at most one step (plus its prefill), not for the whole batch,
and a short reply is not held back by a long one. The loop runs in its own thread: callers (the
Sampler's event loop) never block on the model. `future.cancel()` frees a request's rows at the
next step.

The rows share one KV cache whose columns are aligned at the decoding position: a joining prompt
is left-padded to the current column (or, when longer, every running row is padded on the left).
The relative attention bias sees only distances between positions, so padding changes nothing a
row attends to: a request decodes the same candidates alone or next to others (same seed). Each
request keeps its own sampling settings and random stream (lamda.decode.RowSettings). Admission
is bounded by `max_rows` and by `max_cache_tokens` (rows x cache columns); requests beyond wait,
first come first served.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lamda.decode import (Candidate, RowSettings, SamplingConfig, decode_one_token, left_pad,
                          make_candidates, prefill, sample_rows, text_only_mask, token_logprobs)
from lamda.model import KVCache, LaMDA
from lamda.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 256  # candidate rows decoding at once
    max_cache_tokens: int = 1 << 20  # rows x cache columns (the KV cache's size in positions)
    grow: int = 32  # cache columns added at a time
    extra_cache: int = 2  # free positions kept after a response (as lamda.decode.generate)


@dataclass
class Decoded:
    candidates: list[Candidate]
    seconds: float  # this request's share of the device time (each step split by rows)


@dataclass
class _Request:
    prompt: list[int]
    cfg: SamplingConfig
    first: Tensor | None  # (V,) additive mask of the first token, or None for text only
    future: Future
    rows: RowSettings | None = None
    step: int = 0  # tokens drawn so far
    seconds: float = 0.0  # share of the device time so far
    out: list[Tensor] = field(default_factory=list)  # per step: (N,) tokens

    @property
    def n(self) -> int:
        return self.cfg.num_candidates


class DecodeEngine:
    def __init__(self, model: LaMDA, tok: Tokenizer, cfg: EngineConfig = EngineConfig()):
        self.model, self.tok, self.cfg = model, tok, cfg
        self.device = next(model.parameters()).device
        self.vocab = model.cfg.vocab_size
        self.text_only = text_only_mask(tok, self.vocab, self.device)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []  # in row order
        self._cache: KVCache | None = None
        self._col = 0  # the next column to write (every row's position)
        self._logits: Tensor | None = None  # (R, V): each row's next-token logits
        self._state: dict[str, Tensor] = {}  # per row: done, stopped, logprob, length
        self.steps = 0  # decode steps run (for tests and metrics)
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
        self._thread.start()

    # -- the caller's side ---------------------------------------------------------------

    def submit(self, prompt: list[int], cfg: SamplingConfig,
               first_tokens: list[int] | None = None) -> Future:
        """A future of the prompt's `cfg.num_candidates` candidates (a `Decoded`);
        `first_tokens`, when given, are the only tokens allowed first (the research task's
        routing words)."""
        if not prompt:
            raise ValueError("a prompt needs at least one token")
        if self._closed:
            raise RuntimeError("the decode engine is closed")
        first = None
        if first_tokens:
            first = torch.full((self.vocab,), float("-inf"), device=self.device)
            first[torch.tensor(first_tokens, device=self.device)] = 0.0
        future: Future = Future()
        self._queue.put(_Request(list(prompt), cfg, first, future))
        return future

    @property
    def rows(self) -> int:
        """Candidate rows decoding now."""
        return sum(r.n for r in self._running)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=60)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            block = not self._running and not self._waiting
            try:
                item = self._queue.get(timeout=None if block else 0) if block else self._queue.get_nowait()
                while True:
                    if item is None:
                        return self._fail_all(RuntimeError("the decode engine is closed"))
                    self._waiting.append(item)
                    item = self._queue.get_nowait()
            except queue.Empty:
                pass
            try:
                with torch.no_grad():
                    self._admit()
                    if self._running:
                        self._step()
            except Exception as e:  # a failed step fails its requests, not the replica
                log.exception("decode step failed")
                self._fail_all(e)

    @staticmethod
    def _share(requests: list[_Request], seconds: float) -> None:
        """Device time spent on `requests` together, split among them by their rows."""
        rows = sum(r.n for r in requests) or 1
        for r in requests:
            r.seconds += seconds * r.n / rows

    def _fail_all(self, error: Exception) -> None:
        for r in self._running + self._waiting:
            if not r.future.done():
                r.future.set_exception(error)
        self._running, self._waiting, self._cache, self._logits, self._col = [], [], None, None, 0

    def _fits(self, extra_rows: int, columns: int) -> bool:
        rows = self.rows + extra_rows
        return rows <= self.cfg.max_rows and rows * columns <= self.cfg.max_cache_tokens

    def _admit(self) -> None:
        """Prefill the waiting requests that fit and add their rows to the running batch."""
        self._waiting = [r for r in self._waiting if not r.future.cancelled()]
        joining: list[_Request] = []
        for r in self._waiting:
            columns = max(self._col, len(r.prompt)) + r.cfg.max_new_tokens + self.cfg.extra_cache
            if not self._fits(sum(j.n for j in joining) + r.n, columns):
                break  # first come, first served: later requests wait too
            joining.append(r)
        if not joining and not self._running and self._waiting:
            joining = [self._waiting[0]]  # alone over the budget: it still runs, by itself
        if not joining:
            return
        self._waiting = self._waiting[len(joining):]
        t0 = time.perf_counter()
        tokens, mask = left_pad([r.prompt for r in joining], self.tok.pad_id, self.device)
        L = tokens.shape[1]
        cache, logits = prefill(self.model, tokens, mask, L)  # (B, H, L, D), (B, V)
        counts = torch.tensor([r.n for r in joining], device=self.device)
        cache = KVCache([k.repeat_interleave(counts, 0) for k in cache.k],
                        [v.repeat_interleave(counts, 0) for v in cache.v],
                        cache.key_mask.repeat_interleave(counts, 0))
        logits = logits.repeat_interleave(counts, 0)
        for r in joining:
            r.rows = RowSettings([r.cfg], self.vocab, self.device)
        self._share(joining, time.perf_counter() - t0)
        if self._cache is None:
            self._cache, self._col, self._logits = cache, L, logits
            self._state = self._new_state(logits.shape[0])
        else:
            if L > self._col:  # the running rows move right: padding on their left
                self._cache = _pad_left(self._cache, L - self._col)
                self._col = L
            new = _pad_left(cache, self._col - L)
            free = self._cache.max_len - self._col
            new = _pad_right(new, free)
            self._cache = KVCache([torch.cat([a, b]) for a, b in zip(self._cache.k, new.k)],
                                  [torch.cat([a, b]) for a, b in zip(self._cache.v, new.v)],
                                  torch.cat([self._cache.key_mask, new.key_mask]))
            self._logits = torch.cat([self._logits, logits])
            extra = self._new_state(logits.shape[0])
            self._state = {k: torch.cat([self._state[k], extra[k]]) for k in self._state}
        self._running += joining

    def _new_state(self, rows: int) -> dict[str, Tensor]:
        zeros = lambda dtype: torch.zeros(rows, dtype=dtype, device=self.device)  # noqa: E731
        return {"done": zeros(torch.bool), "stopped": zeros(torch.bool),
                "logprob": zeros(torch.float), "length": zeros(torch.long)}

    def _per_row(self, name: str) -> Tensor:
        return torch.cat([getattr(r.rows, name) for r in self._running])

    def _step(self) -> None:
        """Draw every row's next token; finish the requests whose rows all ended; run the model
        one position for the rest."""
        t0, running, s = time.perf_counter(), self._running, self._state
        logits = self._logits.float() + self.text_only
        at = 0
        for r in running:  # a request's first token: only its allowed ones
            if r.step == 0 and r.first is not None:
                logits[at:at + r.n] = self._logits[at:at + r.n].float() + r.first
            at += r.n
        K = max(r.rows.k for r in running)
        noise = torch.cat([torch.nn.functional.pad(r.rows.noise(), (0, K - r.rows.k), value=float("inf"))
                           for r in running])
        nxt = sample_rows(logits, self._per_row("temperature"), self._per_row("top_k_rows"),
                          self._per_row("top_p"), noise)
        steps = torch.cat([torch.full((r.n,), r.step + 1, device=self.device) for r in running])
        nxt = torch.where(self._per_row("limit") == steps, self.tok.eot_id, nxt)
        logp = token_logprobs(logits, nxt)
        live = ~s["done"]
        s["logprob"] += torch.where(live, logp, torch.zeros_like(logp))
        s["length"] += live.long()
        s["done"] |= nxt == self.tok.eot_id
        at = 0
        for r in running:
            r.out.append(torch.where(live[at:at + r.n], nxt[at:at + r.n], self.tok.pad_id))
            if r.cfg.stop:
                out = torch.stack(r.out, 1)
                for i in r.rows.stopped(self.tok, out, r.step, (live & ~s["done"])[at:at + r.n]):
                    s["done"][at + i] = s["stopped"][at + i] = True
            r.step += 1
            at += r.n
        self._share(running, time.perf_counter() - t0)
        nxt = self._leave(nxt)
        if self._running:
            t0 = time.perf_counter()
            if self._col >= self._cache.max_len:
                self._cache = _pad_right(self._cache, self.cfg.grow)
            self._cache.key_mask[:, self._col] = True
            feed = torch.where(self._state["done"], self.tok.eot_id, nxt)  # ended rows idle on <eot>
            pos = torch.tensor([self._col], device=self.device)
            self._logits = decode_one_token(self.model, feed, pos, self._cache)
            self._col += 1
            self.steps += 1
            self._share(self._running, time.perf_counter() - t0)

    def _leave(self, nxt: Tensor) -> Tensor:
        """Requests whose rows all ended (or that were cancelled) leave, their rows freed;
        returns the remaining rows' tokens."""
        s, stay, keep, at = self._state, [], [], 0
        done = s["done"].tolist()
        for r in self._running:
            rows = list(range(at, at + r.n))
            at += r.n
            if r.future.cancelled():
                continue
            if all(done[i] for i in rows):
                if not r.future.done():
                    r.future.set_result(Decoded(make_candidates(
                        self.tok, r.cfg, torch.stack(r.out, 1).tolist(), s["logprob"][rows].tolist(),
                        s["length"][rows].tolist(), s["stopped"][rows].tolist()), r.seconds))
                continue
            stay.append(r)
            keep += rows
        self._running = stay
        if len(keep) == len(done):
            return nxt
        if not keep:
            self._cache, self._logits, self._state, self._col = None, None, {}, 0
            return nxt[:0]
        idx = torch.tensor(keep, device=self.device)
        self._cache = self._trim(KVCache([k.index_select(0, idx.to(k.device)) for k in self._cache.k],
                                         [v.index_select(0, idx.to(v.device)) for v in self._cache.v],
                                         self._cache.key_mask.index_select(0, idx)))
        self._logits = self._logits.index_select(0, idx)
        self._state = {k: v.index_select(0, idx) for k, v in s.items()}
        return nxt.index_select(0, idx)

    def _trim(self, cache: KVCache) -> KVCache:
        """Drop the leading columns no remaining row attends to (padding of rows that left)."""
        used = cache.key_mask[:, :self._col].any(0)
        first = int(used.float().argmax()) if bool(used.any()) else self._col
        if first == 0:
            return cache
        self._col -= first
        return KVCache([k[:, :, first:].contiguous() for k in cache.k],
                       [v[:, :, first:].contiguous() for v in cache.v],
                       cache.key_mask[:, first:].contiguous())


def _pad_left(cache: KVCache, n: int) -> KVCache:
    """`n` empty (masked) columns before the cache's."""
    if n == 0:
        return cache
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, n, 0))  # noqa: E731  (B, H, S, D)
    mask = torch.nn.functional.pad(cache.key_mask, (n, 0), value=False)
    return KVCache([pad(k) for k in cache.k], [pad(v) for v in cache.v], mask)


def _pad_right(cache: KVCache, n: int) -> KVCache:
    """`n` free columns after the cache's (written by later steps)."""
    if n == 0:
        return cache
    pad = lambda t: torch.nn.functional.pad(t, (0, 0, 0, n))  # noqa: E731
    mask = torch.nn.functional.pad(cache.key_mask, (0, n), value=True)
    return KVCache([pad(k) for k in cache.k], [pad(v) for v in cache.v], mask)
