"""Continuous batching (lamda.engine): requests joining and leaving a running batch decode the
same candidates as alone (same seed), cancelled requests free their rows, no deadlock under 64
concurrent requests, a prompt that begins like an earlier one is prefilled only from where they
differ."""

import concurrent.futures as cf
import dataclasses
import time
from concurrent.futures import Future

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from lamda import tokenizer as tkn
from lamda.data import ResearchStep, Turn, research_prompt, response_prompt
from lamda.decode import SamplingConfig, generate
from lamda.engine import DecodeEngine, EngineConfig, _Request
from tests.unit.test_decode import both_models, model  # noqa: F401  (the EarlyStopper fixture)


@pytest.fixture()
def engine(model, tok):
    e = DecodeEngine(model, tok)
    yield e
    e.close()


def prompt(tok, text: str, turns: int = 1):
    return response_prompt(tok, [Turn("user", f"{text} {i}") for i in range(turns)])


def alone(model, tok, p, cfg, first=None):
    return [(c.ids, c.text, c.truncated, c.length) for c in
            generate(model, tok, [p], cfg, first_tokens=first).candidates[0]]


def key(decoded):
    return [(c.ids, c.text, c.truncated, c.length) for c in decoded.candidates]


def wait_steps(engine, n, timeout=30):
    deadline = time.monotonic() + timeout
    while engine.steps < n and time.monotonic() < deadline:
        time.sleep(0.001)


def test_a_request_alone_decodes_as_generate_does(engine, model, tok):
    cfg = SamplingConfig(num_candidates=4, max_new_tokens=12, seed=3)
    p = prompt(tok, "How tall is Mount Everest?")
    assert key(engine.submit(p, cfg).result(timeout=60)) == alone(model, tok, p, cfg)


@both_models
def test_rows_joining_and_leaving_a_running_batch_decode_as_alone(engine, model, tok):
    model.push = 0.0  # long rows: the first request is still decoding when the others join
    try:
        long = SamplingConfig(num_candidates=2, max_new_tokens=40, seed=1)
        short = SamplingConfig(num_candidates=4, max_new_tokens=6, seed=2, temperature=0.7, top_k=5)
        greedy = SamplingConfig(num_candidates=1, max_new_tokens=8, temperature=0.0)
        a, b, c = prompt(tok, "Hi"), prompt(tok, "Tell me about jazz", 6), prompt(tok, "Why?", 2)
        fa = engine.submit(a, long)
        wait_steps(engine, 3)
        fb = engine.submit(b, short)  # longer than a's row so far: the running rows shift right
        wait_steps(engine, 12)
        fc = engine.submit(c, greedy)  # after b has left
        got = [key(f.result(timeout=60)) for f in (fa, fb, fc)]
        assert got == [alone(model, tok, a, long), alone(model, tok, b, short),
                       alone(model, tok, c, greedy)]
    finally:
        model.push = 2.5


def test_first_tokens_and_stop_strings_per_request(engine, model, tok):
    first = [tok.special(tkn.TO_TOOLSET), tok.special(tkn.TO_USER)]  # the research task's routing
    cfg = SamplingConfig(num_candidates=3, max_new_tokens=10, seed=5)
    p = prompt(tok, "What is 12 + 30?")
    got = engine.submit(p, cfg, first_tokens=first).result(timeout=60)
    assert key(got) == alone(model, tok, p, cfg, first)
    text = alone(model, tok, p, SamplingConfig(num_candidates=1, max_new_tokens=10, seed=9))[0][1]
    if len(text) > 3:
        stop = SamplingConfig(num_candidates=1, max_new_tokens=10, seed=9, stop=(text[2:4],))
        (c,) = engine.submit(p, stop).result(timeout=60).candidates
        assert c.stopped and c.text == text[:text.find(text[2:4])]


def test_rows_that_end_give_up_their_slots_while_their_siblings_decode(engine, model, tok):
    cfg = SamplingConfig(num_candidates=8, max_new_tokens=40, seed=6)
    p = prompt(tok, "Tell me a story")
    want = alone(model, tok, p, cfg)
    lengths = sorted(length for *_, length in want)
    assert lengths[0] < lengths[-1]  # the fixture's model ends rows at different steps
    assert key(engine.submit(p, cfg).result(timeout=60)) == want
    assert engine.steps == lengths[-1] - 1  # the last token is drawn, not run through the model
    # every row ran until it ended, plus a few idle slots before a compaction dropped them
    assert sum(lengths) - 8 <= engine.row_steps < 8 * (lengths[-1] - 1)


def test_a_request_fills_the_slots_of_a_running_requests_ended_rows(engine, model, tok):
    first = SamplingConfig(num_candidates=8, max_new_tokens=40, seed=6)  # as in the test above
    then = SamplingConfig(num_candidates=3, max_new_tokens=40, seed=11)
    a, b = prompt(tok, "Tell me a story"), prompt(tok, "And then?", 2)
    fa = engine.submit(a, first)
    deadline = time.monotonic() + 30
    while engine.rows in (0, 8) and not fa.done() and time.monotonic() < deadline:
        time.sleep(0.0005)  # until some of a's rows have ended
    fb = engine.submit(b, then)
    got = [key(f.result(timeout=60)) for f in (fa, fb)]
    assert got == [alone(model, tok, a, first), alone(model, tok, b, then)]
    assert engine.rows == 0 and engine.requests == 0


def test_free_slots_count_against_the_cache_budget(model, tok):
    """A joiner that fits only once the ended rows' free slots are dropped gets them dropped (a
    compaction), not added to the cache on top. Driven step by step from here: the engine's own
    thread idles, as nothing is submitted to its queue."""
    first = SamplingConfig(num_candidates=8, max_new_tokens=40, seed=6, top_p=1.0)  # rows end unevenly
    then = SamplingConfig(num_candidates=3, max_new_tokens=40, seed=11, top_p=1.0)
    a, b = prompt(tok, "Tell me a story"), prompt(tok, "And then?", 2)
    engine = DecodeEngine(model, tok, EngineConfig(slack=0.9))  # ended rows keep their slots
    try:
        ra, rb = _Request(a, first, None, Future()), _Request(b, then, None, Future())
        with torch.no_grad():
            engine._waiting.append(ra)
            engine._admit()
            while engine.rows > 4:
                engine._step()
            assert engine._logits.shape[0] == 8  # a's ended rows idle in their slots
            columns = max(engine._col, len(b)) + then.max_new_tokens + engine.cfg.extra_cache
            # room for the live rows and b's, not for the free slots too
            engine.cfg = dataclasses.replace(engine.cfg, max_cache_tokens=(engine.rows + 3) * columns)
            engine._waiting.append(rb)
            engine._admit()
            assert engine.requests == 2 and engine._logits.shape[0] == engine.rows
            while engine.requests:
                engine._step()
        assert [key(r.future.result()) for r in (ra, rb)] == [alone(model, tok, a, first),
                                                              alone(model, tok, b, then)]
    finally:
        engine.close()


class ImplicitReads(TorchDispatchMode):
    """Counts the ops that read a tensor's values into Python on the way (item, bool, nonzero,
    boolean-mask indexing): each one waits for the device on a GPU."""

    OPS = {"aten::_local_scalar_dense", "aten::is_nonzero", "aten::nonzero", "aten::masked_select"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func._schema.name
        if name in self.OPS or (name == "aten::index" and any(
                i is not None and i.dtype == torch.bool for i in args[1])):
            self.count += 1
        return func(*args, **(kwargs or {}))


def test_a_decode_step_reads_the_device_once(model, tok):
    """A step reads the device once (which rows ended, and the step's tokens where requests
    have stop strings), and once more when requests finish (their tokens), however many requests
    decode; nothing else in the step waits for the device. Driven step by step from here, with
    requests joining on the way; every other request stops at an "e"."""
    engine = DecodeEngine(model, tok)
    reads, host = [], engine._host
    engine._host = lambda *tensors: (reads.append(len(tensors)), host(*tensors))[1]
    cfgs = [SamplingConfig(num_candidates=4, max_new_tokens=24, seed=i, stop=("e",) * (i % 2))
            for i in range(8)]
    prompts = [prompt(tok, f"Question number {i}", 1 + i % 3) for i in range(8)]
    requests = [_Request(p, c, None, Future()) for p, c in zip(prompts, cfgs)]
    try:
        with torch.no_grad():
            steps = 0
            while steps == 0 or engine.requests:
                if steps in (0, 3):  # four requests, then four more joining the running batch
                    engine._waiting += requests[steps // 3 * 4:][:4]
                    engine._admit()
                before = len(reads)
                with ImplicitReads() as implicit:
                    engine._step()
                assert implicit.count == 0
                assert 1 <= len(reads) - before <= 2
                steps += 1
        assert len(reads) < 2 * steps  # not one read per request and step
        assert [key(r.future.result()) for r in requests] == [
            alone(model, tok, p, c) for p, c in zip(prompts, cfgs)]
    finally:
        engine.close()


def test_a_cancelled_request_frees_its_rows(engine, model, tok):
    model.push = -10.0  # never ends by itself
    try:
        f = engine.submit(prompt(tok, "Go on"), SamplingConfig(num_candidates=8, max_new_tokens=400))
        wait_steps(engine, 2)
        assert engine.rows == 8
        assert f.cancel()
        deadline = time.monotonic() + 10
        while engine.rows and time.monotonic() < deadline:
            time.sleep(0.01)
        assert engine.rows == 0 and engine.steps < 300
        ok = engine.submit(prompt(tok, "Next"), SamplingConfig(num_candidates=1, max_new_tokens=3))
        assert len(ok.result(timeout=60).candidates) == 1
    finally:
        model.push = 2.5


def test_no_deadlock_under_64_concurrent_requests_over_the_budget(model, tok):
    engine = DecodeEngine(model, tok, EngineConfig(max_rows=24))
    try:
        cfgs = [SamplingConfig(num_candidates=4, max_new_tokens=8, seed=i) for i in range(64)]
        ps = [prompt(tok, f"question {i}", 1 + i % 3) for i in range(64)]
        with cf.ThreadPoolExecutor(16) as pool:
            futures = list(pool.map(lambda i: engine.submit(ps[i], cfgs[i]), range(64)))
            results = [f.result(timeout=120) for f in futures]
        assert all(len(r.candidates) == 4 and r.seconds > 0 for r in results)
        assert key(results[17]) == alone(model, tok, ps[17], cfgs[17])
        assert engine.rows == 0
    finally:
        engine.close()


@both_models
def test_a_prompt_that_extends_an_earlier_one_reuses_its_prefix(engine, model, tok):
    """The research steps' case: each prompt continues the one before it. Only the new tokens are
    prefilled, and the candidates are those of decoding the whole prompt alone."""
    cfg = SamplingConfig(num_candidates=3, max_new_tokens=10, seed=4)
    context = [Turn("user", "What is the symbol of iron?")]
    first = response_prompt(tok, context)
    later = research_prompt(tok, context, "I think it is Fe.",
                            [ResearchStep("iron symbol", ("iron: Fe, atomic number 26",))])
    engine.submit(first, cfg).result(timeout=60)
    assert engine.prefix_tokens == 0
    got = engine.submit(later, cfg).result(timeout=60)
    shared = len(response_prompt(tok, context)) - 1  # the context, up to RESPONSE / LAMDA-BASE
    assert engine.prefix_tokens == shared and engine.prompt_tokens == len(first) + len(later)
    assert key(got) == alone(model, tok, later, cfg)
    again = engine.submit(later, cfg).result(timeout=60)  # all but its last token held
    assert engine.prefix_tokens == shared + len(later) - 1 and key(again) == key(got)


def test_the_prefix_cache_keeps_recent_prompts_within_its_budget(model, tok):
    engine = DecodeEngine(model, tok, EngineConfig(prefix_cache_tokens=60))
    try:
        cfg = SamplingConfig(num_candidates=1, max_new_tokens=2)
        prompts = [prompt(tok, f"{w} are what I would like to hear about", 2)
                   for w in ("Apples", "Bridges", "Comets", "Dolphins", "Engines", "Forests")]
        for p in prompts:
            engine.submit(p, cfg).result(timeout=60)
        held = engine.prefixes
        assert 0 < held.tokens <= 60 and len(held) < len(prompts)
        assert held.match(prompts[-1])[0] == len(prompts[-1]) - 1  # the latest is held
        assert held.match(prompts[0]) == (0, None)  # the oldest went first
    finally:
        engine.close()
