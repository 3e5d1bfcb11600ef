"""Continuous batching: one decode loop per model replica that every request joins.

    engine = DecodeEngine(model, tok)
    future = engine.submit(prompt_ids, SamplingConfig(num_candidates=16, top_k=40))
    candidates = future.result().candidates

A request's prompt is prefilled when it is admitted, at a step boundary, and its N candidate rows
join the rows already decoding; a row that ends frees its slot at once (for a joining request to
fill, or for the next compaction to drop), and a request leaves as soon as all its rows have
ended. So a request arriving while others decode waits at most one step (plus its prefill), not
for the whole batch, and a short reply is not held back by a long one, nor a running request's
candidates by the ones that ended. The loop runs in its own thread: callers (the Sampler's event
loop) never block on the model. `future.cancel()` frees a request's rows at the next step. A step
waits for the device once (to read which rows ended), and once more when requests finish (to read
their tokens), however many requests decode: the rows' bookkeeping is kept here, not read back
(with requests that have stop strings, the step's tokens come in that one read too).

The rows share one KV cache whose columns are aligned at the decoding position: a joining prompt
is left-padded to the current column (or, when longer, every running row is padded on the left).
The relative attention bias sees only distances between positions, so padding changes nothing a
row attends to: a request decodes the same candidates alone or next to others (same seed). Each
request keeps its own sampling settings and random stream (lamda.decode.RowSettings). A row that
ends, or a request that leaves, frees slots that the next requests fill in place, so the cache is
copied only when it grows, or is compacted once many slots stand free (or its leading columns are
padding no row needs). Admission is bounded by `max_rows` decoding rows and by `max_cache_tokens`
(the cache's slots, free ones included, x columns; free slots are compacted away first when that
makes room); requests beyond wait, first come first served.

A prompt is prefilled once for all its candidates, and only from where it departs from a recent
prompt (lamda.prefix_cache): a turn's research steps continue its context's cache, and the next
turn the last one's.
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import torch
from torch import Tensor

from lamda.decode import (Candidate, RowSettings, SamplingConfig, before_stop, decode_one_token,
                          forward_last, left_pad, make_candidates, prefill, sample_rows, text_only_mask,
                          token_logprobs)
from lamda.model import KVCache, LaMDA
from lamda.prefix_cache import PrefixCache, row_columns
from lamda.tokenizer import Tokenizer

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineConfig:
    max_rows: int = 256  # candidate rows decoding at once
    max_cache_tokens: int = 1 << 20  # slots (free ones too) x cache columns: the KV cache's size
    grow: int = 32  # cache columns added at a time
    slack: float = 0.25  # compact when this share of rows (or of columns) is free or padding
    extra_cache: int = 2  # free positions kept after a response (as lamda.decode.generate)
    prefix_cache_tokens: int = 1 << 15  # recent prompts' positions kept for reuse (0: none)


@dataclass
class Decoded:
    candidates: list[Candidate]
    seconds: float  # this request's share of the device time (each step split by rows)
    reused: int = 0  # prompt positions taken from the prefix cache, not prefilled


@dataclass
class _Request:
    prompt: list[int]
    cfg: SamplingConfig
    first: Tensor | None  # (V,) additive mask of the first token, or None for text only
    future: Future
    rows: RowSettings | None = None
    slot_ids: list[int] | None = None  # the cache rows of its M <= N candidates still decoding
    cand_ids: list[int] | None = None  # which candidate each of those rows is
    slots: Tensor | None = None  # (M,) slot_ids on the device
    cands: Tensor | None = None  # (M,) cand_ids on the device
    start: int = 0  # the cache column its prompt begins at (the columns before are padding to it)
    step: int = 0  # tokens drawn so far
    seconds: float = 0.0  # share of the device time so far
    reused: int = 0  # prompt positions taken from the prefix cache
    out: Tensor | None = None  # (N, max_new_tokens) tokens drawn (pad after a row's end)
    text: list[list[int]] | None = None  # with stop strings: each candidate's tokens, on the host
    ended: dict[str, Tensor] | None = None  # logprob, length, stopped: (N,) each, set as each
    #                                         candidate's row ends

    @property
    def n(self) -> int:
        return self.cfg.num_candidates

    @property
    def live(self) -> int:
        """Rows still decoding."""
        return 0 if self.slot_ids is None else len(self.slot_ids)


class DecodeEngine:
    def __init__(self, model: LaMDA, tok: Tokenizer, cfg: EngineConfig = EngineConfig()):
        self.model, self.tok, self.cfg = model, tok, cfg
        self.device = next(model.parameters()).device
        self.vocab = model.cfg.vocab_size
        self.text_only = text_only_mask(tok, self.vocab, self.device)
        self._queue: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._waiting: list[_Request] = []
        self._running: list[_Request] = []
        self._reset()
        self.prefixes = PrefixCache(cfg.prefix_cache_tokens)
        self.steps = 0  # decode steps run (for tests and metrics)
        self.row_steps = 0  # rows run through the model, summed over the steps (idle slots too)
        self.prompt_tokens = 0  # prompt positions admitted
        self.prefix_tokens = 0  # of those, taken from the prefix cache instead of prefilled
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="decode-engine", daemon=True)
        self._thread.start()

    def _reset(self) -> None:
        self._cache: KVCache | None = None  # rows: slots, live or free
        self._col = 0  # the next column to write (every row's position)
        self._logits: Tensor | None = None  # (R, V): each slot's next-token logits
        self._row: dict[str, Tensor] = {}  # per slot: sampling settings and decoding state
        self._free: list[int] = []  # slots no request holds

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
        return sum(r.live for r in self._running)

    @property
    def requests(self) -> int:
        """Requests decoding now."""
        return len(self._running)

    def close(self) -> None:
        self._closed = True
        self._queue.put(None)
        self._thread.join(timeout=60)

    # -- the loop ------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            try:
                if not self._running and not self._waiting:
                    self._waiting.append(self._queue.get())  # idle: wait for work
                while True:
                    self._waiting.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if None in self._waiting:
                return self._fail_all(RuntimeError("the decode engine is closed"))
            try:
                with torch.no_grad():
                    self._admit()
                    if self._running:
                        self._step()
            except Exception as e:  # a failed step fails its requests, not the replica
                log.exception("decode step failed")
                self._fail_all(e)

    def _fail_all(self, error: Exception) -> None:
        for r in self._running + self._waiting:
            if r is not None and not r.future.done():
                r.future.set_exception(error)
        self._running, self._waiting = [], []
        self._reset()

    @staticmethod
    def _share(requests: list[_Request], seconds: float) -> None:
        """Device time spent on `requests` together, split among them by their live rows."""
        rows = sum(r.live for r in requests) or 1
        for r in requests:
            r.seconds += seconds * r.live / rows

    def _fits(self, extra_rows: int, columns: int, compacted: bool = False) -> bool:
        """Whether `extra_rows` more rows fit: at most `max_rows` decoding, and the cache they
        need (its slots, free ones included, unless `compacted`, x `columns`) within
        `max_cache_tokens`."""
        live = self.rows + extra_rows
        slots = self._logits.shape[0] if self._logits is not None else 0
        if compacted:
            slots = live
        else:  # joiners fill free slots first, then the cache grows
            slots += max(0, extra_rows - len(self._free))
        return live <= self.cfg.max_rows and slots * columns <= self.cfg.max_cache_tokens

    def _admit(self) -> None:
        """Prefill the waiting requests that fit and put their rows in free slots (or new ones)."""
        self._waiting = [r for r in self._waiting if not r.future.cancelled()]
        joining: list[_Request] = []
        for r in self._waiting:
            columns = max(self._col, len(r.prompt)) + r.cfg.max_new_tokens + self.cfg.extra_cache
            rows = sum(j.n for j in joining) + r.n
            if not self._fits(rows, columns):
                if not (self._free and self._fits(rows, columns, compacted=True)):
                    break  # first come, first served: later requests wait too
                self._compact()  # the free slots' memory makes room
            joining.append(r)
        if not joining and not self._running and self._waiting:
            joining = [self._waiting[0]]  # alone over the budget: it still runs, by itself
        if not joining:
            return
        self._waiting = self._waiting[len(joining):]
        t0 = time.perf_counter()
        joining, new, logits = self._prefill(joining)
        counts = self._index([r.n for r in joining])
        new, logits = new.expand(counts), logits.repeat_interleave(counts, 0)  # N rows each
        L = new.max_len
        for r in joining:
            r.rows = RowSettings([r.cfg], self.vocab, self.device)
        state = {"temperature": torch.cat([r.rows.temperature for r in joining]),
                 "top_p": torch.cat([r.rows.top_p for r in joining]),
                 "top_k": torch.cat([r.rows.top_k_rows for r in joining]),
                 "limit": torch.cat([r.rows.limit for r in joining])}
        m = logits.shape[0]
        zeros = lambda dtype: torch.zeros(m, dtype=dtype, device=self.device)  # noqa: E731
        state.update(done=zeros(torch.bool), stopped=zeros(torch.bool), logprob=zeros(torch.float),
                     length=zeros(torch.long), step=zeros(torch.long), next=zeros(torch.long))
        if self._cache is None:
            self._cache, self._col, self._logits, self._row = new, L, logits, state
            slots = list(range(m))
        else:
            if L > self._col:  # the running rows move right: padding on their left
                self._cache = _pad_left(self._cache, L - self._col)
                for r in self._running:
                    r.start += L - self._col
                self._col = L
            new = _pad_right(_pad_left(new, self._col - L), self._cache.max_len - self._col)
            reuse, self._free = self._free[:m], self._free[m:]
            grow = m - len(reuse)
            if grow:  # more rows than free slots: the cache grows (a copy)
                self._cache = _cat(self._cache, new.select(list(range(len(reuse), m))))
                self._logits = torch.cat([self._logits, logits[len(reuse):]])
                self._row = {k: torch.cat([v, state[k][len(reuse):]]) for k, v in self._row.items()}
            if reuse:  # free slots filled in place
                idx = self._index(reuse)
                part = new.select(list(range(len(reuse))))
                for (dst, _), (src, _) in zip(self._cache.parts(), part.parts()):
                    dst[idx.to(dst.device)] = src
                self._logits[idx] = logits[:len(reuse)]
                for k, v in self._row.items():
                    v[idx] = state[k][:len(reuse)]
            total = self._logits.shape[0]
            slots = reuse + list(range(total - grow, total))
        at = 0
        for r in joining:
            self._place(r, slots[at:at + r.n], list(range(r.n)))
            r.start = self._col - len(r.prompt)
            r.out = torch.full((r.n, r.cfg.max_new_tokens), self.tok.pad_id, device=self.device)
            r.ended = {"logprob": torch.zeros(r.n, device=self.device),
                       "length": torch.zeros(r.n, dtype=torch.long, device=self.device),
                       "stopped": torch.zeros(r.n, dtype=torch.bool, device=self.device)}
            r.text = [[] for _ in range(r.n)] if r.cfg.stop else None
            at += r.n
        self._share(joining, time.perf_counter() - t0)
        self._running += joining

    def _prefill(self, joining: list[_Request]) -> tuple[list[_Request], KVCache, Tensor]:
        """The joining prompts' caches, one row each, left-padded to one width (B, H, L, D), and
        their last logits (B, V), in the order of the requests returned. A prompt that begins
        like a recent one is prefilled from where they differ (alone); the others together."""
        parts, fresh = [], []
        for r in joining:
            n, prefix = self.prefixes.match(r.prompt)
            if prefix is None:
                fresh.append(r)
                continue
            cache = _pad_right(prefix, len(r.prompt) - n)
            pos = torch.arange(n, len(r.prompt), device=self.device)
            rest = self._index(r.prompt[n:])[None]  # (1, S)
            logits = forward_last(self.model, rest, pos, cache)
            parts.append(([r], cache, logits))
            r.reused = n
            self.prefix_tokens += n
        if fresh:
            tokens, mask = left_pad([r.prompt for r in fresh], self.tok.pad_id, self.device)
            parts.insert(0, (fresh, *prefill(self.model, tokens, mask, tokens.shape[1])))
        L = max(cache.max_len for _, cache, _ in parts)
        for requests, cache, _ in parts:
            for b, r in enumerate(requests):
                self.prefixes.put(r.prompt, row_columns(cache, b, cache.max_len - len(r.prompt)))
        self.prompt_tokens += sum(len(r.prompt) for r in joining)
        caches = [_pad_left(cache, L - cache.max_len) for _, cache, _ in parts]
        return ([r for requests, _, _ in parts for r in requests],
                functools.reduce(_cat, caches), torch.cat([logits for _, _, logits in parts]))

    def _step(self) -> None:
        """Draw every row's next token; finish the requests whose rows all ended; run the model
        one position for the rest."""
        t0, running, row = time.perf_counter(), self._running, self._row
        logits = self._logits.float() + self.text_only
        for r in running:  # a request's first token: only its allowed ones
            if r.step == 0 and r.first is not None:
                logits[r.slots] = self._logits[r.slots].float() + r.first
        K = max(r.rows.k for r in running)
        noise = torch.full((logits.shape[0], K), float("inf"), device=self.device)
        for r in running:  # every candidate's draw, ended or not: the same stream alone or not
            noise[r.slots, :r.rows.k] = r.rows.noise()[r.cands]
        nxt = sample_rows(logits, row["temperature"], row["top_k"], row["top_p"], noise)
        row["step"] += 1
        nxt = torch.where(row["limit"] == row["step"], self.tok.eot_id, nxt)
        logp = token_logprobs(logits, nxt)
        live = ~row["done"]
        row["logprob"] += torch.where(live, logp, torch.zeros_like(logp))
        row["length"] += live.long()
        row["done"] |= nxt == self.tok.eot_id
        row["next"] = nxt
        for r in running:  # every slot a request holds is live: its ended rows left at _leave
            r.out[r.cands, r.step] = nxt[r.slots]
            r.step += 1
        stopping = [r for r in running if r.cfg.stop]
        done = self._stop(stopping, nxt) if stopping else None
        self._share(running, time.perf_counter() - t0)
        self._leave(done)
        if self._running:
            t0 = time.perf_counter()
            if self._col >= self._cache.max_len:
                self._cache = _pad_right(self._cache, self.cfg.grow)
            self._cache.key_mask[:, self._col] = True
            row = self._row  # renumbered if the cache was compacted
            feed = torch.where(row["done"], self.tok.eot_id, row["next"])  # ended rows idle on <eot>
            pos = torch.full((1,), self._col, device=self.device)
            self._logits = decode_one_token(self.model, feed, pos, self._cache)
            self._col += 1
            self.steps += 1
            self.row_steps += len(feed)
            self._share(self._running, time.perf_counter() - t0)

    def _stop(self, requests: list[_Request], nxt: Tensor) -> list[bool]:
        """The rows of `requests` (which have stop strings) whose text now holds one end, marked
        stopped. The step's tokens and ended rows are read at one sync; returns the ended rows
        (stopped ones included), which _leave then need not read."""
        row = self._row
        tokens, done = self._host(nxt, row["done"])
        hits = []
        for r in requests:
            for s, c in zip(r.slot_ids, r.cand_ids):
                r.text[c].append(tokens[s])
                if not done[s] and before_stop(self.tok.decode(r.text[c]), r.cfg.stop) is not None:
                    hits.append(s)
                    done[s] = True
        if hits:
            slots = self._index(hits)
            row["done"][slots] = row["stopped"][slots] = True
        return done

    def _leave(self, done: list[bool] | None = None) -> None:
        """Rows that ended give up their slots (masked out, idle until reused); requests whose
        rows all ended (or that were cancelled) leave; the cache is compacted when enough of it
        is free. The device is read once (which rows ended; or `done`, already read), and once
        more when requests finish (their tokens), not once per request."""
        row, stay, finished = self._row, [], []
        if done is None:
            (done,) = self._host(row["done"])
        for r in self._running:
            if r.future.cancelled():
                row["done"][r.slots] = True
                self._release(r.slots, r.slot_ids)
                continue
            ends = [done[s] for s in r.slot_ids]
            if any(ends):
                gone = self._index([i for i, e in enumerate(ends) if e])
                for k, v in r.ended.items():
                    v[r.cands[gone]] = row[k][r.slots[gone]]
                self._release(r.slots[gone], [s for s, e in zip(r.slot_ids, ends) if e])
                self._place(r, [s for s, e in zip(r.slot_ids, ends) if not e],
                            [c for c, e in zip(r.cand_ids, ends) if not e])
            if r.live:
                stay.append(r)
            elif not r.future.done():
                finished.append(r)
        if finished:
            values = iter(self._host(*(t for r in finished for t in (
                r.out, r.ended["logprob"], r.ended["length"], r.ended["stopped"]))))
            for r in finished:
                out, logprob, length, stopped = (next(values) for _ in range(4))
                r.future.set_result(Decoded(make_candidates(
                    self.tok, r.cfg, out, logprob, length, stopped), r.seconds, r.reused))
        self._running = stay
        if not stay:
            return self._reset()
        free_rows = len(self._free) > self.cfg.slack * self._logits.shape[0] and not self._waiting
        if free_rows or self._leading_padding() > self.cfg.slack * self._col:
            self._compact()

    def _release(self, slots: Tensor, slot_ids: list[int]) -> None:
        """Slots no row decodes in any more (`slots` on the device, `slot_ids` here): masked
        out, idle on <eot> until reused."""
        self._cache.key_mask[slots] = False
        self._free += slot_ids

    def _leading_padding(self) -> int:
        """How many leading columns no row attends to (padding of rows that left)."""
        return min(r.start for r in self._running)

    def _place(self, r: _Request, slot_ids: list[int], cand_ids: list[int]) -> None:
        """Request `r`'s live rows: in cache slots `slot_ids`, candidates `cand_ids`."""
        r.slot_ids, r.cand_ids = slot_ids, cand_ids
        r.slots, r.cands = self._index(slot_ids), self._index(cand_ids)

    def _index(self, values: list[int]) -> Tensor:
        """`values` as a long tensor on the device, copied without waiting for the device (from
        pinned memory on a GPU)."""
        t = torch.tensor(values, dtype=torch.long)
        return t.pin_memory().to(self.device, non_blocking=True) if self.device.type == "cuda" else t

    def _host(self, *tensors: Tensor) -> list[list]:
        """The tensors' values as lists, read from the device at one sync."""
        if self.device.type != "cuda":
            return [t.tolist() for t in tensors]
        copies = [torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True)
                  for t in tensors]
        torch.cuda.current_stream(self.device).synchronize()
        return [t.tolist() for t in copies]

    def _compact(self) -> None:
        """Keep only the held slots (renumbered) and the columns some row attends to."""
        keep = torch.cat([r.slots for r in self._running])
        self._cache = self._cache.select(keep)
        self._logits = self._logits.index_select(0, keep)
        self._row = {k: v.index_select(0, keep) for k, v in self._row.items()}
        at = 0
        for r in self._running:  # each request's rows, now consecutive in the order kept
            r.slot_ids = list(range(at, at + r.live))
            r.slots = torch.arange(at, at + r.live, device=self.device)
            at += r.live
        self._free = []
        first = self._leading_padding()
        if first:
            self._col -= first
            for r in self._running:
                r.start -= first
            self._cache = self._cache.map(lambda t, d: t.narrow(d, first, t.shape[d] - first).contiguous())


def _cat(a: KVCache, b: KVCache) -> KVCache:
    """Rows of `a`, then rows of `b` (the same columns)."""
    return a.map(lambda x, y, _: torch.cat([x, y]), b)


def _pad(cache: KVCache, before: int, after: int) -> KVCache:
    """Columns added before (masked: padding) and after (free, written by later steps)."""
    def pad(t: Tensor, d: int) -> Tensor:
        spec = (0, 0) * (t.dim() - 1 - d) + (before, 0)
        t = torch.nn.functional.pad(t, spec, value=False)
        spec = (0, 0) * (t.dim() - 1 - d) + (0, after)
        return torch.nn.functional.pad(t, spec, value=t.dtype == torch.bool)
    return cache.map(pad) if before or after else cache


def _pad_left(cache: KVCache, n: int) -> KVCache:
    """`n` empty (masked) columns before the cache's."""
    return _pad(cache, n, 0)


def _pad_right(cache: KVCache, n: int) -> KVCache:
    """`n` free columns after the cache's (written by later steps)."""
    return _pad(cache, 0, n)
