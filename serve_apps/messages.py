"""What the Chat ingress and the model deployments send each other (pickled by Serve, so plain
dataclasses: no hand-built dicts on either side)."""

from __future__ import annotations

from dataclasses import dataclass, field

from lamda.decode import Candidate
from lamda.rank import Ranked


@dataclass
class Spent:
    """What one deployment call spent."""

    flops: float = 0.0
    tokens: dict[str, int] = field(default_factory=dict)  # prompt, generated, reused, scored
    energy_kwh: float = 0.0


@dataclass
class Sampled(Spent):
    """Sampler.generate: one conversation's candidates."""

    candidates: list[Candidate] = field(default_factory=list)
    batch: int = 0  # conversations decoding together when this one joined
    seconds: float = 0.0


@dataclass
class Researched(Spent):
    """Sampler.research: the research task's next output ("TS, ..." or "User, ...")."""

    output: str = ""


@dataclass
class RankResult(Spent):
    """Ranker.rank / rank_reply: the candidates scored, filtered and ranked."""

    ranked: Ranked | None = None
