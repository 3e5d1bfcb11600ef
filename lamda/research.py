"""The research loop (paper §6.2): LaMDA-Base drafts a reply, LaMDA-Research consults the
toolset until it is ready to answer the user, citing its sources.

A pure function over injected callables, so Serve passes deployment handles and tests pass plain
functions:
    base(context) -> draft reply
    research(context, draft, steps) -> "TS, <query>" or "User, <reply>"
    toolset(query) -> list of result strings ("<snippet> <url>" for retrieval)
The first word of a research output routes it: `TS,` to the toolset (its results are appended to
the context as `TS: <result>` turns), `User,` to the user. There are no other heuristics. After
`max_iterations` tool calls the loop asks once more; if that is still a query, the best reply so
far (the draft) is returned and the result says the budget ran out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

from lamda.data import ResearchStep, Turn
from lamda.tokenizer import TO_TOOLSET, TO_USER

URL = re.compile(r"\b(?:https?|dict)://[^\s<>\"']+")


@dataclass
class ResearchResult:
    reply: str  # what the user gets
    draft: str  # LaMDA-Base's first reply
    steps: list[ResearchStep]  # tool queries and their results, in order
    citations: list[str]  # URLs in the reply that came from the tool results
    budget_exhausted: bool  # no User reply within max_iterations tool calls
    trace: list[dict] = field(default_factory=list)  # every output in order, for the trace
    filtered: str | None = None  # why the safety filter replaced the reply (lamda.turn.chat_turn)

    def to_dict(self) -> dict:
        return asdict(self)


def route(output: str) -> tuple[str, str]:
    """("TS", query) or ("User", reply). Output that starts with neither counts as a reply."""
    text = output.strip()
    for marker, target in ((TO_TOOLSET, "TS"), (TO_USER, "User")):
        if text.startswith(marker):
            return target, text[len(marker):].strip()
    return "User", text


def citations(reply: str, steps: list[ResearchStep]) -> list[str]:
    """URLs of the reply that some tool result contained, in order of appearance."""
    sourced = {u.rstrip(".,;)") for s in steps for r in s.results for u in URL.findall(r)}
    out = []
    for u in URL.findall(reply):
        u = u.rstrip(".,;)")
        if u in sourced and u not in out:
            out.append(u)
    return out


def research_loop(context: list[Turn], base: Callable[[list[Turn]], str],
                  research: Callable[[list[Turn], str, list[ResearchStep]], str],
                  toolset: Callable[[str], list[str]], max_iterations: int = 4,
                  draft: str | None = None) -> ResearchResult:
    """Run Base -> Research (-> TS -> Research)* for one turn. A given `draft` skips `base`."""
    draft = base(context) if draft is None else draft
    steps: list[ResearchStep] = []
    trace = [{"from": "LAMDA-BASE", "text": draft}]
    for i in range(max_iterations + 1):
        target, text = route(research(context, draft, steps))
        trace.append({"from": "LAMDA-RESEARCH", "to": target, "text": text})
        if target == "User":
            return ResearchResult(text, draft, steps, citations(text, steps), False, trace)
        if i == max_iterations:
            break
        results = list(toolset(text))
        steps.append(ResearchStep(text, tuple(results)))
        trace.append({"from": "TS", "query": text, "results": results})
    return ResearchResult(draft, draft, steps, [], True, trace)
