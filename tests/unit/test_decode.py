import pytest
import torch

from lamda.config import ModelConfig
from lamda.data import Turn, response_prompt
from lamda.decode import GraphStep, SamplingConfig, best_by_likelihood, generate, sample_top_k
from lamda.model import LaMDA
from lamda.rank import (ATTRIBUTES, RankConfig, rank, score_generation, score_responses,
                        score_token_responses, score_uncached)


class EarlyStopper(LaMDA):
    """A random model nudged towards <eot>, so that candidates end at different lengths."""

    eot: int = 0
    push: float = 2.5  # added to <eot>'s logit

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., self.eot] += self.push
        return logits


@pytest.fixture(scope="module")
def model(request, tok):
    """The random EarlyStopper; parametrized with a copy width, one with a copy head (whose cache
    also holds tokens and copy keys)."""
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("debug", vocab_size=tok.vocab_size, copy_dim=getattr(request, "param", 0))
    m = EarlyStopper(cfg).eval()
    m.eot = tok.eot_id
    return m


# tests of the cache's bookkeeping run with and without the copy head
both_models = pytest.mark.parametrize("model", [0, 16], ids=["plain", "copy-head"], indirect=True)


CONTEXTS = [[Turn("user", "How tall is Mount Everest?")],
            [Turn("user", "Hi!"), Turn("lamda", "Hello! What's on your mind?"),
             Turn("user", "Can you recommend some jazz?")]]


def prompts(tok):
    return [response_prompt(tok, c) for c in CONTEXTS]


def test_seeded_sampling_is_reproducible(model, tok):
    cfg = SamplingConfig(num_candidates=4, max_new_tokens=12, seed=7)
    a = generate(model, tok, prompts(tok), cfg).candidates
    b = generate(model, tok, prompts(tok), cfg).candidates
    assert [[c.ids for c in p] for p in a] == [[c.ids for c in p] for p in b]
    c = generate(model, tok, prompts(tok), SamplingConfig(num_candidates=4, max_new_tokens=12, seed=8))
    assert [[x.ids for x in p] for p in a] != [[x.ids for x in p] for p in c.candidates]


def test_top_k_never_leaves_the_top_k():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(64, 500, generator=g)
    allowed = torch.topk(logits, 5).indices
    for _ in range(50):
        tokens, logp = sample_top_k(logits, 5, 1.0, g)
        assert bool((allowed == tokens[:, None]).any(1).all())
        torch.testing.assert_close(logp, torch.log_softmax(logits, -1)[torch.arange(64), tokens])


def test_candidates_stop_at_end_of_turn(model, tok):
    cfg = SamplingConfig(num_candidates=16, max_new_tokens=10, seed=1)
    gen = generate(model, tok, prompts(tok), cfg)
    cands = [c for p in gen.candidates for c in p]
    assert len(gen.candidates) == 2 and all(len(p) == 16 for p in gen.candidates)
    assert all(tok.eot_id not in c.ids and len(c.ids) == c.length - 1 for c in cands)
    assert {c.truncated for c in cands} == {True, False}  # some stopped early, some ran out
    assert all(c.length == 10 for c in cands if c.truncated)
    assert all(c.length < 10 for c in cands if not c.truncated)


@both_models
@torch.no_grad()
def test_batched_cached_decoding_has_the_logits_of_a_plain_forward(model, tok):
    """Every candidate's log-likelihood, summed from the batched, cached, left-padded decode,
    equals a one-sequence full forward over prompt + response + <eot> (over the tokens a
    response may hold)."""
    from lamda.decode import text_only_mask
    gen = generate(model, tok, prompts(tok), SamplingConfig(num_candidates=3, max_new_tokens=8, seed=3))
    for prompt, cands in zip(prompts(tok), gen.candidates):
        for c in cands:
            seq = torch.tensor([prompt + c.ids + [tok.eot_id]])
            logits = model(seq)[0, :-1].float() + text_only_mask(tok, model.cfg.vocab_size)
            logp = torch.log_softmax(logits, -1)
            targets = seq[0, 1:]
            expected = logp[torch.arange(len(targets)), targets][len(prompt) - 1:].sum()
            assert c.logprob == pytest.approx(float(expected), abs=1e-3)


@both_models
@torch.no_grad()
def test_cached_discriminator_scores_equal_uncached_ones(model, tok):
    gen = generate(model, tok, prompts(tok), SamplingConfig(num_candidates=3, max_new_tokens=8, seed=5))
    cached = score_generation(model, tok, gen)
    assert cached.shape == (6, len(ATTRIBUTES))
    flat = [(ctx, c) for ctx, cands in zip(CONTEXTS, gen.candidates) for c in cands]
    for row, (ctx, c) in zip(cached.tolist(), flat):
        assert row == pytest.approx(score_uncached(model, tok, response_prompt(tok, ctx), c.ids),
                                      abs=1e-4)
    given = score_responses(model, tok, CONTEXTS, ["It is 8,849 metres tall.", "Try Miles Davis."])
    expected = score_uncached(model, tok, response_prompt(tok, CONTEXTS[1]),
                              tok.encode("Try Miles Davis."))
    assert given[1].tolist() == pytest.approx(expected, abs=1e-4)


@both_models
@torch.no_grad()
def test_candidates_sharing_a_context_are_scored_on_its_one_prefill(model, tok):
    """The Ranker's path: a conversation's candidates (of different lengths, one empty) continue
    one prefill of its context, next to another conversation's; scores equal re-encoding each."""
    replies = [tok.encode(t) for t in ("It is 8,849 metres tall.", "Tall.", "")] + [tok.encode("Jazz!")]
    prompts = [response_prompt(tok, CONTEXTS[0])] * 3 + [response_prompt(tok, CONTEXTS[1])]
    got = score_token_responses(model, tok, prompts, replies)
    for row, p, r in zip(got.tolist(), prompts, replies):
        assert row == pytest.approx(score_uncached(model, tok, p, r), abs=1e-4)


def cand(text, logprob=-1.0, length=3):
    from lamda.decode import Candidate
    return Candidate([], text, logprob, length, False)


def test_safety_filter_and_3s_sp_i_ranking():
    cands = [cand("a"), cand("b"), cand("c"), cand("d")]
    probs = [[0.9, 0.2, 0.2, 0.1],   # quality 3.1
             [0.6, 0.9, 0.9, 0.2],   # 3.6
             [1.0, 1.0, 1.0, 0.7],   # 5.0 but unsafe (safety 0.3)
             [0.2, 0.1, 0.1, 0.0]]   # 0.8
    r = rank(cands, probs, RankConfig(safety_threshold=0.5))
    assert r.reply == "b" and not r.fallback
    assert [s.text for s in r.candidates] == ["b", "a", "d", "c"]
    assert r.candidates[-1].filtered.startswith("safety 0.300 < threshold 0.5")
    assert r.best.quality == pytest.approx(3 * 0.6 + 0.9 + 0.9)
    strict = rank(cands, probs, RankConfig(safety_threshold=0.85))
    assert strict.reply == "a"  # b (safety 0.8) is dropped too
    assert {s.text for s in strict.candidates if s.filtered is None} == {"a", "d"}


def test_all_unsafe_gives_the_fallback():
    r = rank([cand("x"), cand("y")], [[1, 1, 1, 0.9], [1, 1, 1, 0.8]],
             RankConfig(fallback="Let's talk about something else."))
    assert r.fallback and r.best is None and r.reply == "Let's talk about something else."
    assert all(s.filtered for s in r.candidates)
    assert r.to_dict()["fallback"] is True


def test_likelihood_ranking_is_length_normalised():
    short, long_ = cand("short", logprob=-3.0, length=2), cand("long", logprob=-4.0, length=8)
    assert best_by_likelihood([short, long_]) is long_  # -0.5 per token beats -1.5


def test_graph_step_matches_eager_and_reuses_its_cache(model, tok):
    """GraphStep (compiled step over a static cache; CUDA graphs on GPU) samples exactly what the
    eager step samples, turn after turn, and keeps one cache per shape."""
    step = GraphStep(len_multiple=64)
    cfg = SamplingConfig(num_candidates=3, max_new_tokens=10, seed=4)
    with torch._dynamo.config.patch(error_on_recompile=True):
        for ps in (prompts(tok), [p[-5:] for p in prompts(tok)]):  # two prompt lengths, one shape
            eager = generate(model, tok, ps, cfg)
            graph = generate(model, tok, ps, cfg, step=step)
            assert [[c.ids for c in cs] for cs in graph.candidates] == \
                [[c.ids for c in cs] for cs in eager.candidates]
            assert torch.allclose(score_generation(model, tok, graph),
                                  score_generation(model, tok, eager), atol=1e-5)
    assert list(step.caches) == [(6, 64)]


def test_graph_step_pads_the_batch_to_a_power_of_two(model, tok):
    """3 prompts decode as 4 (a copy of the last one pads), so batch sizes share compiled shapes;
    only the 3 come back, the same as an eager decode of the padded batch."""
    step = GraphStep(len_multiple=64, max_caches=1)
    three = prompts(tok) + [prompts(tok)[0]]
    cfg = SamplingConfig(num_candidates=2, max_new_tokens=6, seed=2)
    graph = generate(model, tok, three, cfg, step=step)
    eager = generate(model, tok, three + three[-1:], cfg)
    assert len(graph.candidates) == 3 and list(step.caches)[0][0] == 8
    assert [[c.ids for c in cs] for cs in graph.candidates] == \
        [[c.ids for c in cs] for cs in eager.candidates[:3]]
    one = generate(model, tok, three[:1], cfg, step=step)  # another shape: the older cache goes
    assert list(step.caches) == [(2, 64)]
    assert [c.ids for c in one.candidates[0]] == \
        [c.ids for c in generate(model, tok, three[:1], cfg).candidates[0]]


class SpecialLover(LaMDA):
    """A random model that would rather say special tokens (RESPONSE, <0>, USER:, TS, ...)."""

    boost: list[int] = []

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., self.boost] += 50.0
        return logits


def test_responses_never_hold_a_special_token(tok):
    """Nor a control character (a NUL would not even fit in a PostgreSQL text column); the byte
    pieces of ordinary characters stay allowed."""
    from lamda import tokenizer as tkn
    torch.manual_seed(0)
    m = SpecialLover(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).eval()
    specials = [tok.special(n) for n in tkn.SPECIAL_TOKENS if n != tkn.EOT]
    controls = [tok.sp.piece_to_id(f"<0x{b:02X}>") for b in (0x00, 0x07, 0x1B, 0x7F)]
    m.boost = specials + [tok.pad_id, tok.eos_id] + controls
    gen = generate(m, tok, prompts(tok), SamplingConfig(num_candidates=8, max_new_tokens=12, seed=0))
    for c in (c for p in gen.candidates for c in p):
        assert not set(c.ids) & set(m.boost), tok.decode(c.ids)
        assert not any(ch in c.text for ch in "\x00\x07\x1b\x7f")
    greedy = generate(m, tok, prompts(tok), SamplingConfig(num_candidates=1, temperature=0.0,
                                                           max_new_tokens=6))
    assert not set(greedy.candidates[0][0].ids) & set(m.boost)
    m.boost = [tok.sp.piece_to_id("<0x0A>")]  # a newline's byte piece: ordinary text
    gen = generate(m, tok, prompts(tok), SamplingConfig(num_candidates=2, max_new_tokens=4, seed=0))
    assert m.boost[0] in gen.candidates[0][0].ids


def test_first_tokens_restrict_only_the_first_token(tok):
    from lamda import tokenizer as tkn
    torch.manual_seed(0)
    m = SpecialLover(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).eval()
    routes = [tok.special(tkn.TO_TOOLSET), tok.special(tkn.TO_USER)]
    m.boost = [tok.special(tkn.RESPONSE)]  # what it would say, were it allowed
    gen = generate(m, tok, prompts(tok), SamplingConfig(num_candidates=6, max_new_tokens=8, seed=3),
                   first_tokens=routes)
    for c in (c for p in gen.candidates for c in p):
        assert c.ids[0] in routes and not set(c.ids[1:]) & set(routes + m.boost)
        assert tok.decode(c.ids).split()[0] in ("TS,", "User,")


def test_temperature_zero_is_greedy(model, tok):
    cfg = SamplingConfig(num_candidates=3, temperature=0.0, max_new_tokens=10)
    gen = generate(model, tok, prompts(tok), cfg)
    for p in gen.candidates:
        assert len({tuple(c.ids) for c in p}) == 1  # every row takes the argmax
    again = generate(model, tok, prompts(tok), cfg)
    assert [[c.ids for c in p] for p in gen.candidates] == [[c.ids for c in p] for p in again.candidates]


def ids_of(gen):
    return [[c.ids for c in p] for p in gen.candidates]


def test_per_prompt_settings_share_a_batch(model, tok):
    """Each prompt keeps its own settings in a shared batch: a seeded prompt draws the same
    candidates alone and next to another prompt with other settings."""
    ps = prompts(tok)
    seeded = SamplingConfig(num_candidates=4, max_new_tokens=12, seed=5, top_k=20, top_p=0.8)
    other = SamplingConfig(num_candidates=4, max_new_tokens=5, temperature=0.0)
    alone = generate(model, tok, ps[:1], seeded)
    both = generate(model, tok, ps, [seeded, other])
    assert ids_of(both)[0] == ids_of(alone)[0]
    greedy = generate(model, tok, ps[1:], other)
    assert ids_of(both)[1] == ids_of(greedy)[0] and len({tuple(i) for i in ids_of(both)[1]}) == 1
    assert all(c.length <= 5 for c in both.candidates[1])
    assert all(c.length <= 12 for c in both.candidates[0])
    with pytest.raises(ValueError):
        generate(model, tok, ps, [seeded, SamplingConfig(num_candidates=2)])


def test_top_k_one_and_top_p_zero_are_greedy(model, tok):
    greedy = ids_of(generate(model, tok, prompts(tok), SamplingConfig(num_candidates=3, temperature=0.0,
                                                                      max_new_tokens=10)))
    for cfg in (SamplingConfig(num_candidates=3, top_k=1, max_new_tokens=10, seed=1),
                SamplingConfig(num_candidates=3, top_p=0.0, max_new_tokens=10, seed=2)):
        assert ids_of(generate(model, tok, prompts(tok), cfg)) == greedy


def test_top_p_keeps_the_nucleus():
    from lamda.decode import sample_rows
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    seen = set()
    g = torch.Generator().manual_seed(0)
    for _ in range(300):
        t = sample_rows(logits, torch.ones(1), torch.tensor([4]), torch.tensor([0.75]),
                           torch.empty(1, 4).exponential_(generator=g))
        seen.add(int(t))
    assert seen == {0, 1}  # 0.5 + 0.3 reach 0.75; 0.15 and 0.05 are outside


def test_stop_strings_end_candidates_before_them(model, tok):
    cfg = SamplingConfig(num_candidates=8, max_new_tokens=16, seed=3)
    free = generate(model, tok, prompts(tok)[:1], cfg).candidates[0]
    word = next(w for c in free for w in c.text.split() if len(w) > 1)
    stop = SamplingConfig(num_candidates=8, max_new_tokens=16, seed=3, stop=(word,))
    cut = generate(model, tok, prompts(tok)[:1], stop)
    assert cut.stopped and any(c.stopped for c in cut.candidates[0])
    for a, b in zip(free, cut.candidates[0]):
        assert word not in b.text
        if word in a.text:  # the same draw, ended before the stop string
            assert b.stopped and a.text.startswith(b.text) and b.ids == tok.encode(b.text)
    with pytest.raises(ValueError):
        score_generation(model, tok, cut)
    # next to a prompt without stop strings: each keeps its own (the step's tokens read once)
    other = SamplingConfig(num_candidates=8, max_new_tokens=16, temperature=0.0)
    both = generate(model, tok, prompts(tok)[:2], [stop, other])
    assert [c.text for c in both.candidates[0]] == [c.text for c in cut.candidates[0]]
    assert not any(c.stopped for c in both.candidates[1])


def test_reply_logprobs_are_the_models_per_token_likelihood(model, tok):
    """Replies scored together (left-padded) get the log-probabilities a plain forward of each
    gives, over the tokens a response may hold, with the top alternatives."""
    from lamda.turn import ChatModel
    from lamda.decode import text_only_mask
    chat = ChatModel(model, tok)
    replies = ["Hello there, how are you today?", "Fine."]
    out = chat.reply_logprobs(CONTEXTS[0], replies, top=3)
    mask = text_only_mask(tok, model.cfg.vocab_size)
    prompt = response_prompt(tok, CONTEXTS[0])
    for reply, lp in zip(replies, out):
        ids = tok.encode(reply)
        logp = torch.log_softmax(model(torch.tensor([prompt + ids]))[0].float() + mask, -1)
        expected = [float(logp[len(prompt) - 1 + j, t]) for j, t in enumerate(ids)]
        assert [e["token"] for e in lp] == [chat.piece(i)["token"] for i in ids]
        assert "".join(e["token"] for e in lp).strip() == reply
        torch.testing.assert_close(torch.tensor([e["logprob"] for e in lp]), torch.tensor(expected),
                                   atol=1e-4, rtol=0)
        for j, e in enumerate(lp):
            assert len(e["top_logprobs"]) == 3
            assert e["top_logprobs"][0]["logprob"] == pytest.approx(float(logp[len(prompt) - 1 + j].max()), abs=1e-4)


def test_logprob_tokens_of_byte_pieces_read_as_text(model, tok):
    """A character the tokenizer falls back to bytes for: an ASCII one is its own token text ("*",
    not "<0x2A>"); a longer one's bytes join into it, as an OpenAI client joins them."""
    from lamda.turn import ChatModel
    reply = "5 * 3 is 15 \u2603."
    assert tok.sp.is_byte(tok.encode("*")[-1])
    (lp,) = ChatModel(model, tok).reply_logprobs(CONTEXTS[0], [reply])
    assert "*" in [e["token"] for e in lp]
    assert bytes(b for e in lp for b in e["bytes"]).decode().strip() == reply


def test_finish_cuts_replies_and_says_why(model, tok):
    from lamda.turn import ChatModel
    chat = ChatModel(model, tok)
    out = chat.finish(CONTEXTS[0], ["one two three four five", "short"], [False, True], max_tokens=3)
    assert out[0]["tokens"] == 3 and out[0]["finish_reason"] == "length"
    assert tok.encode(out[0]["text"]) == tok.encode("one two three four five")[:3]
    assert out[1] == {"text": "short", "tokens": len(tok.encode("short")), "finish_reason": "length"}
    (stopped,) = chat.finish(CONTEXTS[0], ["hello there. bye"], [False], stop=("there", "bye"))
    assert stopped["text"] == "hello " and stopped["finish_reason"] == "stop"
    (lp,) = chat.finish(CONTEXTS[0], ["hi"], [False], top_logprobs=0)
    assert len(lp["logprobs"]) == lp["tokens"] and lp["logprobs"][0]["top_logprobs"] == []
    # a cut inside a character's bytes ends before the character, not with U+FFFD (4 tokens)
    (snow,) = chat.finish(CONTEXTS[0], ["\u2603 and more"], [False], max_tokens=2, top_logprobs=0)
    assert snow["text"] == "" and snow["tokens"] == len(snow["logprobs"]) == 0


def test_a_long_context_is_fitted_to_the_model_from_its_latest_turns(model, tok):
    from lamda import tokenizer as tkn
    from lamda.turn import ChatModel
    chat = ChatModel(model, tok)
    turns = [Turn("user", "word " * 200), Turn("lamda", "fine"), Turn("user", "and now?")]
    prompt = response_prompt(tok, turns * 4)
    room = model.cfg.max_seq_len // 2
    fitted = chat.fit(prompt, room)
    assert len(prompt) > model.cfg.max_seq_len - room >= len(fitted)
    assert fitted == prompt[-len(fitted):] and fitted[0] in {tok.special(tkn.USER), tok.special(tkn.LAMDA)}
    assert chat.fit(fitted, room) == fitted


def test_several_conversations_scored_in_one_prefill_as_one_at_a_time(model, tok):
    from lamda.turn import ChatModel
    chat = ChatModel(model, tok)
    cfg = SamplingConfig(num_candidates=3, max_new_tokens=8, seed=4)
    items = [(ctx, chat.sample([ctx], cfg)[0][0]) for ctx in CONTEXTS]
    together = chat.score_many(items, RankConfig(safety_threshold=0.0))
    for (ctx, cands), (ranked, flops, tokens) in zip(items, together):
        alone, alone_flops, alone_tokens = chat.score(ctx, cands, RankConfig(safety_threshold=0.0))
        assert ranked.reply == alone.reply and (flops, tokens) == (alone_flops, alone_tokens)
        for a, b in zip(ranked.candidates, alone.candidates):
            assert a.text == b.text
            got = [getattr(a, n) for n in ("sensible", "specific", "interesting", "unsafe")]
            want = [getattr(b, n) for n in ("sensible", "specific", "interesting", "unsafe")]
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), atol=1e-5, rtol=1e-4)
