"""Sample-and-rank decoding (paper §3), as small pure functions in the style of gpt-fast.

    gen = generate(model, tok, prompts, SamplingConfig(num_candidates=16, top_k=40))

1. `prefill` runs every prompt once (left-padded into one batch) and fills a KV cache.
2. The cache is expanded to N candidate rows per prompt without recomputing anything.
3. `decode_one_token` advances all B x N rows together; `sample_rows` draws each next token
   with each prompt's own settings (temperature, top-k, top-p, seed, length, stop strings), so
   requests with different settings share one batch. Special tokens are masked out (`text_only_mask`): a response holds ordinary text and ends with
   <eot>; `first_tokens` restricts the first token (the research task's routing word).
   On GPU, `GraphStep` runs it compiled into a CUDA graph over a static KV cache.
   A row stops at <eot>; a row still open at `max_new_tokens` gets a forced <eot> (truncated), so
   every response ends the way the fine-tuning formats expect and the discriminators can be
   appended right after it (lamda.rank reuses this cache).

Candidates carry their summed log-likelihood under the model (temperature 1, over the tokens a
response may hold, whatever temperature and top-k were used to sample) and their length, <eot>
included.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from lamda.model import KVCache, LaMDA, layer_devices
from lamda.tokenizer import Tokenizer


@dataclass(frozen=True)
class SamplingConfig:
    """How the candidates of sample-and-rank are drawn (the paper, "Decoding")."""

    num_candidates: int = 16  # candidates per prompt (paper: 16)
    top_k: int = 40  # sample among the k most likely tokens (paper: 40)
    temperature: float = 1.0  # softmax temperature (paper: none, i.e. 1.0); 0: greedy
    max_new_tokens: int = 64  # longest candidate in tokens, the final <eot> included
    seed: int | None = None  # sampling seed (none: nondeterministic)
    length_alpha: float = 1.0  # exponent of the length normalisation in Candidate.score
    # nucleus: the fewest top-k tokens holding this probability (1: all, the paper's top-k alone).
    # 0.9 drops the tail that `tiny`'s copy head spreads over the context's pieces: well-formed
    # small talk 79% against 52% at 1.0, tool answers within noise (bench/RESULTS.md)
    top_p: float = 0.9
    stop: tuple[str, ...] = ()  # a candidate ends before the first of these strings

    def __post_init__(self):
        if self.num_candidates < 1 or self.top_k < 1 or self.max_new_tokens < 1:
            raise ValueError("num_candidates, top_k and max_new_tokens must be at least 1")
        if self.temperature < 0 or not 0 <= self.top_p <= 1:
            raise ValueError("temperature must be >= 0 and top_p in [0, 1]")


@dataclass
class Candidate:
    ids: list[int]  # response tokens, without the final <eot>
    text: str
    logprob: float  # sum of log p(token) over the response and its <eot>
    length: int  # tokens scored by logprob (response + <eot>)
    truncated: bool  # reached max_new_tokens and got a forced <eot>
    alpha: float = 1.0
    stopped: bool = False  # ended at a stop string (text and ids end before it)

    @property
    def score(self) -> float:
        """Length-normalised log-likelihood, used to rank a pre-trained model's candidates:

            score = (sum_t log p(y_t | x, y_<t)) / length ** alpha

        alpha = 1 gives the mean per-token log-likelihood (Meena's sample-and-rank); alpha = 0 the
        raw sum, which favours short replies.
        """
        return self.logprob / max(1, self.length) ** self.alpha


@dataclass
class Generation:
    """Candidates of every prompt plus the state that ranking reuses."""

    candidates: list[list[Candidate]]  # [prompt][candidate]
    cache: KVCache  # rows: prompt-major, B x N; holds prompt + response + <eot> (GraphStep's
    # static cache: valid until the step's next turn; B may include padding prompts at the end)
    prompt_len: int  # padded prompt length T (responses start at position T)
    lengths: Tensor  # (B x N,) response length incl. <eot> per row
    stopped: bool = False  # some rows ended at a stop string: the cache no longer matches them


def sample_rows(logits: Tensor, temperature: Tensor, top_k: Tensor, top_p: Tensor,
                noise: Tensor) -> Tensor:
    """One token per row (R,), each row with its own settings.

    logits (R, V); temperature, top_p (R,) float; top_k (R,) long; noise (R, K) Exp(1) draws with
    K = top_k.max(). Among each row's top-k tokens, the fewest whose probability (at its
    temperature) reaches top_p are kept, and one is drawn by the exponential race
    argmax(p / noise), which samples from p exactly. Temperature 0 takes the most likely token.
    """
    K = noise.shape[1]
    rank = torch.arange(K, device=logits.device)
    vals, idx = torch.topk(logits.float(), K, dim=-1)  # (R, K), most likely first
    keep = rank < top_k[:, None]
    scaled = torch.where(keep, vals / temperature.clamp_min(1e-6)[:, None], float("-inf"))
    probs = torch.softmax(scaled, dim=-1)
    # the nucleus: tokens until the probability before them reaches top_p (at least the first)
    keep &= (probs.cumsum(-1) - probs < top_p[:, None]) | (rank == 0)
    choice = (torch.where(keep, probs, 0.0) / noise).argmax(-1)
    choice = torch.where(temperature > 0, choice, 0)
    return idx.gather(-1, choice[:, None]).squeeze(-1)


def token_logprobs(logits: Tensor, tokens: Tensor) -> Tensor:
    """log p(token) (R,) under the untempered full softmax of logits (R, V)."""
    return torch.log_softmax(logits.float(), dim=-1).gather(-1, tokens[:, None]).squeeze(-1)


def before_stop(text: str, stop: tuple[str, ...]) -> str | None:
    """`text` up to its first stop string, or None when it holds none."""
    at = [text.find(s) for s in stop if s in text]
    return text[:min(at)] if at else None


def sample_top_k(logits: Tensor, top_k: int, temperature: float = 1.0,
                 generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """logits (R, V) -> (tokens (R,), log p(token) (R,)): `sample_rows` with one setting."""
    R, k = logits.shape[0], min(top_k, logits.shape[-1])
    full = lambda v, dtype=torch.float: torch.full((R,), v, dtype=dtype, device=logits.device)  # noqa: E731
    noise = torch.empty(R, k, device=logits.device).exponential_(generator=generator)
    tokens = sample_rows(logits, full(temperature), full(k, torch.long), full(1.0), noise)
    return tokens, token_logprobs(logits, tokens)


class RowSettings:
    """Each prompt's SamplingConfig as per-row tensors for B x N rows, and its own random stream:
    a seeded prompt draws the same noise whatever else shares its batch."""

    def __init__(self, cfgs: list[SamplingConfig], vocab: int, device):
        self.cfgs, self.n = cfgs, cfgs[0].num_candidates
        per_row = lambda values, dtype: torch.tensor(values, dtype=dtype, device=device  # noqa: E731
                                                     ).repeat_interleave(self.n)
        self.top_k = [min(c.top_k, vocab) for c in cfgs]
        self.k = max(self.top_k)
        self.temperature = per_row([c.temperature for c in cfgs], torch.float)
        self.top_p = per_row([c.top_p for c in cfgs], torch.float)
        self.top_k_rows = per_row(self.top_k, torch.long)
        self.limit = per_row([c.max_new_tokens for c in cfgs], torch.long)  # tokens incl. <eot>
        self.steps = max(c.max_new_tokens for c in cfgs)
        self.text: list[list[int]] | None = ([[] for _ in range(len(cfgs) * self.n)]
                                             if any(c.stop for c in cfgs) else None)  # row tokens
        self.generators = []
        for c in cfgs:
            g = torch.Generator(device=device)
            g.manual_seed(c.seed) if c.seed is not None else g.seed()
            self.generators.append(g)

    def noise(self) -> Tensor:
        """(B x N, K) Exp(1) draws; a prompt's own top_k columns come from its generator."""
        rows = []
        for g, k in zip(self.generators, self.top_k):
            e = torch.empty(self.n, k, device=g.device).exponential_(generator=g)
            rows.append(torch.nn.functional.pad(e, (0, self.k - k), value=float("inf")))
        return torch.cat(rows)

    def stopped(self, tok: Tokenizer, nxt: Tensor, live: Tensor) -> list[int]:
        """Rows (still live) whose text so far holds one of their prompt's stop strings. Where a
        prompt has stop strings, the step's tokens (R,) and live rows (R,) are read in one go."""
        if self.text is None:
            return []
        tokens, alive = torch.stack([nxt, live.long()]).tolist()
        hits = []
        for b, c in enumerate(self.cfgs):
            for r in range(b * self.n, (b + 1) * self.n) if c.stop else ():
                if alive[r]:  # the row's text so far (an ended row's is never read again)
                    self.text[r].append(tokens[r])
                    if before_stop(tok.decode(self.text[r]), c.stop) is not None:
                        hits.append(r)
        return hits


# bytes a reply may not hold: the control characters, less tab, newline and carriage return
CONTROL_BYTES = frozenset(range(0x20)) - {0x09, 0x0A, 0x0D} | {0x7F}


def text_only_mask(tok: Tokenizer, vocab_size: int, device=None) -> Tensor:
    """(V,) additive mask: 0 for ordinary pieces and <eot>, -inf for the special tokens, padding,
    unknown, begin/end of sequence, the byte pieces of control characters (NUL among them) and
    ids beyond the tokenizer's vocabulary. A response can hold only text and end its turn; it can
    never forge a rating, a speaker or a routing word."""
    mask = torch.zeros(vocab_size, device=device)
    banned = [i for i in tok.special_ids.values() if i != tok.eot_id]
    banned += [tok.pad_id, tok.eos_id, tok.sp.unk_id(), tok.sp.bos_id()]
    banned += [i for i in range(tok.vocab_size) if tok.byte_value(i) in CONTROL_BYTES]
    mask[torch.tensor([i for i in banned if 0 <= i < vocab_size], device=device)] = float("-inf")
    mask[tok.vocab_size:] = float("-inf")
    return mask


def left_pad(prompts: list[list[int]], pad_id: int, device=None) -> tuple[Tensor, Tensor]:
    """Prompts -> tokens (B, T) left-padded, and key_mask (B, T), False on padding."""
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long, device=device)
    mask = torch.zeros((len(prompts), T), dtype=torch.bool, device=device)
    for b, p in enumerate(prompts):
        tokens[b, T - len(p):] = torch.tensor(p, dtype=torch.long)
        mask[b, T - len(p):] = True
    return tokens, mask


@torch.no_grad()
def prefill(model: LaMDA, tokens: Tensor, key_mask: Tensor, max_len: int) -> tuple[KVCache, Tensor]:
    """Run the prompts once; returns the filled cache and the last position's logits (B, V)."""
    B, T = tokens.shape
    dtype = next(model.parameters()).dtype
    cache = KVCache.empty(model.cfg, B, max_len, device=tokens.device, dtype=dtype,
                          layer_devices=layer_devices(model))
    return cache, forward_last(model, tokens, torch.arange(T, device=tokens.device), cache, key_mask)


@torch.no_grad()
def forward_last(model: LaMDA, tokens: Tensor, pos: Tensor, cache: KVCache,
                 key_mask: Tensor | None = None) -> Tensor:
    """Write tokens (B, T) at positions pos (T,) into the cache; the logits after the last (B, V)
    (the output layer only there)."""
    last = torch.zeros_like(tokens, dtype=torch.bool)
    last[:, -1] = True
    return model(tokens, pos, cache, key_mask=key_mask, only=last)


@torch.no_grad()
def decode_one_token(model: LaMDA, tokens: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
    """tokens (R,) at position pos (1,) -> next-token logits (R, V)."""
    return model(tokens[:, None], pos, cache)[:, -1]


class EagerStep:
    """The per-token step in plain PyTorch; every turn gets a fresh cache."""

    def batch(self, n_prompts: int) -> int:
        """How many prompts to decode for n_prompts (padding with copies of the last one)."""
        return n_prompts

    def rows(self, cache: KVCache, n: int) -> KVCache:
        """The prefilled cache (B rows) as the B x n candidate rows the steps will write."""
        return cache.expand(n)

    def __call__(self, model: LaMDA, tokens: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        return decode_one_token(model, tokens, pos, cache)


class GraphStep(EagerStep):
    """The per-token step compiled into a CUDA graph (torch.compile, mode="reduce-overhead").

    A graph replays fixed memory addresses, so the cache it writes must be the same tensors every
    turn: one cache per (rows, length) is allocated once, its tensors are marked static, and each
    turn's prefill is copied into it. Lengths are rounded up to `len_multiple` and the number of
    prompts to a power of two, so few shapes occur; the second shape makes the compiled step
    dynamic (torch.compile's automatic dynamic shapes), and later shapes only record a new graph.
    The `max_caches` most recently used caches are kept. Positions past the turn's own are never
    attended (causal mask).
    """

    def __init__(self, len_multiple: int = 128, max_caches: int = 4):
        self.len_multiple, self.max_caches = len_multiple, max_caches
        self.caches: dict[tuple[int, int], KVCache] = {}  # (rows, length) -> static cache
        self.step = torch.compile(decode_one_token, mode="reduce-overhead", fullgraph=True)

    def batch(self, n_prompts: int) -> int:
        return 1 << (n_prompts - 1).bit_length()

    def rows(self, cache: KVCache, n: int) -> KVCache:
        R = cache.batch * n
        S = -(-cache.max_len // self.len_multiple) * self.len_multiple
        if (R, S) in self.caches:
            self.caches[R, S] = self.caches.pop((R, S))  # most recently used last
        else:
            while len(self.caches) >= self.max_caches:
                self.caches.pop(next(iter(self.caches)))
            static = cache.map(lambda t, d: t.new_zeros(R, *t.shape[1:d], S, *t.shape[d + 1:]))
            for t, _ in static.parts():
                torch._dynamo.mark_static_address(t)
            self.caches[R, S] = static
        static, B, L = self.caches[R, S], cache.batch, cache.max_len
        for (dst, d), (src, _) in zip(static.parts(), cache.parts()):  # row b -> rows b*n .. b*n+n-1
            dst.narrow(d, 0, L).unflatten(0, (B, n)).copy_(src[:, None])
        static.key_mask[:, L:] = True
        return static

    def __call__(self, model: LaMDA, tokens: Tensor, pos: Tensor, cache: KVCache) -> Tensor:
        torch.compiler.cudagraph_mark_step_begin()
        return self.step(model, tokens, pos, cache)


def default_step(model: LaMDA) -> EagerStep:
    """`GraphStep` for a model on one GPU, `EagerStep` on CPU or across several GPUs."""
    devices = set(layer_devices(model))
    return GraphStep() if len(devices) == 1 and devices.pop().type == "cuda" else EagerStep()


@torch.no_grad()
def generate(model: LaMDA, tok: Tokenizer, prompts: list[list[int]],
             cfg: SamplingConfig | list[SamplingConfig], extra_cache: int = 2,
             step: EagerStep | None = None, first_tokens: list[int] | None = None) -> Generation:
    """Sample num_candidates responses for each prompt, all rows decoded as one batch.

    `cfg` is one SamplingConfig for every prompt or one per prompt (the same num_candidates):
    temperature, top-k, top-p, seed, max_new_tokens and stop strings then hold per prompt.
    Tokens are drawn from ordinary text and <eot> only (`text_only_mask`); `first_tokens`, when
    given, are the only tokens allowed first (e.g. the research task's TS, / User,).
    `extra_cache` positions are left free after the longest response (ranking appends there).
    `step` runs each token (default: `EagerStep`; `GraphStep` on GPU).
    """
    if not prompts or any(not p for p in prompts):
        raise ValueError("every prompt needs at least one token")
    cfgs = list(cfg) if isinstance(cfg, (list, tuple)) else [cfg] * len(prompts)
    if len(cfgs) != len(prompts) or len({c.num_candidates for c in cfgs}) != 1:
        raise ValueError("one SamplingConfig per prompt, all with the same num_candidates")
    device = next(model.parameters()).device
    N, eot = cfgs[0].num_candidates, tok.eot_id
    step = step or EagerStep()
    n_prompts = len(prompts)
    pad = step.batch(n_prompts) - n_prompts
    prompts, cfgs = prompts + [prompts[-1]] * pad, cfgs + [cfgs[-1]] * pad
    tokens, mask = left_pad(prompts, tok.pad_id, device)
    T = tokens.shape[1]
    cache, logits = prefill(model, tokens, mask, T + max(c.max_new_tokens for c in cfgs) + extra_cache)
    cache = step.rows(cache, N)
    logits = logits.repeat_interleave(N, dim=0)  # (R, V), R = B * N
    R, V = logits.shape
    rows = RowSettings(cfgs, V, device)
    text_only = text_only_mask(tok, V, device)
    first = text_only
    if first_tokens:  # only these first (special tokens allowed), then text as usual
        first = torch.full((V,), float("-inf"), device=device)
        first[torch.tensor(first_tokens, device=device)] = 0.0
    out = torch.full((R, rows.steps), tok.pad_id, dtype=torch.long, device=device)
    logprob = torch.zeros(R, device=device)
    lengths = torch.zeros(R, dtype=torch.long, device=device)
    done = torch.zeros(R, dtype=torch.bool, device=device)
    stopped = torch.zeros(R, dtype=torch.bool, device=device)
    for t in range(rows.steps):
        logits = logits.float() + (first if t == 0 else text_only)  # (R, V)
        nxt = sample_rows(logits, rows.temperature, rows.top_k_rows, rows.top_p, rows.noise())
        nxt = torch.where(rows.limit == t + 1, eot, nxt)  # out of room: end these rows with <eot>
        logp = token_logprobs(logits, nxt)
        live = ~done
        out[:, t] = torch.where(live, nxt, out[:, t])
        logprob += torch.where(live, logp, torch.zeros_like(logp))
        lengths += live.long()
        done |= nxt == eot
        hits = rows.stopped(tok, nxt, live & ~done)
        if hits:
            hit = torch.tensor(hits, device=device)
            done[hit] = stopped[hit] = True
        if t == rows.steps - 1 or (t % 8 == 7 and bool(done.all())):
            break  # all done is checked now and then: each check waits for the GPU
        pos = torch.tensor([T + t], device=device)
        logits = step(model, torch.where(done, eot, nxt), pos, cache)

    tokens_out, lps, lens, stops = out.tolist(), logprob.tolist(), lengths.tolist(), stopped.tolist()
    candidates = [make_candidates(tok, cfgs[b], tokens_out[b * N:(b + 1) * N], lps[b * N:(b + 1) * N],
                                  lens[b * N:(b + 1) * N], stops[b * N:(b + 1) * N])
                  for b in range(n_prompts)]
    return Generation(candidates, cache, T, lengths, bool(stopped.any()))


def make_candidates(tok: Tokenizer, cfg: SamplingConfig, tokens: list[list[int]],
                    logprobs: list[float], lengths: list[int], stopped: list[bool]
                    ) -> list[Candidate]:
    """One prompt's rows as candidates: the tokens drawn per row, their summed log-likelihood,
    the response length (<eot> included) and whether the row ended at a stop string."""
    out = []
    for ids, lp, n, stop in zip(tokens, logprobs, lengths, stopped):
        if stop:  # ends before its first stop string; logprob covers what was generated
            text = before_stop(tok.decode(ids[:n]), cfg.stop)
            out.append(Candidate(tok.encode(text), text, lp, n, False, cfg.length_alpha,
                                 stopped=True))
            continue
        ids = ids[:n - 1]  # drop the final <eot>
        truncated = n == cfg.max_new_tokens  # its <eot> was forced at its last step
        out.append(Candidate(ids, tok.decode(ids), lp, n, truncated, cfg.length_alpha))
    return out


def best_by_likelihood(candidates: list[Candidate]) -> Candidate:
    """The pre-trained model's choice: the highest length-normalised log-likelihood."""
    return max(candidates, key=lambda c: c.score)
