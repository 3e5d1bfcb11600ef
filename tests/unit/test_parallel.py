"""parallelize(): in one process, FSDP2 over a 1-rank gloo group, activation checkpointing and
compile match the plain model; in 4 CPU processes (gloo), tensor parallelism composed with FSDP2
as a 2 x 2 mesh (dp, tp) trains to the losses, gradient norms and weights of one process, and
initialises consistently; in 2, the ranks agree on the CPU precision."""

import json
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                     set_model_state_dict)

from lamda.config import ModelConfig
from lamda.model import build_model, lm_loss
from lamda.parallel import ParallelConfig, init_weights, parallelize
from lamda.training import TrainConfig, build_optimizer, train_step

CFG = ModelConfig.from_name("debug")


def port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def process_group():
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port()}", rank=0, world_size=1)
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


@pytest.mark.parametrize("pc, copy_dim", [
    (ParallelConfig(fsdp=True), 0),
    (ParallelConfig(fsdp=True), 16),
    (ParallelConfig(fsdp=True, activation_checkpointing=True), 0),
    (ParallelConfig(fsdp=False, activation_checkpointing=True, compile=True), 0),
], ids=["fsdp", "fsdp+copy-head", "fsdp+ac", "ac+compile"])
def test_parallelized_model_matches_the_plain_one(process_group, pc, copy_dim):
    torch.manual_seed(0)
    cfg = CFG.replace(copy_dim=copy_dim)
    plain = build_model(cfg)
    other = build_model(cfg, device="meta")
    parallelize(other, pc, "cpu", world_size=1)
    other.to_empty(device="cpu")
    set_model_state_dict(other, plain.state_dict(), options=StateDictOptions(full_state_dict=True))
    x = torch.randint(0, cfg.vocab_size, (2, 33))
    loss_a, grads_a = loss_and_grads(plain, x)
    loss_b, grads_b = loss_and_grads(other, x)
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    assert grads_a.keys() == grads_b.keys()
    for name in grads_a:
        torch.testing.assert_close(grads_a[name], grads_b[name], atol=1e-5, rtol=1e-4)


# -- tensor parallelism x FSDP2 in 4 processes ---------------------------------------------------

TP_CFG = ModelConfig.from_name("debug", vocab_size=256)
TRAIN = TrainConfig(steps=5, lr=1e-3, warmup_steps=1)
STEPS, BATCH = 5, 8


def batch(step: int, rows: slice = slice(None)):
    x = torch.randint(0, TP_CFG.vocab_size, (BATCH, 33),
                      generator=torch.Generator().manual_seed(step))[rows]
    return [(x[:, :-1], x[:, 1:], None, None)]


def worker(rank: int, world: int, tp: int, port: int, weights: dict, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = build_model(TP_CFG, device="meta")
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


def test_a_2x2_mesh_trains_as_one_process(tmp_path):
    torch.manual_seed(0)
    model = build_model(TP_CFG)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt = build_optimizer(model, TRAIN)
    alone = [train_step(model, opt, batch(step), step, TRAIN) for step in range(STEPS)]
    out = str(tmp_path / "mesh.pt")
    mp.spawn(worker, args=(4, 2, port(), weights, out), nprocs=4)
    stats, full = torch.load(out, weights_only=True)
    for (loss, norm), s in zip(stats, alone):
        assert abs(loss - s["loss"]) < 1e-5 and abs(norm - s["grad_norm"]) < 1e-5
    # after 5 AdamW steps; the mesh sums in another order, and Adam's normalised update turns a
    # near-zero gradient's rounding into a whole step: 2.4e-5 apart on an AMD EPYC, for 1 of 4,096
    for name, w in model.state_dict().items():
        torch.testing.assert_close(full[name], w, atol=5e-5, rtol=0)


def bf16_choice(rank: int, port: int, cases: list, out: str) -> None:
    """A rank of a 2-process gloo group: for each (rank 0 pays, rank 1 pays, decided before)
    case, the precision the Ray Train loop computes in, and what its train state keeps."""
    import lamda.ray_train as R
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    spec = R.RunSpec(model=CFG, train=TRAIN, tokenizer=None, parallel=ParallelConfig())
    got = []
    for pays, decided in cases:
        R.cpu_bf16_pays = lambda device: pays[rank]  # this rank's CPU, as it timed it
        state = R.TrainState(cpu_bf16=decided)
        got.append([R._compute_in_bf16(spec, state, torch.device("cpu")), state.cpu_bf16])
    with open(f"{out}.{rank}", "w") as f:
        json.dump(got, f)
    dist.destroy_process_group()


def test_every_rank_computes_in_the_precision_decided_once_for_the_run(tmp_path):
    """bf16 only where every rank's CPU pays (a rank that timed its CPU busy makes them all
    compute in float32, not alone), and a resumed run keeps what its train state says."""
    cases = [((True, True), None), ((True, False), None), ((False, False), True),
             ((True, True), False)]
    mp.spawn(bf16_choice, args=(port(), cases, str(tmp_path / "out")), nprocs=2)
    for rank in (0, 1):
        got = json.loads((tmp_path / f"out.{rank}").read_text())
        assert got == [[True, True], [False, False], [True, True], [False, False]]
