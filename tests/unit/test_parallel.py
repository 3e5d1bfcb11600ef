"""Tensor parallelism composed with FSDP2 (lamda.parallel) against one process: 4 CPU processes
(gloo) as a 2 x 2 mesh (dp, tp) train to the same losses, gradient norms and weights, and
initialise consistently."""

import os
import socket
import sys

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)

from lamda.config import ModelConfig
from lamda.model import build_model
from lamda.parallel import ParallelConfig, init_weights, parallelize
from lamda.training import TrainConfig, build_optimizer, train_step

CFG = ModelConfig.from_name("debug", vocab_size=256)
TRAIN = TrainConfig(steps=5, lr=1e-3, warmup_steps=1)
STEPS, BATCH = 5, 8


def batch(step: int, rows: slice = slice(None)):
    x = torch.randint(0, CFG.vocab_size, (BATCH, 33), generator=torch.Generator().manual_seed(step))
    x = x[rows]
    return [(x[:, :-1], x[:, 1:], None, None)]


def worker(rank: int, world: int, tp: int, port: int, weights: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = build_model(CFG, device="meta")
    mesh = parallelize(model, ParallelConfig(tp=tp), "cpu", world)
    model.to_empty(device="cpu")
    init_weights(model, mesh, seed=0)
    # what both ranks of a tensor-parallel group hold whole is the same on both; their halves
    # of the heads differ
    for p in (model.embed.weight, model.norm.weight, model.blocks[0].attn.q.weight):
        halves = [torch.zeros_like(p.to_local()) for _ in range(tp)]
        dist.all_gather(halves, p.to_local().contiguous(), group=mesh["tp"].get_group())
        assert torch.equal(halves[0], halves[1]) == (p is not model.blocks[0].attn.q.weight)
    set_model_state_dict(model, weights, options=StateDictOptions(full_state_dict=True))
    opt = build_optimizer(model, TRAIN)
    dp, group = world // tp, rank // tp  # the ranks of a tensor-parallel group share a batch
    rows = slice(group * BATCH // dp, (group + 1) * BATCH // dp)
    stats = []
    for step in range(STEPS):
        s = train_step(model, opt, batch(step, rows), step, TRAIN)
        loss = torch.tensor(s["loss"])
        dist.all_reduce(loss)
        stats.append((float(loss) / world, s["grad_norm"]))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                 cpu_offload=True))
    if rank == 0:
        torch.save((stats, full), out)
    dist.barrier()
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_2x2_mesh_trains_as_one_process(tmp_path):
    torch.manual_seed(0)
    model = build_model(CFG)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, TRAIN)
    alone = [train_step(model, opt, batch(step), step, TRAIN) for step in range(STEPS)]
    out = str(tmp_path / "mesh.pt")
    sys.path.insert(0, os.getcwd())  # the spawned processes import this module
    mp.spawn(worker, args=(4, 2, free_port(), weights, out), nprocs=4)
    stats, full = torch.load(out, weights_only=True)
    for (loss, norm), s in zip(stats, alone):
        assert abs(loss - s["loss"]) < 1e-5 and abs(norm - s["grad_norm"]) < 1e-5
    for name, w in model.state_dict().items():  # after 5 AdamW steps
        torch.testing.assert_close(full[name], w, atol=2e-5, rtol=0)
