"""Parallelism applied to a built model, kept out of the model code (torchtitan style).

Order, as in torchtitan: tensor parallelism -> activation checkpointing -> torch.compile -> FSDP2.
- Tensor parallelism (`tp` > 1) splits each block over the `tp` ranks of a node (Megatron style,
  DTensor `parallelize_module`): q, k, v and the FFN's wi_0, wi_1 by output columns (each rank its
  heads and its part of d_ff), o and wo by input rows, whose outputs are summed across the ranks.
  The relative-bias table is split by heads the same way, so each rank's attention sees exactly
  its heads' bias with any backend; norms and the (tied) embedding stay whole on every rank.
- Checkpointing wraps each block, so the block's activations are recomputed in backward.
- Compile works per block (`Module.compile` in place, so parameter names do not change);
  FSDP's hooks stay outside the compiled regions.
- FSDP2 shards each block, then the root (embedding, bias table, final norm) over the
  data-parallel ranks (`world / tp`): parameters become DTensors sharded on dim 0 (with `tp`, on
  the 2-D mesh (dp, tp)). On GPU, parameters are gathered in bf16 and gradients reduced in fp32.
The state-dict helpers of torch.distributed.checkpoint strip the checkpoint wrapper's prefix, so
checkpoints and exports keep the plain parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import DeviceMesh, init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
from torch.distributed.tensor import DTensor, Shard, distribute_tensor
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

from lamda.model import LaMDA


@dataclass(frozen=True)
class ParallelConfig:
    """How the model is split and run across the ranks."""

    fsdp: bool = True  # shard parameters, gradients and optimizer state across ranks
    reshard_after_forward: bool = True  # free each block's gathered parameters after its forward
    #                                     (False: keep them for backward, one all-gather less)
    tp: int = 1  # tensor-parallel degree: each block split over this many ranks (of one node)
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile each block
    bf16: bool = False  # bf16 parameters in compute, fp32 master weights and reductions
    cpu_bf16: bool = True  # on CPU: compute in bf16 (autocast; fp32 weights and AdamW) where this
    #                        CPU multiplies bf16 matrices faster (lamda.training.cpu_bf16_pays)


def parallelize(model: LaMDA, cfg: ParallelConfig, device_type: str,
                world_size: int) -> DeviceMesh | None:
    """Apply tensor parallelism, checkpointing, compile and FSDP2 to `model` (on the meta device
    or materialised); returns the (dp, tp) device mesh (None in one process without either)."""
    if world_size % cfg.tp:
        raise ValueError(f"{world_size} ranks do not divide into tensor-parallel groups of {cfg.tp}")
    mesh = None
    if cfg.tp > 1 or cfg.fsdp:
        mesh = init_device_mesh(device_type, (world_size // cfg.tp, cfg.tp),
                                mesh_dim_names=("dp", "tp"))
    if cfg.tp > 1:
        tensor_parallel(model, mesh["tp"])
    if cfg.activation_checkpointing:
        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if cfg.compile:
        for block in model.blocks:
            block.compile()
    if cfg.fsdp:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.bf16 \
            else MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mesh=mesh["dp"], mp_policy=mp,
                        reshard_after_forward=cfg.reshard_after_forward)
        fully_shard(model, mesh=mesh["dp"], mp_policy=mp, reshard_after_forward=False)
    return mesh


def init_weights(model: LaMDA, mesh: DeviceMesh | None, seed: int) -> None:
    """Initialise a parallelized model after `to_empty`: each rank draws its own shards
    (seed + rank), then the parameters that every rank of a tensor-parallel group holds whole
    (norms, the embedding) take the values of the group's first rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(seed + rank)
    model.init_weights()
    if mesh is None or mesh["tp"].size() == 1:
        return
    group = mesh["tp"].get_group()
    for p in model.parameters():
        split = isinstance(p, DTensor) and "tp" in (p.device_mesh.mesh_dim_names or ())
        if not split:
            dist.broadcast(p.to_local() if isinstance(p, DTensor) else p.data, group=group,
                           group_src=0)


def tensor_parallel(model: LaMDA, mesh: DeviceMesh) -> None:
    """Split every block's heads and FFN, and the bias table's heads, over `mesh` (1-D)."""
    c, tp = model.cfg, mesh.size()
    if c.n_head % tp or c.d_ff % tp:
        raise ValueError(f"tensor parallelism of {tp}: {c.n_head} heads and d_ff {c.d_ff} must "
                         f"divide by it")
    plan = {"attn.q": ColwiseParallel(), "attn.k": ColwiseParallel(), "attn.v": ColwiseParallel(),
            "attn.o": RowwiseParallel(),
            "ffn.wi_0": ColwiseParallel(), "ffn.wi_1": ColwiseParallel(), "ffn.wo": RowwiseParallel()}
    for block in model.blocks:
        parallelize_module(block, mesh, plan)
    table = model.rel_bias.weight  # (buckets, H): heads on dim 1, split as q's columns are
    model.rel_bias.weight = torch.nn.Parameter(distribute_tensor(table.data, mesh, [Shard(1)]))
