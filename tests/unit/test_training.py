import torch

from lamda.config import ModelConfig
from lamda.model import build_model
from lamda.training import TrainConfig, build_optimizer, lr_at, train_step


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
