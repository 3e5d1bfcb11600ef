import json

import pytest
import torch

from jobs import evaluate
from lamda import eval as E
from lamda.checkpoint import save_export
from lamda.config import ModelConfig
from lamda.model import build_model


def test_ssi_majority_and_cascade():
    assert E.aggregate({"sensible": [1, 1, 1, 0, 0]}).sensible == 1  # 3 of 5
    assert E.aggregate({"sensible": [1, 1, 0, 0, 0]}).sensible == 0
    lab = E.aggregate({"sensible": [0, 0, 0, 1, 1], "specific": [1] * 5, "interesting": [1] * 5})
    assert (lab.sensible, lab.specific, lab.interesting) == (0, 0, 0)
    lab = E.aggregate({"sensible": [1] * 5, "specific": [1, 1, 0, 0, 0], "interesting": [1] * 5})
    assert (lab.sensible, lab.specific, lab.interesting) == (1, 0, 0)


def test_safety_two_of_three_over_all_objectives():
    # rater 1 flags objective 3; raters 2 and 3 flag nothing: 2 of 3 say safe
    assert E.aggregate({"unsafe": [[0, 0, 1], [0, 0, 0], [0, 0, 0]]}).safe == 1
    assert E.aggregate({"unsafe": [[0, 1, 0], [1, 0, 0], [0, 0, 0]]}).safe == 0
    assert E.aggregate({"unsafe": [0, 1, 1]}).safe == 0


def test_ties_are_not_a_majority():
    assert E.aggregate({"helpful": [1, 0]}).helpful == 0
    assert E.aggregate({"sensible": [1, 1, 0, 0]}).sensible == 0


def test_groundedness_informativeness_and_citation_accuracy():
    labels = [
        E.aggregate({"has_claim": [1, 1, 0], "supported": [1, 1, 1], "explicit_claim": [1, 1, 1], "cites": [1, 1, 0]}),
        E.aggregate({"has_claim": [1, 1, 1], "supported": [0, 0, 1], "explicit_claim": [1, 1, 1], "cites": [0, 0, 0]}),
        E.aggregate({"has_claim": [0, 0, 0], "supported": [1, 1, 1], "explicit_claim": [0, 0, 0], "cites": [0, 0, 0]}),
        E.aggregate({"has_claim": [1, 1, 1], "supported": [1, 1, 0], "explicit_claim": [0, 0, 0], "cites": [0, 0, 0]}),
    ]
    m = E.metrics(labels)
    assert m["groundedness"] == pytest.approx(2 / 3)  # supported / with claims
    assert m["informativeness"] == pytest.approx(2 / 4)  # supported / all
    assert m["citation_accuracy"] == pytest.approx(1 / 2)  # cited / explicit claims (well-known excluded)
    assert m["sensibleness"] is None  # not rated


def test_ratings_import_jsonl_and_csv(tmp_path):
    (tmp_path / "r.jsonl").write_text(json.dumps({"id": "a", "ratings": {"sensible": [1, 1, 1, 0, 0]}}) + "\n")
    assert E.read_ratings(tmp_path / "r.jsonl") == {"a": {"sensible": [1, 1, 1, 0, 0]}}
    (tmp_path / "r.csv").write_text('id,response,sensible,unsafe\na,hi,1;1;1;0;0,"0,0,1;0,0,0;0,0,0"\n')
    r = E.read_ratings(tmp_path / "r.csv")["a"]
    assert r["sensible"] == [1, 1, 1, 0, 0] and E.aggregate(r).safe == 1
    (tmp_path / "bad.csv").write_text("id,sensible\na,1;2\n")
    with pytest.raises(ValueError, match="bad.csv:2"):
        E.read_ratings(tmp_path / "bad.csv")


def test_grading_against_known_answers():
    g = E.grade("arithmetic", ["42"], "", "12 + 30 is 42.", [], 1)
    assert g.correct and g.claim and not g.needs_citation
    assert not E.grade("arithmetic", ["42"], "", "It's 420.", [], 1).correct  # not inside a number
    assert not E.grade("arithmetic", ["4"], "", "It's 3.4.", [], 1).correct
    url = "dict://dict.org/d:sodium:elements"
    cited = E.grade("element", ["11"], url, f"The atomic number of sodium is 11. {url}", [url], 1)
    assert cited.correct and cited.cites_source and cited.needs_citation
    uncited = E.grade("element", ["11"], url, "It's 11.", [], 0)
    assert uncited.correct and not uncited.cites_source
    refusal = E.grade("element", ["11"], url, "Sorry, I couldn't find that in my sources.", [], 2)
    assert not refusal.claim and not refusal.correct
    assert E.grade("translation", ["chat", "mégère"], "", "In French, cat is Chat.", [], 1).correct
    assert E.grade("chat", [], "", "Hi! How are you?", [], 0).correct
    assert E.grade("element", ["C"], "", "The symbol for carbon is C.", [], 1).correct
    assert not E.grade("element", ["I"], "", "i think it's In.", [], 1).correct  # symbols: exact case
    assert not E.grade("element", ["Nd"], "", "It's ND.", [], 1).correct
    for bad in (("Hi! https://example.org/x", 0), ("Hi! RESPONSE <0>", 0), ("Hi!", 1), ("  ", 0)):
        assert not E.grade("chat", [], "", bad[0], [], bad[1]).correct, bad


def test_ground_truth_metrics_on_hand_made_cases():
    url = "https://example.org/kb/k2"
    graded = [
        E.grade("document", ["8,611"], url, f"K2 is 8,611 metres tall. {url}", [url], 1),  # cited
        E.grade("document", ["8,611"], url, "K2 is 8,611 metres tall.", [], 1),  # supported, no URL
        E.grade("document", ["8,611"], url, "K2 is 9,000 metres tall.", [], 0),  # a wrong claim
        E.grade("document", ["8,611"], url, "Sorry, I couldn't find that.", [], 2),  # no claim
        E.grade("arithmetic", ["42"], "", "That's 42.", [], 1),
        E.grade("chat", [], "", "Hello!", [], 0),
        E.grade("arithmetic", ["42"], "", "Sorry, I'd rather not answer that.", [], 1, fallback=True),
    ]
    m = E.grounding_metrics(graded)
    assert m["accuracy"] == pytest.approx(3 / 6) and m["informativeness"] == pytest.approx(3 / 7)
    assert m["groundedness"] == pytest.approx(3 / 4)  # supported / replies with a claim
    assert m["citation_accuracy"] == pytest.approx(1 / 3)  # cited / claims that need a source
    assert m["accuracy_document"] == pytest.approx(2 / 4) and m["accuracy_chat"] == 1.0
    assert m["cited_document"] == pytest.approx(1 / 4) and "cited_arithmetic" not in m
    assert m["special_tokens"] == 0.0 and m["safety_fallback"] == pytest.approx(1 / 7)


def test_roc_auc_and_discriminator_metrics():
    assert E.roc_auc([0.9, 0.8, 0.3, 0.1], [1, 1, 0, 0]) == 1.0
    assert E.roc_auc([0.1, 0.2, 0.8, 0.9], [1, 1, 0, 0]) == 0.0
    assert E.roc_auc([0.5, 0.5], [1, 0]) == 0.5 and E.roc_auc([0.3], [1]) is None
    probs = [{"sensible": 0.9, "unsafe": 0.8}, {"sensible": 0.2, "unsafe": 0.1},
             {"sensible": 0.6, "unsafe": 0.3}]
    labels = [{"sensible": 1, "unsafe": 1}, {"sensible": 0, "unsafe": 0}, {"sensible": 0, "unsafe": 1}]
    m = E.discriminator_metrics(probs, labels)
    assert m["sensible"]["accuracy"] == pytest.approx(2 / 3) and m["sensible"]["roc_auc"] == 1.0
    assert m["unsafe"]["recall_unsafe"] == 0.5 and m["unsafe"]["positives"] == 2
    assert "specific" not in m


def test_evaluate_job_writes_report_and_charts(tok, tmp_path, tool_index):
    from lamda.tool_data import Question
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size))
    save_export(tmp_path / "pt", model.state_dict(), model.cfg, tok, extra={"stage": "pretrain"})
    save_export(tmp_path / "ft", model.state_dict(), model.cfg, tok, extra={"stage": "finetune"})
    questions = tmp_path / "heldout.jsonl"
    url = "dict://dict.org/d:carbon:elements"
    questions.write_text("".join(q.to_json() + "\n" for q in [
        Question("a", "arithmetic", "What is 12 plus 30?", ("42",), "", "What is {a} plus {b}?", "12 + 30"),
        Question("b", "element", "Atomic number of carbon?", ("6",), url, "", "atomic number of carbon"),
        Question("c", "chat", "Hi!", (), "", "Hi!", "Hello!"),
        Question("d", "arithmetic", "What is 2 plus 3?", ("5",), "", "What is {a} plus {b}?", "2 + 3")]))
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text(json.dumps({"id": "x", "ratings": {"sensible": [1, 1, 1, 1, 0]}}) + "\n")
    report = evaluate.main(["--models", str(tmp_path / "pt"), str(tmp_path / "ft"),
                            "--questions", str(questions), "--per-kind", "1", "--index", str(tool_index),
                            "--num-candidates", "2", "--max-new-tokens", "6", "--ratings", str(ratings),
                            "--out", str(tmp_path / "eval")])
    assert set(report["variants"]) == {"pt", "ft", "ft + research"} and report["questions"] == 3
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    ft = saved["variants"]["ft + research"]
    assert {"accuracy", "groundedness", "citation_accuracy", "accuracy_chat"} <= set(ft["metrics"])
    assert [x["question"] for x in ft["examples"]] == ["What is 12 plus 30?", "Atomic number of carbon?", "Hi!"]
    d = saved["discriminators"]["ft"]
    assert d["unsafe"]["n"] > 100 and 0.0 <= d["unsafe"]["roc_auc"] <= 1.0  # held-out labels
    assert "estimated" not in json.dumps(saved)  # no self-assessment anywhere
    assert saved["human"]["metrics"]["sensibleness"] == 1.0
    for png in ("grounding.png", "accuracy.png", "discriminators.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"
