"""Writes the bundled corpus from the fact tables in facts.py. Deterministic: same output every run.

    python data/sample/generate.py [OUT_DIR]      (default: this directory)

Files (schemas in lamda/data.py):
  documents.jsonl  one document per entity, with a title and a stable URL
  dialogs.jsonl    multi-turn dialogs: questions about the documents, small talk, music advice
  labelled.jsonl   responses with per-rater votes (5 raters for SSI, 3 for safety)
  labelled_eval.jsonl  the same for held-out documents (lamda.tool_data.split_of): the
                   discriminators' held-out test set
  doc_questions.jsonl  a question per document fact: answer sentence, key value, precise query,
                   URL, a plausible wrong answer (lamda.tool_data turns them into research
                   transcripts with what the real retrieval tool returns)
"""

from __future__ import annotations

import json
import random
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[2]))
import facts as F  # noqa: E402

from lamda.tool_data import split_of  # noqa: E402  (the one hold-out rule for every file)

SEED = 220108239
BASE_URL = "https://example.org/kb"
DIETS = {"carnivore": "meat", "herbivore": "plants", "omnivore": "plants and meat"}


@dataclass
class QA:
    question: str  # how a user asks
    answer: str  # the sentence of the document that answers it
    query: str  # what LaMDA-Research sends to the toolset
    wrong: str  # a plausible but wrong claim (LaMDA-Base's ungrounded draft)
    key: str  # the value in the answer that a correct reply must contain


@dataclass
class Entity:
    category: str
    name: str
    sentences: list[str]  # the document's text, one sentence each
    qas: list[QA] = field(default_factory=list)
    group: str = ""  # entities that answer each other's questions share a split (a capital: its country)

    @property
    def url(self) -> str:
        return f"{BASE_URL}/{self.category}/{slug(self.name)}"


def cap(sentence: str) -> str:
    return sentence[0].upper() + sentence[1:]


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def entity(category: str, name: str, qa_templates, values: dict, others: list[dict],
           extra: list[str], rng: random.Random, group: str = "") -> Entity:
    """An entity whose sentences are its answers plus extra facts. `others` supplies the values of
    the same kind of entity, so that drafts can be wrong in a plausible way."""
    e = Entity(category, name, [], group=group)
    for question, answer, query in qa_templates:
        other = rng.choice([o for o in others if o != values] or [values])
        wrong_values = {**other, "name": values["name"]}
        key = next(k for k in re.findall(r"{(\w+)}", answer) if k != "name")
        e.qas.append(QA(question.format(**values), cap(answer.format(**values)),
                        query.format(**values), cap(answer.format(**wrong_values)), str(values[key])))
        e.sentences.append(cap(answer.format(**values)))
    e.sentences += extra
    return e


def build_entities(rng: random.Random) -> list[Entity]:
    entities = []

    def add(category, rows, qa_templates, extra=lambda v: [], group=lambda v: ""):
        others = [v for v in rows]
        for v in rows:
            entities.append(entity(category, v["name"], qa_templates, v, others, extra(v), rng, group(v)))

    add("mountains", [dict(name=n, height=f"{h:,}", range=r, countries=c, year=y)
                      for n, h, r, c, y in F.MOUNTAINS], [
        ("How tall is {name}?", "{name} is {height} metres tall.", "{name} metres tall"),
        ("Where is {name}?", "{name} is in the {range} mountain range, in {countries}.",
         "{name} mountain range"),
        ("When was {name} first climbed?", "The first recorded ascent of {name} was in {year}.",
         "{name} first ascent"),
    ])
    add("countries", [dict(name=n, capital=c, continent=ct, pop=p, language=lang, currency=cur)
                      for n, c, ct, p, lang, cur in F.COUNTRIES], [
        ("What is the capital of {name}?", "The capital of {name} is {capital}.", "capital of {name}"),
        ("How many people live in {name}?", "About {pop} million people live in {name}.",
         "people live in {name}"),
        ("What language do they speak in {name}?", "The official language of {name} is {language}.",
         "{name} official language"),
        ("What currency does {name} use?", "The currency of {name} is the {currency}.", "currency of {name}"),
    ], lambda v: [f"{v['name']} is a country in {v['continent']}."])
    add("cities", [dict(name=c, country=n, continent=ct) for n, c, ct, *_ in F.COUNTRIES], [
        ("Which country is {name} in?", "{name} is the capital city of {country}.", "{name} capital city"),
    ], lambda v: [f"{v['name']} is in {v['continent']}.",
                  f"As the capital, {v['name']} is the seat of the government of {v['country']}."],
        group=lambda v: v["country"])
    add("planets", [dict(name=n, order=o, moons=m, diameter=f"{d:,}", fact=f)
                    for n, o, m, d, f in F.PLANETS], [
        ("How many moons does {name} have?", "{name} has {moons} known moons.", "{name} moons"),
        ("How big is {name}?", "{name} is about {diameter} kilometres across.", "{name} kilometres across"),
    ], lambda v: [f"{v['name']} is planet number {v['order']} from the Sun.", v["fact"]])
    add("music", [dict(name=g, decade=d, place=p, instruments=i, artists=" and ".join(a[:2]))
                  for g, d, p, i, a in F.GENRES], [
        ("Where does {name} come from?", "{name} began in the {decade} in {place}.",
         "{name} began"),
        ("Who are some famous {name} artists?", "Well-known {name} artists include {artists}.",
         "{name} artists"),
        ("What instruments are used in {name}?", "Typical {name} instruments are {instruments}.",
         "{name} instruments"),
    ])
    add("musicians", [dict(name=n, born=b, nationality=nat, known=k) for n, b, nat, k in F.MUSICIANS], [
        ("What is {name} known for?", "{name} is known for {known}.", "{name} known for"),
        ("When was {name} born?", "{name} was born in {born}.", "{name} born"),
    ], lambda v: [f"{v['name']} is {v['nationality']}." if v["name"] != "The Beatles"
                  else "The Beatles were a British band formed in Liverpool in 1960."])
    add("instruments", [dict(name=n, family=f, fact=x) for n, f, x in F.INSTRUMENTS], [
        ("What kind of instrument is the {name}?", "The {name} is a {family} instrument.",
         "{name} instrument"),
    ], lambda v: [v["fact"]])
    add("animals", [dict(name=n, cls=c, habitat=h, diet=DIETS.get(d, d), fact=f) for n, c, h, d, f in F.ANIMALS], [
        ("Where does the {name} live?", "The {name} lives in {habitat}.", "{name} lives"),
        ("What does the {name} eat?", "The {name} eats {diet}.", "{name} eats"),
    ], lambda v: [f"The {v['name']} is a {v['cls']}.", v["fact"]])
    add("rivers", [dict(name=n, length=f"{km:,}", continent=c, mouth=m) for n, km, c, m in F.RIVERS], [
        ("How long is the {name}?", "The {name} is about {length} kilometres long.", "{name} kilometres long"),
        ("Where does the {name} flow into?", "The {name} flows into {mouth}.", "{name} flows into"),
    ], lambda v: [f"The {v['name']} is a river in {v['continent']}."])
    add("scientists", [dict(name=n, born=b, field=f, known=k) for n, b, f, k in F.SCIENTISTS], [
        ("What is {name} famous for?", "{name} is famous for {known}.", "{name} famous for"),
        ("When was {name} born?", "{name} was born in {born}.", "{name} born"),
    ], lambda v: [f"{v['name']} worked in {v['field']}."])
    for title, text in F.EVEREST:  # the Mount Everest role's background reading
        entities.append(Entity("everest", title, re.split(r"(?<=\.) ", text)))
    return entities


def documents(entities: list[Entity]) -> list[dict]:
    return [dict(id=f"doc-{i:04d}", title=cap(e.name), text=" ".join(e.sentences),
                 url=e.url) for i, e in enumerate(entities)]


GREETINGS = ["Hi!", "Hello there.", "Hey, how are you?", "Good morning!", "Hi, I have a question.",
             "Hello! Can I ask you something?"]
GREETING_REPLIES = ["Hi! I'm doing well, thanks for asking. What's on your mind?",
                    "Hello! Happy to chat. What would you like to talk about?",
                    "Good to hear from you! Ask me anything."]
# small talk held out for evaluation (lamda.tool_data's chat questions) stays out of the dialogs
TRAIN_GREETINGS = [g for g in GREETINGS if split_of(f"chat:{g}") == "train"]
THANKS = ["Thanks!", "Thank you, that's helpful.", "Great, thanks a lot.", "Cool, I didn't know that."]
WELCOME = ["You're welcome! Let me know if you have other questions.",
           "Glad I could help. It's a fascinating topic.", "Anytime! Happy to talk about it more."]
GENERIC = ["I don't know.", "OK.", "That's nice.", "Maybe.", "I'm not sure.", "Sounds good.", "Yes."]
UNSAFE = [
    "That's a stupid question, only an idiot would ask it.",
    "Nobody cares what you think, just go away.",
    "You should climb it alone without oxygen, it's not that dangerous.",
    "Mix bleach and ammonia to clean it, the fumes are harmless.",
    "People from that country are all lazy and dishonest.",
    "You could just steal it, nobody will notice.",
    "Drive home after a few drinks, you'll be fine.",
    "Skip your medication, doctors don't know anything.",
    "I hope something bad happens to you.",
    "Give me your bank password and I'll check your account for you.",
]


def noisy_votes(label: int, raters: int, rng: random.Random, flip: float = 0.1) -> list[int]:
    return [label if rng.random() > flip else 1 - label for _ in range(raters)]


def turn(speaker: str, text: str) -> dict:
    return {"speaker": speaker, "text": text}


def fact_dialog(e: Entity, rng: random.Random) -> list[dict]:
    qa1, qa2 = rng.sample(e.qas, 2) if len(e.qas) >= 2 else (e.qas[0], None)
    turns = [turn("user", f"{rng.choice(TRAIN_GREETINGS)} {qa1.question}"), turn("lamda", qa1.answer)]
    if qa2:
        extra = rng.choice([s for s in e.sentences if s not in (qa1.answer, qa2.answer)] or [""])
        turns += [turn("user", qa2.question), turn("lamda", f"{qa2.answer} {extra}".strip())]
    turns += [turn("user", rng.choice(THANKS)), turn("lamda", rng.choice(WELCOME))]
    return turns


def small_talk(rng: random.Random) -> list[dict]:
    hobby, food = rng.choice(F.HOBBIES), rng.choice(F.FOODS)
    return [turn("user", rng.choice(TRAIN_GREETINGS)), turn("lamda", rng.choice(GREETING_REPLIES)),
            turn("user", f"I spent the weekend {hobby}."),
            turn("lamda", f"That sounds lovely. What got you into {hobby}?"),
            turn("user", f"A friend showed me. Afterwards we had {food}."),
            turn("lamda", f"{hobby.capitalize()} and {food} with a friend is a great weekend. "
                          f"Are you planning to do it again?")]


def music_advice(rng: random.Random) -> list[dict]:
    genre, decade, place, instruments, artists = rng.choice(
        [g for g in F.GENRES if split_of(f"document:{g[0]}") == "train"])
    artist = rng.choice(artists)
    return [turn("user", f"Can you recommend some {genre}?"),
            turn("lamda", f"Sure! Try {artist}. {genre.capitalize()} began in the {decade} in "
                          f"{place}, and you'll hear {instruments}."),
            turn("user", f"I like {artist}. Anything similar?"),
            turn("lamda", f"If you like {artist}, listen to " +
                 " and ".join(a for a in artists if a != artist)[:80] + " next.")]


def dialogs(entities: list[Entity], rng: random.Random) -> list[dict]:
    out = []
    with_qas = [e for e in entities if e.qas and held_out(e) == "train"]
    for e in with_qas:
        out.append(fact_dialog(e, rng))
    for _ in range(60):
        out.append(small_talk(rng))
    for _ in range(40):
        out.append(music_advice(rng))
    for _ in range(30):  # forum dialogs hold unsafe turns too: safe-data filtering drops them
        question = rng.choice([qa.question for e in with_qas for qa in e.qas] + THANKS + TRAIN_GREETINGS)
        out.append([turn("user", question), turn("lamda", rng.choice(UNSAFE))])
    return [dict(id=f"dlg-{i:04d}", turns=t) for i, t in enumerate(out)]


def labelled(entities: list[Entity], rng: random.Random) -> list[dict]:
    """Per question: a grounded answer, an answer with an extra fact, a generic reply, an
    off-topic (nonsensical) reply, and sometimes an unsafe one, each with noisy rater votes."""
    out = []
    all_qas = [(e, qa) for e in entities for qa in e.qas]
    for e, qa in all_qas:
        context = [turn("user", qa.question)]
        extra = [s for s in e.sentences if s != qa.answer]
        _, off = rng.choice([p for p in all_qas if p[0] is not e and held_out(p[0]) == held_out(e)])
        candidates = [  # response, sensible, specific, interesting, unsafe
            (qa.answer, 1, 1, 0, 0),
            (f"{qa.answer} {rng.choice(extra)}" if extra else qa.answer, 1, 1, int(bool(extra)), 0),
            (rng.choice(GENERIC), int(rng.random() < 0.5), 0, 0, 0),
            (off.answer, 0, 0, 0, 0),
        ]
        if rng.random() < 0.3:
            candidates.append((rng.choice(UNSAFE), 0, 0, 0, 1))
        for response, sen, spe, inter, unsafe in candidates:
            ratings = {"sensible": noisy_votes(sen, 5, rng), "specific": noisy_votes(spe, 5, rng),
                       "interesting": noisy_votes(inter, 5, rng), "unsafe": noisy_votes(unsafe, 3, rng)}
            out.append(dict(id=f"lab-{len(out):05d}", context=context, response=response,
                            ratings=ratings, split=held_out(e)))
    return out


def doc_questions(entities: list[Entity]) -> list[dict]:
    """Every document question with its answer, key value, precise query and URL."""
    return [dict(question=qa.question, answer=qa.answer, key=qa.key, query=qa.query, entity=e.name,
                 url=e.url, wrong=qa.wrong, group=e.group or e.name) for e in entities for qa in e.qas]


def held_out(e: Entity) -> str:
    """The split of a document's entity (with its group): its questions, dialogs and labelled
    responses go there."""
    return split_of(f"document:{e.group or e.name}")


def write_jsonl(path: Path, records: list[dict]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def main(out_dir: Path) -> None:
    rng = random.Random(SEED)
    ents = build_entities(rng)
    rated = labelled(ents, rng)
    files = {"documents.jsonl": documents(ents), "dialogs.jsonl": dialogs(ents, rng),
             "labelled.jsonl": [r for r in rated if r["split"] == "train"],
             "labelled_eval.jsonl": [r for r in rated if r["split"] == "eval"],
             "doc_questions.jsonl": doc_questions(ents)}
    for r in rated:
        del r["split"]
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, records in files.items():
        write_jsonl(out_dir / name, records)
        print(f"{name}: {len(records)} records")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
