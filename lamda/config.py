"""Model configuration and the size presets (the paper, "Model")."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field

# Launch settings of the band kernels (lamda.attention.band) per kernel: (num_warps, num_stages),
# for the dq kernels also the number of programs to aim for (fewer: more batch rows summed per
# program); "bias_grad" is the dq kernel without dq. All are the fastest of those measured on an
# H200 (bench/RESULTS.md); more stages than these run out of shared memory or run slower.
DEFAULT_LAUNCH = {"fwd": (4, 2), "dq": (4, 1, 512), "bias_grad": (8, 1, 1024), "dkdv": (4, 2),
                  "bias_grad_tiles": (4, 2, 1024)}
BIAS_GRAD_LAUNCH = {"tiles": "bias_grad_tiles", "rows": "bias_grad"}  # kernel -> its launch key
# FlexAttention's backward block sizes for head size 128 on Hopper (sm90): Inductor's autotuning
# chose these over its default (64, 128, 128, 64, 3 stages, 8 warps) on an H200 (bench/RESULTS.md).
SM90_D128 = {"bwd_BLOCK_M1": 32, "bwd_BLOCK_N1": 64, "bwd_BLOCK_M2": 64, "bwd_BLOCK_N2": 32,
             "bwd_num_stages": 3, "bwd_num_warps": 4}


@dataclass(frozen=True)
class AttentionKernels:
    """How the CUDA attention kernels run (lamda.attention.flex and .band). Part of ModelConfig, so
    the settings reach Ray Train workers and are saved with checkpoints; they change speed only,
    never results. Settings are strings so they travel as flags and JSON as they are."""

    flex_options: str | None = None  # FlexAttention kernel_options "name=value,..."; "": its own
    #                                  choice; None: SM90_D128 where it applies (d_kv 128, Hopper)
    near_table: bool = True  # flex reads the bias by distance 0..W (every farther one shares W's
    #                          value); False: the whole row 0..T-1 (same values, more memory)
    bias_grad: str = "tiles"  # flex's bias-gradient Triton kernel: "tiles" (one per key tile, the
    #                           faster on an H200) or "rows" (band's dq kernel without dq)
    far: str = "flash"  # band's far part: "flash" (FlashAttention) or "cudnn"
    launch: str = ""  # band kernels' launch settings over DEFAULT_LAUNCH, "dq=4.1.2048,fwd=8.2"

    def __post_init__(self):
        if self.bias_grad not in BIAS_GRAD_LAUNCH:
            raise ValueError(f"bias_grad must be 'tiles' or 'rows', not {self.bias_grad!r}")
        if self.far not in ("flash", "cudnn"):
            raise ValueError(f"far must be 'flash' or 'cudnn', not {self.far!r}")
        self.flex_kernel_options()
        self.launch_settings()

    def flex_kernel_options(self) -> dict | None:
        """flex_options as FlexAttention's kernel_options dict (None: not set)."""
        if self.flex_options is None:
            return None
        return {key: value == "true" if value in ("true", "false") else _int(value, "flex_options")
                for key, value in _pairs(self.flex_options, "flex_options")}

    def bias_grad_launch(self) -> tuple[int, ...]:
        """The launch settings of the chosen bias-gradient kernel."""
        return self.launch_settings()[BIAS_GRAD_LAUNCH[self.bias_grad]]

    def launch_settings(self) -> dict[str, tuple[int, ...]]:
        """DEFAULT_LAUNCH with `launch` applied."""
        settings = dict(DEFAULT_LAUNCH)
        for kernel, numbers in _pairs(self.launch, "launch"):
            if kernel not in DEFAULT_LAUNCH or numbers.count(".") != len(DEFAULT_LAUNCH[kernel]) - 1:
                shapes = ", ".join(f"{k}={'.'.join('N' * len(v))}" for k, v in DEFAULT_LAUNCH.items())
                raise ValueError(f"launch: {kernel}={numbers} is not one of {shapes}")
            settings[kernel] = tuple(_int(x, "launch") for x in numbers.split("."))
        return settings


def _pairs(spec: str, what: str) -> list[tuple[str, str]]:
    """"a=1,b=2" -> [("a", "1"), ("b", "2")], or a ValueError naming `what`."""
    pairs = []
    for item in filter(None, spec.split(",")):
        key, eq, value = (x.strip() for x in item.partition("="))
        if not (key and eq and value):
            raise ValueError(f"{what}: expected name=value items separated by commas, got {item!r}")
        pairs.append((key, value))
    return pairs


def _int(text: str, what: str) -> int:
    if not text.lstrip("-").isdigit():
        raise ValueError(f"{what}: {text!r} is not an integer")
    return int(text)


@dataclass(frozen=True)
class ModelConfig:
    """Shape of a LaMDA decoder. Presets: `ModelConfig.from_name(name)`."""

    vocab_size: int = 32000  # SentencePiece BPE vocabulary (paper: 32K)
    n_layer: int = 12  # decoder blocks
    d_model: int = 768  # residual stream width
    n_head: int = 12  # attention heads
    d_kv: int = 64  # width of one head (n_head * d_kv need not equal d_model, as in T5)
    d_ff: int = 3072  # gated-GELU hidden width
    rel_buckets: int = 32  # T5 relative-position buckets
    rel_max_distance: int = 128  # distances >= this share the last bucket
    max_seq_len: int = 1024  # longest training sequence / default KV-cache length
    dropout: float = 0.0  # residual and attention dropout (paper sizes: 0)
    copy_dim: int = 0  # width of a copy head's queries and keys (lamda.model); 0: none, as the paper
    copy_heads: int = 1  # copy (pointer) heads, when copy_dim > 0
    norm_eps: float = 1e-6  # RMSNorm epsilon
    attn_backend: str = "auto"  # lamda.attention.BACKEND_NAMES: auto (flex on CUDA training), sdpa, flex, band
    attn_kernels: AttentionKernels = field(default_factory=AttentionKernels)  # CUDA kernel settings

    def __post_init__(self):
        if self.rel_max_distance <= self.rel_buckets // 2:
            raise ValueError(f"rel_max_distance ({self.rel_max_distance}) must exceed "
                             f"rel_buckets // 2 ({self.rel_buckets // 2}): the exact buckets")

    @classmethod
    def from_name(cls, name: str, **overrides) -> "ModelConfig":
        """A preset by name (see PRESETS), with optional field overrides."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
        return dataclasses.replace(PRESETS[name], **overrides)

    def replace(self, **changes) -> "ModelConfig":
        return dataclasses.replace(self, **changes)

    @property
    def d_attn(self) -> int:
        """Width of the concatenated heads (n_head * d_kv)."""
        return self.n_head * self.d_kv

    def num_params(self, non_embedding: bool = True) -> int:
        """Exactly the parameters `lamda.model.LaMDA(self)` allocates.

        Non-embedding leaves out the token embedding (tied with the output layer, so counted once)
        and the relative-position bias table, following Kaplan et al.'s convention of not counting
        embeddings (position embeddings included).
        """
        attn = 4 * self.d_model * self.d_attn  # q, k, v, o
        ffn = 3 * self.d_model * self.d_ff  # wi_0 (gelu), wi_1 (gate), wo
        norms = 2 * self.d_model
        body = self.n_layer * (attn + ffn + norms) + self.d_model  # + final norm
        if self.copy_dim:
            width, mix = self.copy_heads * self.copy_dim, 1 + self.copy_heads
            body += 2 * self.d_model * width + (self.d_model + 1) * mix  # copy q, k and weights
        if non_embedding:
            return body
        return body + self.vocab_size * self.d_model + self.rel_buckets * self.n_head

    def flops_per_token(self, seq_len: int) -> float:
        """Training FLOPs per token (forward + backward), PaLM convention: 6N + 12 L H d_kv T.

        N is the non-embedding parameter count; the second term is the attention score and value
        matmuls for a sequence of `seq_len` tokens (counted over the full square, as PaLM does),
        plus the copy heads' scores where the model has them.
        """
        copy = 6 * self.copy_heads * self.copy_dim * seq_len if self.copy_dim else 0  # scores only
        return 6 * self.num_params(non_embedding=True) + 12 * self.n_layer * self.d_attn * seq_len + copy

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        _check_fields(cls, d)
        kernels = d.get("attn_kernels", {})
        if isinstance(kernels, dict):
            _check_fields(AttentionKernels, kernels)
            d = {**d, "attn_kernels": AttentionKernels(**kernels)}
        return cls(**d)

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)

    @classmethod
    def load(cls, path) -> "ModelConfig":
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _check_fields(cls, d: dict) -> None:
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {sorted(unknown)}")


# The paper's sizes use heads x d_kv = 2 x d_model and d_ff = 8 x d_model (exact for 137B, inferred
# for 2B and 8B). The small presets are ours: `debug` for tests, `tiny` for the CPU demo (its
# vocabulary matches the tokenizer trained on data/sample; narrow heads rather than wide ones:
# copying for the research task wants several attention patterns at once; 8 layers of 192 rather
# than 4 of 256, which answered 73.5% of the held-out questions against 66.8-67.4% in the same
# training time; and a copy head, which lifted held-out accuracy from 35.5% to 53.5% and citation
# accuracy from 1% to 57% at 900 steps: see bench/RESULTS.md), 125m/350m for single-GPU work.
PRESETS: dict[str, ModelConfig] = {
    "debug": ModelConfig(vocab_size=1024, n_layer=2, d_model=64, n_head=4, d_kv=16, d_ff=256,
                         max_seq_len=128),
    "tiny": ModelConfig(vocab_size=4096, n_layer=8, d_model=192, n_head=6, d_kv=32, d_ff=768,
                        max_seq_len=256, copy_dim=64),
    "125m": ModelConfig(n_layer=12, d_model=768, n_head=12, d_kv=64, d_ff=3072),
    "350m": ModelConfig(n_layer=10, d_model=1024, n_head=16, d_kv=128, d_ff=8192),
    "2b": ModelConfig(n_layer=10, d_model=2560, n_head=40, d_kv=128, d_ff=20480, max_seq_len=2048),
    "8b": ModelConfig(n_layer=16, d_model=4096, n_head=64, d_kv=128, d_ff=32768, max_seq_len=2048),
    "137b": ModelConfig(n_layer=64, d_model=8192, n_head=128, d_kv=128, d_ff=65536,
                        max_seq_len=2048),
}
