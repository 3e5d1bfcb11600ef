import json
import subprocess
import sys

import pytest

from lamda import data as D
from lamda import tokenizer as tkn
from lamda.data import SAMPLE_DIR, Turn

CONTEXT = (Turn("user", "What's up?"),)


def trained(ex):
    return [i for i, m in zip(ex.ids, ex.loss_mask) if m]


def test_generative_loss_is_exactly_on_the_response(tok):
    ex = D.generative_example(tok, CONTEXT, "not much.")
    prompt = D.response_prompt(tok, CONTEXT)
    assert ex.ids[:len(prompt)] == prompt and prompt[-1] == tok.special(tkn.RESPONSE)
    assert trained(ex) == tok.encode("not much.") + [tok.eot_id]
    assert ex.loss_mask == [0] * len(prompt) + [1] * (len(ex.ids) - len(prompt))


def test_discriminative_loss_is_exactly_on_the_rating(tok):
    ex = D.discriminative_example(tok, CONTEXT, "not much.", "sensible", 1)
    assert trained(ex) == [tok.special("<1>")]
    assert ex.loss_mask == [0] * (len(ex.ids) - 1) + [1]
    assert ex.ids[-2] == tok.special("SENSIBLE")
    assert tok.decode(ex.ids) == "USER: What's up? <eot> RESPONSE not much. <eot> SENSIBLE <1>"


def test_discriminative_examples_use_aggregated_labels(tok):
    rec = D.parse_labelled({"id": "x", "context": [{"speaker": "user", "text": "hi"}],
                            "response": "blue", "ratings": {
                                "sensible": [0, 0, 0, 1, 1], "specific": [1, 1, 1, 1, 1],
                                "unsafe": [1, 0, 0]}})
    exs = D.discriminative_examples(tok, rec)
    got = {tok.decode(e.ids[-2:-1]): tok.decode(trained(e)) for e in exs}
    assert got == {"SENSIBLE": "<0>", "SPECIFIC": "<0>", "UNSAFE": "<0>"}  # cascade: not specific


def test_rater_rules():
    agg = D.aggregate_ratings
    assert agg({"sensible": (1, 1, 1, 0, 0)}) == {"sensible": 1}  # 3 of 5
    assert agg({"sensible": (1, 1, 0, 0, 0)}) == {"sensible": 0}
    assert agg({"sensible": (1,) * 5, "specific": (0,) * 5, "interesting": (1,) * 5}) == \
        {"sensible": 1, "specific": 0, "interesting": 0}
    assert agg({"sensible": (0,) * 5, "specific": (1,) * 5}) == {"sensible": 0, "specific": 0}
    assert agg({"unsafe": (0, 0, 1)})["unsafe"] == 0  # 2 of 3 say safe
    assert agg({"unsafe": (0, 1, 1)})["unsafe"] == 1


def test_research_example_trains_every_research_output(tok):
    rec = D.parse_research({
        "id": "r", "context": [{"speaker": "user", "text": "How tall is K2?"}],
        "draft": "K2 is 9,000 metres tall.",
        "steps": [{"query": "K2 height", "results": ["K2 is 8,611 metres tall. https://example.org/k2"]}],
        "reply": "K2 is 8,611 metres tall. https://example.org/k2"})
    ex = D.research_example(tok, rec)  # one sequence, a loss on each research output
    assert tok.decode(ex.ids).startswith("USER: How tall is K2? <eot> LAMDA-BASE: K2 is 9,000")
    assert tok.decode(trained(ex)) == ("TS, K2 height <eot> User, K2 is 8,611 metres tall. "
                                       "https://example.org/k2 <eot>")
    query_end = ex.ids.index(tok.eot_id, ex.ids.index(tok.special("TS,")))
    assert tok.decode(ex.ids[query_end + 1:]).startswith(
        "TS: K2 is 8,611 metres tall. https://example.org/k2 <eot> LAMDA-RESEARCH: User,")


@pytest.mark.parametrize("n_doc,n_dialog,fraction,expected", [
    (100, 100, 0.5, (100, 100)),
    (100, 300, 0.5, (100, 100)),  # dialogs cut to the documents' count
    (300, 100, 0.5, (100, 100)),
    (300, 300, 0.25, (300, 100)),
    (100, 1000, 0.9, (100, 900)),
    (100, 0, 0.5, (100, 0)),  # one source empty: all of the other
    (100, 50, 0.0, (100, 0)),
    (100, 50, 1.0, (0, 50)),
])
def test_mixture_keeps_the_dialog_fraction(n_doc, n_dialog, fraction, expected):
    assert D.mixture_rows(n_doc, n_dialog, fraction) == expected
    with pytest.raises(ValueError, match="dialog_fraction"):
        D.mixture_rows(n_doc, n_dialog, 1.5)


def test_packing_cuts_fixed_length_rows():
    rows = D.pack_array([[1, 2, 3], [4, 5], [6, 7, 8, 9]], seq_len=3)
    assert rows.tolist() == [[1, 2, 3, 4], [5, 6, 7, 8]]  # the partial tail is dropped


def test_collate_keeps_the_end_and_aligns_the_mask(tok):
    ex = D.generative_example(tok, CONTEXT * 20, "a long context, short reply")
    inputs, targets, mask, segments = D.collate([ex], seq_len=16, pad_id=0)
    assert targets[0].tolist() == ex.ids[-16:] and segments is None
    assert mask[0].tolist() == ex.loss_mask[-16:]
    short = D.generative_example(tok, CONTEXT, "ok")
    inputs, targets, mask, _ = D.collate([short], seq_len=64, pad_id=0)
    n = len(short.ids) - 1
    assert mask[0, n:].sum() == 0 and inputs[0, n + 1:].eq(0).all()


def test_packing_examples_first_fit_with_segments():
    exs = [D.Example(list(range(1, n + 1)), [0] * (n - 1) + [1]) for n in (6, 5, 3, 2)]
    tokens, mask, segments = D.pack_examples(exs, seq_len=8, pad_id=0)  # rows of 9
    assert segments.tolist() == [[1] * 6 + [2] * 3, [1] * 5 + [2] * 2 + [0] * 2]
    assert tokens[0].tolist() == [1, 2, 3, 4, 5, 6, 1, 2, 3]
    assert mask.sum() == 4 and mask[0, 5] == 1 and mask[0, 8] == 1
    long = D.Example(list(range(1, 11)), [1] * 10)  # 10 tokens: longer than a row of 9
    assert D.pack_examples([long, *exs], seq_len=8, pad_id=0)[0].tolist() == tokens.tolist()
    with pytest.raises(ValueError, match="longer than a row of 9 tokens"):
        D.pack_examples([long], seq_len=8, pad_id=0)


def test_a_packed_example_trains_as_if_it_stood_alone(tok):
    """The segment mask keeps every example to itself: the loss of a packed row is the loss of
    each example alone (T5's bias depends only on distances, so the offset in the row is moot)."""
    import torch

    from lamda.config import ModelConfig
    from lamda.model import build_model, lm_loss
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size))
    exs = [D.generative_example(tok, CONTEXT, "Not much, you?"),
           D.generative_example(tok, [D.Turn("user", "How tall is K2?")], "8,611 metres."),
           D.generative_example(tok, CONTEXT, "Fine.")]
    inputs, targets, mask, segments = D.collate(exs, seq_len=64, pad_id=0, packed=True)
    assert inputs.shape[0] == 1 and int(segments.max()) == 3
    packed = model(inputs, segments=segments)
    for i, ex in enumerate(exs):
        alone = model(torch.tensor([ex.ids]))[0]
        where = (segments[0] == i + 1).nonzero().squeeze(1)
        assert len(where) == len(ex.ids)
        torch.testing.assert_close(packed[0, where], alone, atol=1e-4, rtol=1e-4)
    unmasked = model(inputs)  # without segments, later examples see the earlier ones
    assert not torch.allclose(unmasked[0, segments[0] == 2], packed[0, segments[0] == 2], atol=1e-3)
    assert lm_loss(packed, targets, mask) > 0


@pytest.mark.parametrize("line,message", [
    ('{"id": "a", "turns": []}', "field 'turns' is empty"),
    ('{"id": "a", "turns": [{"speaker": "bot", "text": "x"}]}', "speaker must be one of"),
    ('{"id": "a"', "Expecting"),
    ('[1, 2]', "must be a JSON object"),
    ('{"turns": [{"speaker": "user", "text": "x"}]}', "missing field 'id'"),
])
def test_malformed_records_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "dialogs.jsonl"
    good = json.dumps({"id": "ok", "turns": [{"speaker": "user", "text": "hello"}]})
    path.write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(D.RecordError, match=rf"dialogs.jsonl:3: bad dialog record: .*{message}"):
        D.read_jsonl(path, "dialog")


def test_labelled_votes_must_be_zero_or_one():
    with pytest.raises(ValueError, match="0/1 votes"):
        D.parse_labelled({"id": "x", "context": [{"speaker": "user", "text": "a"}], "response": "b",
                          "ratings": {"sensible": [1, 2]}})
    with pytest.raises(ValueError, match="unknown rating attribute"):
        D.parse_labelled({"id": "x", "context": [{"speaker": "user", "text": "a"}], "response": "b",
                          "ratings": {"funny": [1]}})


FILES = {"documents.jsonl": "document", "dialogs.jsonl": "dialog", "labelled.jsonl": "labelled",
         "labelled_eval.jsonl": "labelled"}


def test_bundled_corpus_parses_and_has_what_the_roles_need():
    recs = {name: D.read_jsonl(SAMPLE_DIR / name, kind) for name, kind in FILES.items()}
    docs = recs["documents.jsonl"]
    assert len(docs) >= 200 and len({d.url for d in docs}) == len(docs)
    titles = {d.title for d in docs}
    assert "Mount Everest" in titles and "Jazz" in titles
    assert len(recs["dialogs.jsonl"]) >= 250
    assert all(len(d.turns) >= 2 for d in recs["dialogs.jsonl"])
    for name in ("labelled.jsonl", "labelled_eval.jsonl"):
        labels = [D.aggregate_ratings(r.ratings) for r in recs[name]]
        assert {lab["unsafe"] for lab in labels} == {0, 1} and {lab["sensible"] for lab in labels} == {0, 1}
    held_out = {r.context[0].text for r in recs["labelled_eval.jsonl"]}  # questions of held-out documents
    assert held_out and not held_out & {r.context[0].text for r in recs["labelled.jsonl"]}
    assert not held_out & {t.text for d in recs["dialogs.jsonl"] for t in d.turns if t.speaker == "user"}


def test_generator_reproduces_the_committed_corpus(tmp_path):
    subprocess.run([sys.executable, str(SAMPLE_DIR / "generate.py"), str(tmp_path)], check=True,
                   capture_output=True)
    for name in FILES:
        assert (tmp_path / name).read_bytes() == (SAMPLE_DIR / name).read_bytes(), name
