import torch

from lamda.config import ModelConfig
from lamda.model import build_model, lm_loss
from lamda.training import (TrainConfig, build_optimizer, cpu_bf16_pays, cpu_bf16_speedup, lr_at,
                            rounded_selection, train_step)


def test_the_bias_table_learns_at_a_scaled_rate():
    """The relative-bias table's scalars get bias_lr_scale x the learning rate (a copying head
    needs a bias of several units at distance 1); matrices get weight decay, the rest none."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=64))
    cfg = TrainConfig(steps=10, lr=1e-3, warmup_steps=1, bias_lr_scale=100.0)
    opt = build_optimizer(model, cfg)
    groups = {id(p): g for g in opt.param_groups for p in g["params"]}
    table = groups[id(model.rel_bias.weight)]
    assert table["weight_decay"] == 0.0 and table["lr_scale"] == 100.0
    assert groups[id(model.blocks[0].attn.q.weight)]["weight_decay"] == cfg.weight_decay
    assert groups[id(model.embed.weight)]["weight_decay"] == 0.0
    x = torch.randint(0, 64, (2, 9))
    before = model.rel_bias.weight.detach().clone()
    train_step(model, opt, [(x[:, :-1], x[:, 1:], None, None)], 5, cfg)
    assert table["lr"] == lr_at(5, cfg) * 100.0
    assert groups[id(model.embed.weight)]["lr"] == lr_at(5, cfg)
    moved = (model.rel_bias.weight - before).abs().max().item()
    assert moved > 10 * cfg.lr  # Adam moves each scalar by about its learning rate


def test_a_non_finite_step_is_skipped_and_changes_nothing():
    """A NaN loss (or gradient norm) skips the update: weights and optimizer state stay, the
    gradients are dropped; the next finite step trains as usual."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=64))
    cfg = TrainConfig(steps=10, lr=1e-3, warmup_steps=1, grad_clip=0.0)
    opt = build_optimizer(model, cfg)
    x = torch.randint(0, 64, (2, 9))
    batch = [(x[:, :-1], x[:, 1:], None, None)]
    assert not train_step(model, opt, batch, 0, cfg)["skipped"]
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [s["exp_avg"].clone() for s in opt.state.values()]

    def nan_loss(logits, targets, mask=None):
        return lm_loss(logits, targets, mask) * float("nan")

    stats = train_step(model, opt, batch, 1, cfg, nan_loss)
    assert stats["skipped"] and stats["loss"] != stats["loss"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in weights.items())
    assert all(torch.equal(m, s["exp_avg"]) for m, s in zip(moments, opt.state.values()))
    assert all(p.grad is None for p in model.parameters())
    assert not train_step(model, opt, batch, 2, cfg)["skipped"]
    assert not torch.equal(weights["embed.weight"], model.embed.weight)


def test_a_bf16_step_computes_in_bf16_and_keeps_float32_weights():
    """bf16 autocast: the same loss within bf16's precision and the same descent over a few
    steps, while weights, gradients and AdamW's moments stay float32; the CPU's speed-up is
    measured (a positive ratio) and decides whether the Ray Train loop uses it."""
    x = torch.randint(0, 64, (4, 33))
    batch = [(x[:, :-1], x[:, 1:], None, None)]
    cfg = TrainConfig(steps=20, lr=3e-3, warmup_steps=1)
    losses = {}
    for bf16 in (False, True):
        torch.manual_seed(0)
        model = build_model(ModelConfig.from_name("debug", vocab_size=64))
        opt = build_optimizer(model, cfg)
        seen = []
        model.blocks[0].attn.q.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
        losses[bf16] = [train_step(model, opt, batch, i, cfg, bf16=bf16)["loss"] for i in range(20)]
        assert set(seen) == {torch.bfloat16 if bf16 else torch.float32}
        assert all(p.dtype == torch.float32 for p in model.parameters())
        assert all(s["exp_avg"].dtype == torch.float32 for s in opt.state.values())
    assert abs(losses[True][0] - losses[False][0]) < 0.02 * losses[False][0]
    assert losses[True][-1] < 0.8 * losses[True][0] and abs(losses[True][-1] - losses[False][-1]) < 0.1
    assert cpu_bf16_speedup() > 0 and isinstance(cpu_bf16_pays(), bool)
    assert not cpu_bf16_pays("cuda") and not cpu_bf16_pays(torch.device("meta"))  # CPUs only


def test_the_output_layers_positions_come_in_few_shapes_with_the_same_loss():
    """A masked step runs the output layer on the loss positions plus the first others, up to a
    multiple of SELECTION_MULTIPLE (a new shape per step grows the memory of CPU bf16 kernels); the
    added positions count for nothing: the same loss and gradients as the exact selection."""
    g = torch.Generator().manual_seed(0)
    counts = set()
    for _ in range(50):
        keep = torch.rand(4, 64, generator=g) < torch.rand(1, generator=g)
        rounded = rounded_selection(keep, 32)
        assert (rounded | keep).equal(rounded) and int(keep.sum()) <= int(rounded.sum())
        counts.add(int(rounded.sum()))
    assert counts <= {0, 32, 64, 96, 128, 160, 192, 224, 256} and len(counts) > 3
    assert rounded_selection(torch.ones(3, 5, dtype=torch.bool), 4).all()  # at most every position

    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=64))
    x = torch.randint(0, 64, (2, 33), generator=g)
    inputs, targets, mask = x[:, :-1], x[:, 1:], (torch.rand(2, 32, generator=g) < 0.3).long()
    keep = mask > 0
    results = []
    for only, weights in ((keep, None), (rounded_selection(keep, 32), mask)):
        model.zero_grad()
        loss = lm_loss(model(inputs, only=only), targets[only], None if weights is None else weights[only])
        loss.backward()
        results.append((float(loss), model.embed.weight.grad.clone()))
    (exact, exact_grad), (rounded, rounded_grad) = results
    assert abs(exact - rounded) < 1e-5 and torch.allclose(exact_grad, rounded_grad, atol=1e-6)
    opt = build_optimizer(model, TrainConfig(steps=1, lr=0.0, warmup_steps=1))
    stats = train_step(model, opt, [(inputs, targets, mask, None)], 0, TrainConfig(steps=1, lr=0.0))
    assert abs(stats["loss"] - exact) < 1e-5  # train_step rounds (here: to every position)

