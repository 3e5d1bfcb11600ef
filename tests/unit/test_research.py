import json

import pytest
import torch

from lamda.config import ModelConfig
from lamda.data import Turn, research_example, research_prompt
from lamda.decode import GraphStep, SamplingConfig
from lamda.model import build_model
from lamda.rank import RankConfig, Ranked, Scored
from lamda.research import research_loop, route
from lamda.roles import load_roles, parse_role
from lamda.turn import ChatConfig, ChatModel, chat_turn, local_turn

CONTEXT = [Turn("user", "How tall is Mount Everest?")]
URL = "https://example.org/kb/mountains/mount-everest"


def scripted(outputs):
    """A research callable that replays outputs and records what it saw."""
    seen = []

    def research(context, draft, steps):
        seen.append((draft, [s.query for s in steps]))
        return outputs[len(seen) - 1]

    return research, seen


def test_routing_by_first_word():
    assert route("TS, Mount Everest height") == ("TS", "Mount Everest height")
    assert route("User, It is 8,849 m tall.") == ("User", "It is 8,849 m tall.")
    assert route("no marker at all") == ("User", "no marker at all")


def test_loop_queries_the_toolset_then_answers_with_citations():
    research, seen = scripted(["TS, Mount Everest", "TS, Mount Everest height",
                               f"User, Mount Everest is 8,849 metres tall. {URL}"])
    tool_queries = []

    def toolset(q):
        tool_queries.append(q)
        return [f"Mount Everest is 8,849 metres tall. {URL}"] if "height" in q else ["nothing"]

    r = research_loop(CONTEXT, lambda ctx: "It is 9,000 metres tall.", research, toolset)
    assert r.reply == f"Mount Everest is 8,849 metres tall. {URL}"
    assert r.draft == "It is 9,000 metres tall." and not r.budget_exhausted
    assert tool_queries == ["Mount Everest", "Mount Everest height"]
    assert r.citations == [URL]
    assert seen == [("It is 9,000 metres tall.", []), ("It is 9,000 metres tall.", ["Mount Everest"]),
                    ("It is 9,000 metres tall.", ["Mount Everest", "Mount Everest height"])]
    assert [t["from"] for t in r.trace] == ["LAMDA-BASE", "LAMDA-RESEARCH", "TS", "LAMDA-RESEARCH",
                                            "TS", "LAMDA-RESEARCH"]
    assert list(r.to_dict()["steps"][1]["results"]) == [f"Mount Everest is 8,849 metres tall. {URL}"]


def test_iteration_cap_returns_the_best_reply_so_far():
    research, seen = scripted(["TS, q"] * 10)
    calls = []
    r = research_loop(CONTEXT, lambda ctx: "draft", research, lambda q: calls.append(q) or [],
                      max_iterations=2)
    assert r.budget_exhausted and r.reply == "draft" and r.citations == []
    assert len(calls) == 2 and len(seen) == 3


def test_citations_only_count_urls_from_tool_results():
    research, _ = scripted(["TS, x", "User, see https://example.org/a and https://made.up/b."])
    r = research_loop(CONTEXT, lambda ctx: "d", research, lambda q: ["fact https://example.org/a"])
    assert r.citations == ["https://example.org/a"]


def test_research_prompt_matches_the_fine_tuning_format(tok, research_records):
    """What the loop asks the model to continue is exactly what the research example trained."""
    rec = next(r for r in research_records if len(r.steps) == 2)
    ex = research_example(tok, rec)
    starts = [i for i in range(1, len(ex.ids)) if ex.loss_mask[i] and not ex.loss_mask[i - 1]]
    for i, start in enumerate(starts):
        assert ex.ids[:start] == research_prompt(tok, rec.context, rec.draft, rec.steps[:i])
    assert [tok.decode(ex.ids[s:s + 1]) for s in starts] == ["TS,", "TS,", "User,"]


def test_roles_load_and_precondition():
    roles = load_roles()
    assert {"lamda", "lamda-everest", "lamda-music"} <= set(roles)
    everest = roles["lamda-everest"]
    ctx = everest.context(CONTEXT)
    assert ctx[0].speaker == "lamda" and "Mount Everest" in ctx[0].text and ctx[-1] == CONTEXT[0]
    assert roles["lamda"].context(CONTEXT) == CONTEXT


def test_users_add_roles_as_files(tmp_path):
    (tmp_path / "pirate.json").write_text(json.dumps({
        "name": "pirate", "preconditioning": [{"speaker": "lamda", "text": "Arr, ask me anything."}]}))
    roles = load_roles(tmp_path)
    assert roles["lamda-pirate"].preconditioning[0].text == "Arr, ask me anything."
    with pytest.raises(ValueError, match="bad role"):
        parse_role({"name": "x", "preconditioning": [{"speaker": "bot", "text": "hi"}]})


def ranked(reply, fallback=False):
    s = Scored(reply, 1, 1, 1, 0, 5, 1, -1.0, 3)
    return Ranked(reply, fallback, None if fallback else s, [s])


def test_chat_turn_skips_research_after_the_safety_fallback():
    called = []
    a = chat_turn(CONTEXT, lambda ctx: (ranked("Sorry.", fallback=True), 10.0, {}),
                  lambda *a: called.append(a), lambda q: [], ChatConfig())
    assert a.reply == "Sorry." and a.research is None and not called


def test_chat_turn_runs_research_on_the_ranked_reply():
    research, seen = scripted([f"User, 8,849 m. {URL}"])
    a = chat_turn(CONTEXT, lambda ctx: (ranked("9,000 m"), 10.0, {"generated": 5}),
                  lambda ctx, d, s: (research(ctx, d, s), 2.0), lambda q: [], ChatConfig())
    assert seen[0][0] == "9,000 m" and a.reply == f"8,849 m. {URL}" and a.flops == 12.0


def test_chat_turn_checks_the_research_reply_for_safety():
    """The research loop's final reply passes the safety filter like any candidate."""
    research, _ = scripted(["User, something unsafe"])
    checked = []

    def check(ctx, reply):
        checked.append(reply)
        return ranked("Sorry, I'd rather not answer that.", fallback=True), 3.0

    a = chat_turn(CONTEXT, lambda ctx: (ranked("9,000 m"), 10.0, {}),
                  lambda ctx, d, s: (research(ctx, d, s), 2.0), lambda q: [], ChatConfig(), check)
    assert checked == ["something unsafe"] and a.reply == "Sorry, I'd rather not answer that."
    assert a.research.reply == "something unsafe" and a.research.filtered and a.flops == 15.0
    assert a.fallback and a.research.citations == []
    research, _ = scripted(["User, 8,849 m."])
    a = chat_turn(CONTEXT, lambda ctx: (ranked("9,000 m"), 10.0, {}),
                  lambda ctx, d, s: (research(ctx, d, s), 2.0), lambda q: [], ChatConfig(),
                  lambda ctx, reply: (ranked(reply), 3.0))
    assert a.reply == "8,849 m." and a.research.filtered is None and not a.fallback


def test_local_turn_with_a_real_model(tok):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).eval()
    cfg = ChatConfig(sampling=SamplingConfig(num_candidates=4, max_new_tokens=8, seed=0),
                     rank=RankConfig(safety_threshold=0.0), max_iterations=1, research_candidates=2,
                     research_temperature=1.0)
    a = local_turn(ChatModel(model, tok), lambda q: ["result https://example.org/r"], CONTEXT, cfg)
    assert isinstance(a.reply, str) and len(a.ranked.candidates) == 4
    assert a.flops > 0 and a.tokens["generated"] > 0
    assert a.research is not None and a.research.trace[0]["from"] == "LAMDA-BASE"
    assert a.research.trace[1]["to"] in ("TS", "User")  # the research output routes itself


def test_graph_step_chat_model_warms_up_and_answers(tok):
    """The GPU decoding path (compiled step over static caches; CUDA graphs on GPU) through a whole
    turn: warm_up compiles two shapes, then a turn with research answers as the eager one does."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size)).eval()
    cfg = ChatConfig(sampling=SamplingConfig(num_candidates=4, max_new_tokens=8, seed=0),
                     rank=RankConfig(safety_threshold=0.0), max_iterations=1, research_candidates=2)
    chat = ChatModel(model, tok, step=GraphStep(len_multiple=64))
    chat.warm_up(cfg.sampling)
    assert len(chat.step.caches) == 2
    tools = lambda q: ["result https://example.org/r"]  # noqa: E731
    graph = local_turn(chat, tools, CONTEXT, cfg)
    eager = local_turn(ChatModel(model, tok), tools, CONTEXT, cfg)
    assert graph.reply == eager.reply and graph.research.trace == eager.research.trace
