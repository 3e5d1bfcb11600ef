"""Ratings: each rater's votes follow the SSI cascade, and the export aggregates them by the
paper's rules into records jobs.finetune reads."""

import json

from jobs.export_ratings import export, write_jsonl
from lamda.conversations import ConversationStore
from lamda.data import Turn, discriminative_examples, parse_labelled
from lamda.ratings import REPLY, Rating, key_id, labelled_records


def rating(rater, ssi, safe=True, created=0.0, key="k", candidate=REPLY, **kw):
    return Rating("c", 1, candidate, rater, key, ssi, safe, created=created, **kw)


def test_votes_follow_the_cascade():
    assert rating("a", "not_sensible").votes() == {"sensible": 0, "specific": 0, "interesting": 0,
                                                   "unsafe": 0}
    assert rating("a", "specific", safe=False, grounded=True).votes() == {
        "sensible": 1, "specific": 1, "interesting": 0, "unsafe": 1, "grounded": 1}
    assert rating("a", "interesting", helpful=False).votes()["helpful"] == 0


def test_key_ids_name_keys_without_revealing_them():
    assert key_id(None) == "" and key_id("secret") == key_id("secret") != key_id("other")
    assert "secret" not in key_id("secret") and len(key_id("secret")) == 16


def test_records_aggregate_one_vote_per_rater_by_the_papers_rules():
    context = [Turn("user", "hi")]
    ratings = [rating("ann", "not_sensible", created=1), rating("ann", "interesting", created=2),
               rating("bob", "interesting", safe=False), rating("cy", "specific"),
               rating("ann", "not_sensible", key="k2", created=3)]  # another key: another rater
    (rec,) = labelled_records(ratings, {("c", 1, REPLY): (context, "hello")})
    assert rec["raters"] == 4
    assert sorted(rec["ratings"]["sensible"]) == [0, 1, 1, 1]  # ann's latest under "k" counts
    assert rec["labels"] == {"sensible": 1, "specific": 1, "interesting": 0, "unsafe": 0}
    parsed = parse_labelled(json.loads(json.dumps(rec)))  # what jobs.finetune reads
    assert parsed.response == "hello" and parsed.context == tuple(context)


def test_min_raters_and_candidates_are_separate_responses():
    responses = {("c", 1, REPLY): ([], "r"), ("c", 1, 3): ([], "c3")}
    ratings = [rating("a", "sensible"), rating("b", "sensible"), rating("a", "sensible", candidate=3)]
    assert [r["id"] for r in labelled_records(ratings, responses)] == ["c-1", "c-1-c3"]
    assert [r["id"] for r in labelled_records(ratings, responses, min_raters=2)] == ["c-1"]


def test_store_export_round_trip(tmp_path, tok):
    store = ConversationStore(tmp_path / "c.sqlite")
    cid = store.new_id()
    store.append(cid, [Turn("user", "hi"), Turn("lamda", "hello")], {"candidates": [{"text": "yo"}]})
    store.append(cid, [Turn("user", "is it safe?"), Turn("lamda", "<script>x</script>")],
                 {"candidates": [{"text": "c0"}, {"text": "c1"}]})
    for rater in ("a", "b", "c"):
        store.add_rating(Rating(cid, 3, REPLY, rater, "", "not_sensible", False))
    store.add_rating(Rating(cid, 3, 1, "a", "", "interesting", True, True, True, "good one"))
    records = export(store)
    write_jsonl(records, str(tmp_path / "out" / "ratings.jsonl"))
    lines = (tmp_path / "out" / "ratings.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [f"{cid}-3", f"{cid}-3-c1"]
    reply, candidate = (parse_labelled(json.loads(x)) for x in lines)
    assert reply.response == "<script>x</script>" and candidate.response == "c1"
    assert [t.text for t in reply.context] == ["hi", "hello", "is it safe?"]
    assert json.loads(lines[1])["other_ratings"] == {"grounded": [1], "helpful": [1]}
    assert json.loads(lines[1])["notes"] == ["good one"]
    # three raters said unsafe and not sensible: the discriminators learn exactly that
    learned = {tok.decode([ex.ids[-2]]).strip(): ex.ids[-1] for ex in discriminative_examples(tok, reply)}
    assert learned == {"SENSIBLE": tok.special("<0>"), "SPECIFIC": tok.special("<0>"),
                       "INTERESTING": tok.special("<0>"), "UNSAFE": tok.special("<1>")}
    store.close()
