"""parallelize() in one process: FSDP2 over a 1-rank gloo group, activation checkpointing, compile."""

import socket

import pytest
import torch
import torch.distributed as dist

from lamda.config import ModelConfig
from lamda.model import build_model, lm_loss
from lamda.parallel import ParallelConfig, parallelize

CFG = ModelConfig.from_name("debug")


@pytest.fixture(scope="module")
def process_group():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def loss_and_grads(model, x):
    loss = lm_loss(model(x[:, :-1]), x[:, 1:])
    loss.backward()
    grads = {}
    for name, p in model.named_parameters():
        g = p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad
        grads[name.replace("_checkpoint_wrapped_module.", "")] = g
    return loss.item(), grads


@pytest.mark.parametrize("pc", [
    ParallelConfig(fsdp=True),
    ParallelConfig(fsdp=True, activation_checkpointing=True),
    ParallelConfig(fsdp=False, activation_checkpointing=True, compile=True),
], ids=["fsdp", "fsdp+ac", "ac+compile"])
def test_parallelized_model_matches_the_plain_one(process_group, pc):
    torch.manual_seed(0)
    plain = build_model(CFG)
    other = build_model(CFG, device="meta")
    parallelize(other, pc, "cpu", world_size=1)
    other.to_empty(device="cpu")
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict
    set_model_state_dict(other, plain.state_dict(), options=StateDictOptions(full_state_dict=True))
    x = torch.randint(0, CFG.vocab_size, (2, 33))
    loss_a, grads_a = loss_and_grads(plain, x)
    loss_b, grads_b = loss_and_grads(other, x)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4)
