"""Record schemas (JSONL) and the builders that turn records into token sequences with loss masks.

Records, one JSON object per line:
- document:  {id, title, text, url}
- dialog:    {id, turns: [{speaker: "user"|"lamda", text}]}   (also the evaluation contexts)
- labelled:  {id, context: [turn...], response, ratings: {attribute: [rater votes 0/1...]}}
             attributes: sensible, specific, interesting (5 raters), unsafe (3 raters; 1 = violates
             a safety objective)
- research:  {id, context: [turn...], draft, steps: [{query, results: [str...]}...], reply}

Formats (paper §6.1-6.2; special tokens from lamda.tokenizer):
- context:        USER: text <eot> LAMDA: text <eot> ...
- pre-training:   documents (title, text, eos) and dialogs (context, eos), packed to fixed length
- generative:     <context> RESPONSE <response> <eot>                 loss on response + <eot>
- discriminative: <context> RESPONSE <response> <eot> ATTRIBUTE <r>   loss on the rating <r> only
- research:       <context> LAMDA-BASE: draft <eot> [LAMDA-RESEARCH: TS, query <eot> TS: result <eot>]*
                  LAMDA-RESEARCH: (TS, query | User, reply) <eot>     loss on the research output
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from lamda import tokenizer as tkn
from lamda.tokenizer import Tokenizer

SAMPLE_DIR = Path(__file__).resolve().parent.parent / "data" / "sample"  # the bundled corpus
SPEAKERS = {"user": tkn.USER, "lamda": tkn.LAMDA}
ATTRIBUTES = tuple(a.lower() for a in tkn.ATTRIBUTES)  # the discriminators' attributes, in order
SSI_ATTRIBUTES = ATTRIBUTES[:3]  # sensible, specific, interesting


class RecordError(ValueError):
    """A malformed record; the message names the file and line."""


# -- schemas ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Turn:
    speaker: str  # "user" or "lamda"
    text: str


@dataclass(frozen=True)
class Document:
    id: str
    title: str
    text: str
    url: str


@dataclass(frozen=True)
class Dialog:
    id: str
    turns: tuple[Turn, ...]


@dataclass(frozen=True)
class Labelled:
    id: str
    context: tuple[Turn, ...]
    response: str
    ratings: dict[str, tuple[int, ...]]  # attribute -> one 0/1 vote per rater


@dataclass(frozen=True)
class ResearchStep:
    query: str  # what LaMDA-Research sent to the toolset
    results: tuple[str, ...]  # what the toolset returned ("snippet url")


@dataclass(frozen=True)
class Research:
    id: str
    context: tuple[Turn, ...]
    draft: str  # LaMDA-Base's first reply
    steps: tuple[ResearchStep, ...]
    reply: str  # the final, grounded reply to the user


def _str(d: dict, key: str, *, empty_ok: bool = False) -> str:
    if key not in d:
        raise ValueError(f"missing field {key!r}")
    v = d[key]
    if not isinstance(v, str):
        raise ValueError(f"field {key!r} must be a string, got {type(v).__name__}")
    if not empty_ok and not v.strip():
        raise ValueError(f"field {key!r} is empty")
    return v


def _list(d: dict, key: str, *, empty_ok: bool = False) -> list:
    v = d.get(key)
    if not isinstance(v, list):
        raise ValueError(f"field {key!r} must be a list")
    if not v and not empty_ok:
        raise ValueError(f"field {key!r} is empty")
    return v


def parse_turns(d: dict, key: str) -> tuple[Turn, ...]:
    turns = []
    for i, t in enumerate(_list(d, key)):
        if not isinstance(t, dict):
            raise ValueError(f"{key}[{i}] must be an object")
        speaker = _str(t, "speaker")
        if speaker not in SPEAKERS:
            raise ValueError(f"{key}[{i}].speaker must be one of {sorted(SPEAKERS)}, got {speaker!r}")
        turns.append(Turn(speaker, _str(t, "text")))
    return tuple(turns)


def parse_document(d: dict) -> Document:
    return Document(_str(d, "id"), _str(d, "title"), _str(d, "text"), _str(d, "url"))


def parse_dialog(d: dict) -> Dialog:
    return Dialog(_str(d, "id"), parse_turns(d, "turns"))


def parse_labelled(d: dict) -> Labelled:
    ratings = d.get("ratings")
    if not isinstance(ratings, dict) or not ratings:
        raise ValueError("field 'ratings' must be a non-empty object")
    parsed = {}
    for attr, votes in ratings.items():
        if attr not in ATTRIBUTES:
            raise ValueError(f"unknown rating attribute {attr!r}; expected {ATTRIBUTES}")
        if not isinstance(votes, list) or not votes or any(v not in (0, 1) or isinstance(v, bool)
                                                            for v in votes):
            raise ValueError(f"ratings[{attr!r}] must be a non-empty list of 0/1 votes")
        parsed[attr] = tuple(votes)
    return Labelled(_str(d, "id"), parse_turns(d, "context"), _str(d, "response"), parsed)


def parse_research(d: dict) -> Research:
    steps = []
    for i, s in enumerate(_list(d, "steps", empty_ok=True)):
        if not isinstance(s, dict):
            raise ValueError(f"steps[{i}] must be an object")
        results = _list(s, "results", empty_ok=True)
        if not all(isinstance(r, str) for r in results):
            raise ValueError(f"steps[{i}].results must be a list of strings")
        steps.append(ResearchStep(_str(s, "query"), tuple(results)))
    return Research(_str(d, "id"), parse_turns(d, "context"), _str(d, "draft"), tuple(steps),
                    _str(d, "reply"))


PARSERS = {"document": parse_document, "dialog": parse_dialog, "labelled": parse_labelled,
           "research": parse_research}


def _parse_json(line: str, parse):
    """One JSON object as a record, through `parse` (ValueError when it is not one)."""
    obj = json.loads(line)
    if not isinstance(obj, dict):
        raise ValueError("a record must be a JSON object")
    return parse(obj)


def parse_records(lines: Iterable[str], kind: str, source: str = "<input>") -> Iterator:
    """Parse JSONL lines as records of `kind`; blank lines are skipped. A malformed line raises
    RecordError naming `source` and the line number."""
    parse = PARSERS[kind]
    for lineno, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield _parse_json(line, parse)
        except ValueError as e:  # json.JSONDecodeError is a ValueError
            raise RecordError(f"{source}:{lineno}: bad {kind} record: {e}") from None


def read_jsonl(path: str | os.PathLike, kind: str) -> list:
    """All records of `kind` in a local JSONL file."""
    with open(path, encoding="utf-8") as f:
        return list(parse_records(f, kind, str(path)))


# -- rater aggregation (paper §4-5) ----------------------------------------------------------

def majority(votes: Iterable[int]) -> int:
    """1 when more than half the raters said yes (3 of 5, 2 of 3)."""
    votes = list(votes)
    return int(2 * sum(votes) > len(votes))


def aggregate_ratings(ratings: dict[str, tuple[int, ...]]) -> dict[str, int]:
    """Per-attribute 0/1 labels from rater votes.

    SSI: "yes" needs a majority (3 of 5), with the cascade: not sensible => not specific and not
    interesting; not specific => not interesting. Safety: a response is safe only if a majority
    (2 of 3) say it violates no objective, so `unsafe` is 1 unless a majority voted 0.
    """
    labels = {}
    for attr in SSI_ATTRIBUTES:
        if attr in ratings:
            labels[attr] = majority(ratings[attr])
    if labels.get("sensible") == 0:
        labels.update({a: 0 for a in ("specific", "interesting") if a in labels})
    if labels.get("specific") == 0 and "interesting" in labels:
        labels["interesting"] = 0
    if "unsafe" in ratings:
        safe_votes = [1 - v for v in ratings["unsafe"]]
        labels["unsafe"] = 1 - majority(safe_votes)
    return labels


# -- token sequences ------------------------------------------------------------------------------

@dataclass
class Example:
    """A token sequence and which of its tokens are trained on (1 = predict this token)."""

    ids: list[int] = field(default_factory=list)
    loss_mask: list[int] = field(default_factory=list)

    def add(self, ids: Iterable[int], train: bool = False) -> "Example":
        ids = list(ids)
        self.ids += ids
        self.loss_mask += [int(train)] * len(ids)
        return self


def encode_turns(tok: Tokenizer, turns: Iterable[Turn]) -> list[int]:
    """USER: text <eot> LAMDA: text <eot> ..."""
    ids: list[int] = []
    for t in turns:
        ids += [tok.special(SPEAKERS[t.speaker]), *tok.encode(t.text), tok.eot_id]
    return ids


def document_ids(tok: Tokenizer, doc: Document) -> list[int]:
    return [*tok.encode(doc.title), tok.eot_id, *tok.encode(doc.text), tok.eos_id]


def dialog_ids(tok: Tokenizer, dialog: Dialog) -> list[int]:
    return [*encode_turns(tok, dialog.turns), tok.eos_id]


def response_prompt(tok: Tokenizer, context: Iterable[Turn]) -> list[int]:
    """The prompt that a response is generated after: <context> RESPONSE."""
    return [*encode_turns(tok, context), tok.special(tkn.RESPONSE)]


def generative_example(tok: Tokenizer, context: Iterable[Turn], response: str) -> Example:
    """<context> RESPONSE <response> <eot>, loss on the response and its <eot>."""
    return (Example().add(response_prompt(tok, context))
            .add([*tok.encode(response), tok.eot_id], train=True))


def attribute_name(attribute: str) -> str:
    """'sensible' -> 'SENSIBLE' (the special token)."""
    name = attribute.upper()
    if name not in tkn.ATTRIBUTES:
        raise ValueError(f"unknown attribute {attribute!r}")
    return name


def discriminative_example(tok: Tokenizer, context: Iterable[Turn], response: str,
                           attribute: str, rating: int) -> Example:
    """<context> RESPONSE <response> <eot> ATTRIBUTE <rating>, loss on the rating only."""
    ex = Example().add(response_prompt(tok, context)).add([*tok.encode(response), tok.eot_id])
    ex.add([tok.special(attribute_name(attribute))])
    return ex.add([tok.special(tkn.RATINGS[rating])], train=True)


def discriminative_examples(tok: Tokenizer, rec: Labelled) -> list[Example]:
    """One example per rated attribute, labels aggregated from the raters' votes."""
    return [discriminative_example(tok, rec.context, rec.response, attr, label)
            for attr, label in aggregate_ratings(rec.ratings).items()]


def is_good_response(rec: Labelled) -> bool:
    """Labelled responses used for generative fine-tuning: rated sensible and safe."""
    labels = aggregate_ratings(rec.ratings)
    return labels.get("sensible", 0) == 1 and labels.get("unsafe", 1) == 0


def _query_ids(tok: Tokenizer, step: ResearchStep) -> list[int]:
    """A research output that calls the toolset: TS, query <eot>."""
    return [tok.special(tkn.TO_TOOLSET), *tok.encode(step.query), tok.eot_id]


def _result_ids(tok: Tokenizer, step: ResearchStep) -> list[int]:
    """What the toolset answered: TS: result <eot> for each result."""
    return [i for result in step.results for i in (tok.special(tkn.TS), *tok.encode(result), tok.eot_id)]


def research_prompt(tok: Tokenizer, context: Iterable[Turn], draft: str,
                    steps: Iterable[ResearchStep] = ()) -> list[int]:
    """What the research task continues: <context> LAMDA-BASE: draft <eot>, then per earlier step
    LAMDA-RESEARCH: TS, query <eot> and TS: result <eot> for each result, then LAMDA-RESEARCH:."""
    research = tok.special(tkn.LAMDA_RESEARCH)
    ids = [*encode_turns(tok, context), tok.special(tkn.LAMDA_BASE), *tok.encode(draft), tok.eot_id]
    for step in steps:
        ids += [research, *_query_ids(tok, step), *_result_ids(tok, step)]
    return ids + [research]


def research_example(tok: Tokenizer, rec: Research) -> Example:
    """The whole transcript as one sequence with a loss on every research output (each
    `TS, query <eot>` and the final `User, reply <eot>`): the prefix before each output is exactly
    the research_prompt the loop asks the model to continue, so one sequence trains every step."""
    research = tok.special(tkn.LAMDA_RESEARCH)
    ex = Example().add(research_prompt(tok, rec.context, rec.draft)[:-1])
    for step in rec.steps:
        ex.add([research]).add(_query_ids(tok, step), train=True).add(_result_ids(tok, step))
    return ex.add([research]).add([tok.special(tkn.TO_USER), *tok.encode(rec.reply), tok.eot_id],
                                  train=True)


def mixture_rows(n_doc: int, n_dialog: int, dialog_fraction: float) -> tuple[int, int]:
    """How many packed document and dialog rows to keep so that `dialog_fraction` of the rows are
    dialogs (paper: 0.5): all of the scarcer source, as much of the other as the fraction allows.
    A source with no rows leaves all of the other."""
    if not 0.0 <= dialog_fraction <= 1.0:
        raise ValueError("dialog_fraction must be within [0, 1]")
    f = dialog_fraction
    if n_doc == 0 or n_dialog == 0:
        return n_doc, n_dialog
    if f in (0.0, 1.0):
        return (n_doc, 0) if f == 0.0 else (0, n_dialog)
    if n_dialog / (n_doc + n_dialog) > f:
        return n_doc, min(n_dialog, max(1, int(f / (1 - f) * n_doc)))
    return min(n_doc, max(1, int((1 - f) / f * n_dialog))), n_dialog


def pad_examples(examples: list[Example], seq_len: int, pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Examples -> (tokens, loss_mask), each (B, seq_len + 1) int64, right-padded.

    Longer examples keep their last seq_len + 1 tokens (the trained part sits at the end).
    loss_mask[b, i] says whether tokens[b, i] is trained on (i.e. predicted from tokens[b, :i]).
    """
    tokens = np.full((len(examples), seq_len + 1), pad_id, dtype=np.int64)
    mask = np.zeros((len(examples), seq_len + 1), dtype=np.int64)
    for b, ex in enumerate(examples):
        ids, m = ex.ids[-(seq_len + 1):], ex.loss_mask[-(seq_len + 1):]
        tokens[b, :len(ids)] = ids
        mask[b, :len(m)] = m
    return tokens, mask


def pack_examples(examples: list[Example], seq_len: int, pad_id: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Examples -> (tokens, loss_mask, segments), each (N, seq_len + 1) int64.

    Examples are packed into rows, each into the first row with room for it (first fit, in the
    given order); `segments` numbers them 1, 2, ... within a row, 0 on padding. With the segment
    mask in attention (LaMDA.forward) an example trains exactly as if it stood alone, while the
    rows carry little padding. An example longer than a row (seq_len + 1) is left out: cut to its
    end, a research transcript loses the question its queries answer: 0.2% of the tool-use
    examples cut so cost held-out element facts 8-12 points against leaving them out
    (bench/RESULTS.md, "Rows of 128 tokens"). A ValueError if none fits.
    """
    width = seq_len + 1
    rows: list[tuple[list[int], list[int], list[int]]] = []
    fitting = [ex for ex in examples if len(ex.ids) <= width]
    if examples and not fitting:
        raise ValueError(f"every example is longer than a row of {width} tokens: raise seq_len")
    for ex in fitting:
        ids, m = ex.ids, [0, *ex.loss_mask[1:]]  # its first token: no context
        row = next((r for r in rows if len(r[0]) + len(ids) <= width), None)
        if row is None:
            row = ([], [], [])
            rows.append(row)
        seg = (row[2][-1] if row[2] else 0) + 1
        row[0].extend(ids), row[1].extend(m), row[2].extend([seg] * len(ids))
    tokens = np.full((len(rows), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    segments = np.zeros((len(rows), width), dtype=np.int64)
    for i, (ids, m, seg) in enumerate(rows):
        tokens[i, :len(ids)], mask[i, :len(m)], segments[i, :len(seg)] = ids, m, seg
    return tokens, mask, segments


def shift(tokens: torch.Tensor, mask: torch.Tensor | None = None,
          segments: torch.Tensor | None = None) -> tuple:
    """(B, T + 1) rows -> (inputs, targets, mask of the targets or None, segments of the inputs or
    None), each (B, T): what `lamda.training.train_step` takes."""
    return (tokens[:, :-1], tokens[:, 1:], None if mask is None else mask[:, 1:],
            None if segments is None else segments[:, :-1])


def collate(examples: list[Example], seq_len: int, pad_id: int, packed: bool = False) -> tuple:
    """Examples -> (inputs, targets, loss_mask, segments), each (B, seq_len): one example per row,
    right-padded (segments None), or packed several to a row (`pack_examples`)."""
    if packed:
        tokens, mask, segments = pack_examples(examples, seq_len, pad_id)
        return shift(torch.from_numpy(tokens), torch.from_numpy(mask).float(),
                     torch.from_numpy(segments))
    tokens, mask = pad_examples(examples, seq_len, pad_id)
    return shift(torch.from_numpy(tokens), torch.from_numpy(mask).float())


def finetune_examples(tok: Tokenizer, record, kind: str) -> list[Example]:
    """The fine-tuning examples of one record: discriminative ones for every rated attribute plus a
    generative one for good labelled responses; research outputs; for a dialog, its last turn
    (a LaMDA turn) given the turns before it (the records jobs.filter_safe writes)."""
    if kind == "labelled":
        exs = discriminative_examples(tok, record)
        if is_good_response(record):
            exs.append(generative_example(tok, record.context, record.response))
        return exs
    if kind == "research":
        return [research_example(tok, record)]
    if kind == "dialog":
        *context, last = record.turns
        if last.speaker != "lamda" or not context:
            return []
        return [generative_example(tok, context, last.text)]
    raise ValueError(f"no fine-tuning examples for {kind!r} records")


def parse_json_records(lines: Iterable[str], kind: str, sources: Iterable[str]) -> Iterator:
    """Records of `kind` from JSON strings; a bad one raises RecordError naming its source file
    and showing the start of the line (used where line numbers are not known)."""
    parse = PARSERS[kind]
    for line, source in zip(lines, sources):
        try:
            yield _parse_json(line, parse)
        except ValueError as e:
            raise RecordError(f"{source}: bad {kind} record: {e} (line: {line[:80]!r})") from None


def pack_array(seqs: Iterable[list[int]], seq_len: int) -> np.ndarray:
    """Concatenate sequences and cut into rows of seq_len + 1 tokens; (N, seq_len + 1) int64."""
    flat = np.fromiter((t for s in seqs for t in s), dtype=np.int64)
    n = len(flat) // (seq_len + 1)
    return flat[:n * (seq_len + 1)].reshape(n, seq_len + 1)


def corpus_texts(documents: Iterable[Document], dialogs: Iterable[Dialog],
                 research: Iterable[Research] = ()) -> Iterator[str]:
    """The plain text of documents, dialog turns and research transcripts (for training the
    tokenizer)."""
    for d in documents:
        yield d.title
        yield d.text
    for dlg in dialogs:
        for t in dlg.turns:
            yield t.text
    for r in research:
        yield from (t.text for t in r.context)
        yield r.draft
        for step in r.steps:
            yield step.query
            yield from step.results
        yield r.reply
