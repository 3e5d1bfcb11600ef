"""Tool-use data from the real tools, and the hold-out of the evaluation split."""

import random
import re
from fractions import Fraction

import pytest

from lamda import tool_data as TD
from lamda.data import (aggregate_ratings, finetune_examples, parse_labelled, research_example,
                        research_prompt)
from lamda.tools.dictd import DictDatabase, find_database

ENTITY_KINDS = ("arithmetic", "element", "translation")


@pytest.fixture(scope="module")
def splits(tool_sources):
    return {s: TD.build_questions(tool_sources, s) for s in TD.SPLITS}


def operands(q: TD.Question) -> set[str]:
    return set(re.findall(r"\d+", q.text))


def test_sources_are_the_real_dictionaries(tool_sources):
    sodium = next(e for e in tool_sources.elements if e.name == "sodium")
    assert (sodium.symbol, sodium.number, sodium.url) == ("Na", "11", "dict://dict.org/d:sodium:elements")
    assert len(tool_sources.elements) > 100 and len(tool_sources.words) > 1000
    assert "chat" in tool_sources.words["cat"]["French"] and tool_sources.words["cat"]["German"] == ["Katze"]


def test_entities_and_numbers_of_the_eval_split_are_held_out(splits):
    train, evals = splits["train"], splits["eval"]
    assert {q.kind for q in evals} >= set(ENTITY_KINDS) | {"chat"}
    train_numbers = set().union(*(operands(q) for q in train if q.kind == "arithmetic"))
    eval_numbers = set().union(*(operands(q) for q in evals if q.kind == "arithmetic"))
    assert eval_numbers and not eval_numbers & train_numbers
    for kind, key in (("element", lambda q: q.url), ("translation", lambda q: q.query.rsplit(" in ", 1)[0].strip("'\"").lower())):
        held = {key(q) for q in evals if q.kind == kind}
        assert held and not held & {key(q) for q in train if q.kind == kind}, kind
    assert not {q.text for q in evals if q.kind == "chat"} & {q.text for q in train if q.kind == "chat"}


def test_phrasings_of_the_eval_split_are_held_out(splits):
    for kind in (*ENTITY_KINDS, "document"):
        train = {q.template for q in splits["train"] if q.kind == kind}
        evals = {q.template for q in splits["eval"] if q.kind == kind}
        assert evals and not evals & train, kind
    train_texts = {q.text for q in splits["train"]}
    assert not any(q.text in train_texts for q in splits["eval"])


def test_no_eval_entity_in_any_training_record(splits, research_records, tool_sources):
    evals = splits["eval"]
    elements = {e.name for e in tool_sources.elements if TD.split_of(f"element:{e.name}") == "eval"}
    urls = {e.url for e in tool_sources.elements if e.name in elements}
    texts = [" ".join([r.draft, r.reply, *(t.text for t in r.context), *(s.query for s in r.steps),
                       *(x for s in r.steps for x in s.results)]) for r in research_records]
    assert not any(u in t for u in urls for t in texts)
    words = re.compile("|".join(rf"\b{q.query.rsplit(' in ', 1)[0]}\b" for q in evals
                                if q.kind == "translation"), re.I)
    queries = [s.query for r in research_records for s in r.steps]
    assert not any(words.fullmatch(q.rsplit(" in ", 1)[0].strip("'\"")) for q in queries if " in " in q)
    numbers = set().union(*(operands(q) for q in evals if q.kind == "arithmetic"))
    arithmetic = [r for r in research_records if r.id.startswith("res-arith")]
    assert arithmetic and not any(set(re.findall(r"\d+", r.context[0].text)) & numbers for r in arithmetic)


def test_no_eval_document_or_element_in_any_training_file(research_records, tool_sources):
    """The held-out documents' answers occur in no training file (transcripts, bundled dialogs,
    labelled responses), and no element name is a translation word (its reply would give the
    symbol away: "chlorine is Chlor Cl")."""
    from lamda.data import SAMPLE_DIR
    held = [d for d in tool_sources.documents if d.split == "eval"]
    assert held and tool_sources.held_out_urls("train") >= {d.url for d in held}
    texts = [" ".join([r.draft, r.reply, *(t.text for t in r.context), *(s.query for s in r.steps),
                       *(x for s in r.steps for x in s.results)]) for r in research_records]
    for name in ("dialogs.jsonl", "labelled.jsonl"):
        texts += (SAMPLE_DIR / name).read_text(encoding="utf-8").splitlines()
    leaks = [d.answer for d in held if any(d.answer in t or d.url in t for t in texts)]
    assert not leaks, leaks[:3]
    assert not {e.name for e in tool_sources.elements} & set(tool_sources.words)


def test_ground_truth_comes_from_the_sources(splits, tool_sources):
    elements = DictDatabase(find_database("elements"))
    for q in splits["eval"]:
        if q.kind == "arithmetic":
            a, symbol, b = q.query.split()
            value = {"+": Fraction(a) + Fraction(b), "-": Fraction(a) - Fraction(b),
                     "*": Fraction(a) * Fraction(b), "/": Fraction(a) / Fraction(b)}[symbol]
            assert q.answers == (TD.fmt_number(value),)
        elif q.kind == "element":
            entry = elements.lookup(q.url.split(":")[2])[0]
            assert re.search(rf"^(Symbol|Atomic number):\s*{re.escape(q.answers[0])}$", entry, re.M)
        elif q.kind == "translation":
            word, lang = q.query.rsplit(" in ", 1)
            assert list(q.answers) == tool_sources.words[word.strip("'\"")][lang.capitalize()]


def test_transcripts_hold_what_the_real_tools_returned(research_records, tool_index):
    from lamda.tools import Toolset
    from lamda.tools.retrieval import Retriever
    tools = Toolset(retriever=Retriever(tool_index), timeout_s=120)
    by_kind = {}
    for r in research_records:
        by_kind.setdefault(r.id.split("-")[1], r)
    assert set(by_kind) >= {"arith", "trans", "elem", "chat", "doc"}
    for kind, r in by_kind.items():
        session = f"check-{r.id}"
        for step in r.steps:
            assert list(step.results) == tools(step.query, session), (kind, step.query)
    elem = next(r for r in research_records if r.id.startswith("res-elem") and "dict://" in r.reply)
    url = elem.reply.split()[-1]
    assert re.fullmatch(r"dict://dict\.org/d:\w+:elements", url) and url in " ".join(elem.steps[-1].results)
    assert by_kind["chat"].steps == () and by_kind["chat"].reply == by_kind["chat"].draft


def test_multi_step_research_goes_on_only_while_the_results_miss(research_records):
    cited = [r for r in research_records if "://" in r.reply]  # element and document facts
    multi = [r for r in cited if len(r.steps) > 1]
    assert multi
    for r in cited:
        url = re.search(r"\S+://\S+", r.reply).group().rstrip(".,)")
        assert url in " ".join(r.steps[-1].results)
        assert not any(x in r.steps[-1].results for s in r.steps[:-1] for x in s.results)


def test_one_sequence_trains_every_research_output(research_records, tok):
    rec = next(r for r in research_records if len(r.steps) >= 1)
    ex = research_example(tok, rec)
    starts = [i for i in range(1, len(ex.ids)) if ex.loss_mask[i] and not ex.loss_mask[i - 1]]
    assert len(starts) == len(rec.steps) + 1
    for i, start in enumerate(starts):  # what precedes each output is exactly the loop's prompt
        assert ex.ids[:start] == research_prompt(tok, rec.context, rec.draft, rec.steps[:i])


def test_miscopy_gets_the_longest_word_or_number_wrong_and_keeps_the_rest():
    rng = random.Random(0)
    for text in ("chemical symbol of hafnium", "'river' in French", "135 + 7721", "93 - 7"):
        words = re.findall(r"\w+", text)
        at = words.index(max(words, key=len))
        for _ in range(50):
            out = re.findall(r"\w+", TD.miscopy(text, rng))
            assert len(out) == len(words) and out[at] != words[at]
            assert out[:at] + out[at + 1:] == words[:at] + words[at + 1:]


def test_a_misleading_draft_never_names_the_entity_nor_another(tool_sources):
    """This question's draft with the entity copied wrong (or the operator misread), or another
    question's: the research must find the entity and the operator in the user's message, as it
    must when LaMDA-Base drafts a question it has never seen. A miscopied entity is no real word,
    element or held-out number."""
    qs = [q for q in TD.build_questions(tool_sources, "train", n_arithmetic=60, per_element=1,
                                        per_word=1, max_words=60, chat_repeats=1, unknown_elements=0)
          if q.kind in ENTITY_KINDS]
    known = {e.name for e in tool_sources.elements} | set(tool_sources.words)
    others = ["Hi! Happy to chat.", "Bye for now."]
    rng, miscopied, ops = random.Random(0), 0, [0, 0]
    for q in qs:
        query = TD.miscopied_query(q, tool_sources, rng)
        if q.kind == "arithmetic":  # an operand miscopied, or the operator misread
            (a, op, b), (a2, op2, b2) = q.query.split(), query.split()
            assert (op2 == op) != ((a2, b2) == (a, b)), (q.query, query)
            ops[op2 == op] += 1
            assert all(TD.split_of(f"number:{n}") == "train" for n in (a2, b2))
        else:
            entity = query.rsplit(" of ", 1)[1] if q.kind == "element" else query.rsplit(" in ", 1)[0]
            assert entity.strip("'\"").lower() not in known, query
        draft = TD.misleading_draft(q, tool_sources, rng, others)
        miscopied += draft not in others
        entity = q.query.rsplit(" of ", 1)[1] if q.kind == "element" else q.query.rsplit(" in ", 1)[0]
        assert not re.search(rf"(?<![\w.]){re.escape(entity)}(?!\w)", draft, re.I), (q.query, draft)
    assert 0.3 * len(qs) < miscopied < 0.7 * len(qs)
    assert min(ops) > 0.3 * sum(ops)  # operators misread and operands miscopied


def test_safety_labels_rate_replies_and_drafts_safe_and_nothing_else(tok):
    user = [{"speaker": "user", "text": "What is 2 + 2?"}]
    records = [{"id": "res-arith-1", "context": user, "draft": "It's 5.", "steps": [], "reply": "It's 4."},
               {"id": "res-chat-2", "context": user, "draft": "Hi!", "steps": [], "reply": "Hi!"}]
    labels = [parse_labelled(d) for d in TD.safety_labels(records, random.Random(0), 5)]
    assert sorted(x.response for x in labels) == ["Hi!", "It's 4.", "It's 5."]  # a chat draft once
    for x in labels:
        assert aggregate_ratings(x.ratings) == {"unsafe": 0}
        (ex,) = finetune_examples(tok, x, "labelled")  # the rating only: no generative example
        assert sum(ex.loss_mask) == 1
    assert len(TD.safety_labels(records, random.Random(0), 1)) in (1, 2)


def test_copy_drills_say_back_training_words_and_numbers(tool_sources):
    drills = TD.copy_drills(tool_sources, 300)
    assert len({d["id"] for d in drills}) == 300
    held = {w for w in tool_sources.words if TD.split_of(f"word:{w}") == "eval"}
    names = {e.name for e in tool_sources.elements}
    for d in drills:
        user, reply = (t["text"] for t in d["turns"])
        said = next(said for ask in TD.DRILLS[0] if (said := _unformat(ask, user)) is not None)
        assert any(answer.format(x=said) == reply for answer in TD.DRILLS[1])  # said back as is
        assert not set(said.split()) & (held | names)
        assert all(TD.split_of(f"number:{int(n)}") == "train" for n in said.split() if n.isdigit())
    assert TD.copy_drills(tool_sources, 300) == drills  # deterministic


def test_edit_distance():
    assert [TD.edit_distance(a, b) for a, b in (("acmium", "cadmium"), ("sodium", "sodium"),
            ("sadium", "sodium"), ("kitten", "sitting"), ("", "abc"), ("ab", "abcdefg"))] == [2, 0, 1, 3, 3, 5]


def test_made_up_elements_join_training_elements_and_name_none(tool_sources):
    names = TD.made_up_elements(tool_sources, 200, random.Random(0))
    assert len(set(names)) == 200 and names == TD.made_up_elements(tool_sources, 200, random.Random(0))
    train = [e.name for e in tool_sources.elements_in("train")]
    real = tool_sources.element_names
    for name in names:
        assert name not in real and name not in tool_sources.words
        assert all(TD.edit_distance(name, e) > 2 for e in real), name  # not a letter or two off one
        assert any(name.startswith(a[:2]) for a in train) and any(name.endswith(b[-3:]) for b in train)
    qs = TD.build_questions(tool_sources, "train", n_arithmetic=0, per_element=0, max_words=0,
                            chat_repeats=0, unknown_elements=0, made_up=50)
    made_up = [q for q in qs if q.kind == "element"]
    assert len(made_up) == 50 and not any(q.answers or q.url for q in made_up)
    assert not {q.slots()["el"] for q in made_up} & (real | set(tool_sources.words))


def _words(templates) -> set[str]:
    return {w for t in templates for w in re.findall(r"[a-z]+|[^\sa-z\d{}'\".,!?]", re.sub(r"{\w+}", "", t.lower()))}


def test_the_intent_words_of_eval_phrasings_occur_in_training_phrasings():
    """Held-out phrasings, known words: what an eval core asks (its operation or attribute) is said
    in some training core too; only the wrapping (greetings, thanks) may be new."""
    cores = [*TD.ARITH_CORES.values(), *TD.ARITH_VERBS.values(), *(a[1] for a in TD.ELEMENT_ASKS.values())]
    train, evals = _words(t for c in cores for t in c[0]), _words(t for c in cores for t in c[1])
    new = {w for w in evals if not any(t.startswith(w) for t in train)}  # "deducted" knows "deduct"
    assert new <= {"how", "many", "has", "go", "ahead", "kindly"}, new
    assert {"−", "deducted", "lots", "abbreviation"} <= train
    wrapping = (TD.PREFIXES, TD.QUESTION_FRAMES, TD.REQUEST_FRAMES, TD.VERB_FRAMES)
    known = train | _words(t for pool in wrapping for t in pool[0])
    assert _words(TD.PREFIXES[1]) <= known  # "curiosity", "bother": not entities to copy


def _unformat(template: str, text: str) -> str | None:
    head, tail = template.split("{x}")
    return text[len(head):len(text) - len(tail)] if text.startswith(head) and text.endswith(tail) else None
