import pytest
import torch

from lamda.config import ModelConfig
from lamda.model import KVCache, build_model, lm_loss

CFG = ModelConfig.from_name("debug")


@pytest.fixture(scope="module", params=[0, 16], ids=["plain", "copy-head"])
def model(request):
    torch.manual_seed(0)
    return build_model(CFG.replace(copy_dim=request.param)).eval()


def tokens(B, T, seed=0):
    return torch.randint(4, CFG.vocab_size, (B, T), generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_causality_future_tokens_never_change_past_logits(model):
    x = tokens(2, 20)
    y = x.clone()
    y[:, 12:] = tokens(2, 8, seed=1)
    a, b = model(x), model(y)
    torch.testing.assert_close(a[:, :12], b[:, :12])
    assert not torch.allclose(a[:, 12:], b[:, 12:])


@torch.no_grad()
def test_kv_cache_prefill_and_steps_match_full_forward(model):
    x = tokens(2, 24)
    full = model(x)
    cache = KVCache.empty(model.cfg, batch=2, max_len=40)
    out = [model(x[:, :10], torch.arange(10), cache)]
    for t in range(10, 24):
        out.append(model(x[:, t:t + 1], torch.tensor([t]), cache))
    torch.testing.assert_close(torch.cat(out, 1), full, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_expanding_one_context_to_n_rows_matches_full_forward(model):
    ctx = tokens(1, 16)
    cache = KVCache.empty(model.cfg, batch=1, max_len=32)
    model(ctx, torch.arange(16), cache)
    rows = cache.expand(4)
    assert rows.batch == 4 and all(k.shape[0] == 4 for k in rows.k)
    nxt = tokens(4, 3, seed=2)  # a different continuation per row
    steps = [model(nxt[:, i:i + 1], torch.tensor([16 + i]), rows) for i in range(3)]
    full = model(torch.cat([ctx.expand(4, -1), nxt], 1))[:, 16:]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=1e-4)
    # the original single-row cache is untouched by the candidates
    assert cache.batch == 1


@torch.no_grad()
def test_left_padding_with_key_mask_gives_the_unpadded_logits(model):
    short, long_ = tokens(1, 6, seed=3), tokens(1, 10, seed=4)
    pad = torch.zeros(1, 4, dtype=torch.long)
    batch = torch.cat([torch.cat([pad, short], 1), long_])  # (2, 10), row 0 left-padded
    mask = torch.ones(2, 10, dtype=torch.bool)
    mask[0, :4] = False
    cache = KVCache.empty(model.cfg, batch=2, max_len=16)
    logits = model(batch, torch.arange(10), cache, key_mask=mask)
    # relative bias depends only on distances, so shifting a row right changes nothing
    torch.testing.assert_close(logits[0, 4:], model(short)[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(logits[1], model(long_)[0], atol=1e-5, rtol=1e-4)
    nxt = tokens(2, 1, seed=5)
    step = model(nxt, torch.tensor([10]), cache)
    torch.testing.assert_close(step[0], model(torch.cat([short, nxt[:1]], 1))[0, -1:], atol=1e-5,
                               rtol=1e-4)


def test_cache_requires_positions(model):
    with pytest.raises(ValueError, match="input_pos"):
        model(tokens(1, 3), cache=KVCache.empty(model.cfg, 1, 8))


def test_init_follows_t5():
    torch.manual_seed(0)
    cfg = ModelConfig.from_name("tiny")
    m = build_model(cfg)
    a, f = m.blocks[0].attn, m.blocks[0].ffn
    assert m.embed.weight.std().item() == pytest.approx(1.0, rel=0.05)
    assert a.q.weight.std().item() == pytest.approx((cfg.d_model * cfg.d_kv) ** -0.5, rel=0.05)
    assert a.k.weight.std().item() == pytest.approx(cfg.d_model ** -0.5, rel=0.05)
    assert f.wo.weight.std().item() == pytest.approx(cfg.d_ff ** -0.5, rel=0.05)
    assert torch.all(m.norm.weight == 1)
    # tied output layer: no separate lm_head parameter
    assert sum(p.numel() for p in m.parameters()) == cfg.num_params(non_embedding=False)


def test_lm_loss_counts_only_masked_tokens():
    logits = torch.randn(1, 4, 10)
    targets = torch.tensor([[1, 2, 3, 4]])
    mask = torch.tensor([[0, 1, 0, 1]])
    expect = torch.nn.functional.cross_entropy(logits[0, [1, 3]], targets[0, [1, 3]])
    torch.testing.assert_close(lm_loss(logits, targets, mask), expect)


def test_a_few_steps_reduce_the_loss():
    torch.manual_seed(0)
    m = build_model(CFG)
    x = tokens(4, 33)
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = lm_loss(m(x[:, :-1]), x[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


@torch.no_grad()
def test_packed_examples_see_only_themselves(model):
    x = tokens(2, 24)
    segments = torch.cat([torch.zeros(2, 10), torch.ones(2, 14)], 1).long()
    packed = model(x, segments=segments)
    torch.testing.assert_close(packed[:, :10], model(x[:, :10]), atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[:, 10:], model(x[:, 10:]), atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_the_copy_head_gives_log_probabilities_and_counts_its_parameters():
    cfg = CFG.replace(copy_dim=16)
    m = build_model(cfg).eval()
    assert sum(p.numel() for p in m.parameters()) == cfg.num_params(non_embedding=False)
    logp = m(tokens(2, 12))
    torch.testing.assert_close(logp.exp().sum(-1), torch.ones(2, 12))
    only = torch.zeros(2, 12, dtype=torch.bool)
    only[:, 3:7] = True
    torch.testing.assert_close(m(tokens(2, 12), only=only), logp[only])


def copy_task_loss(copy_dim: int, steps: int = 60) -> float:
    """Loss on the second half of "a b c ... a b c ..." (random tokens, new every step) after
    `steps` steps of training on it."""
    torch.manual_seed(0)
    m = build_model(CFG.replace(copy_dim=copy_dim))
    opt = torch.optim.AdamW(m.parameters(), lr=3e-3)
    mask = torch.zeros(16, 32)
    mask[:, 16:] = 1  # predicting the repeat
    for step in range(steps + 1):
        half = tokens(16, 17, seed=step)
        x = torch.cat([half, half[:, :16]], 1)  # (16, 33)
        loss = lm_loss(m(x[:, :-1]), x[:, 1:], mask)
        if step == steps:
            return loss.item()
        loss.backward()
        opt.step()
        opt.zero_grad()


def test_the_copy_head_repeats_unseen_tokens_long_before_the_plain_model():
    plain, copying = copy_task_loss(0), copy_task_loss(16)
    assert copying < 0.6 * plain
