"""Parallelism applied to a built model, kept out of the model code (torchtitan style).

Order, as in torchtitan: activation checkpointing -> torch.compile -> FSDP2.
- Checkpointing wraps each block, so the block's activations are recomputed in backward.
- Compile works per block (`Module.compile` in place, so parameter names do not change);
  FSDP's hooks stay outside the compiled regions.
- FSDP2 shards each block, then the root (embedding, bias table, final norm): parameters become
  DTensors sharded on dim 0 across the mesh. On GPU, parameters are gathered in bf16 and gradients
  reduced in fp32.
The state-dict helpers of torch.distributed.checkpoint strip the checkpoint wrapper's prefix, so
checkpoints and exports keep the plain parameter names.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import checkpoint_wrapper
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from lamda.model import LaMDA


@dataclass(frozen=True)
class ParallelConfig:
    fsdp: bool = True  # shard parameters, gradients and optimizer state across ranks
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    compile: bool = False  # torch.compile each block
    bf16: bool = False  # bf16 parameters in compute, fp32 master weights and reductions


def parallelize(model: LaMDA, cfg: ParallelConfig, device_type: str, world_size: int) -> LaMDA:
    """Apply checkpointing, compile and FSDP2 to `model` (on the meta device or materialised)."""
    if cfg.activation_checkpointing:
        for i, block in enumerate(model.blocks):
            model.blocks[i] = checkpoint_wrapper(block, preserve_rng_state=False)
    if cfg.compile:
        for block in model.blocks:
            block.compile()
    if cfg.fsdp:
        mesh = init_device_mesh(device_type, (world_size,))
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if cfg.bf16 \
            else MixedPrecisionPolicy()
        for block in model.blocks:
            fully_shard(block, mesh=mesh, mp_policy=mp)
        fully_shard(model, mesh=mesh, mp_policy=mp, reshard_after_forward=False)
    return model
