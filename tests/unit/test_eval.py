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


def test_estimates_follow_the_same_rules():
    lab = E.estimate({"sensible": 0.3, "specific": 0.9, "interesting": 0.9, "unsafe": 0.1},
                     {"steps": [{"query": "q"}], "citations": ["https://example.org/a"]})
    assert (lab.sensible, lab.specific, lab.safe, lab.has_claim, lab.supported, lab.cites) == (0, 0, 1, 1, 1, 1)


def test_evaluate_job_writes_report_and_charts(tok, tmp_path):
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size))
    save_export(tmp_path / "pt", model.state_dict(), model.cfg, tok, extra={"stage": "pretrain"})
    save_export(tmp_path / "ft", model.state_dict(), model.cfg, tok, extra={"stage": "finetune"})
    ratings = tmp_path / "ratings.jsonl"
    ratings.write_text(json.dumps({"id": "x", "ratings": {"sensible": [1, 1, 1, 1, 0]}}) + "\n")
    report = evaluate.main(["--models", str(tmp_path / "pt"), str(tmp_path / "ft"), "--limit", "3",
                            "--candidates", "2", "--max-new-tokens", "6", "--ratings", str(ratings),
                            "--out", str(tmp_path / "eval")])
    assert set(report["variants"]) == {"pt", "ft", "ft + research"}
    saved = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert saved["variants"]["ft"]["estimated"]["safety"] is not None
    assert saved["human"]["metrics"]["sensibleness"] == 1.0
    for png in ("quality.png", "groundedness.png"):
        assert (tmp_path / "eval" / png).read_bytes()[:4] == b"\x89PNG"
