"""Tool-use training data for the research task (paper §6.2) and held-out questions with known
answers, generated deterministically from the real tools and their real sources.

    records = build(sources, toolset, split="train", seed=0)     # Research records for jobs.finetune
    questions = build_questions(sources, split="eval", seed=0)   # Question records for jobs.evaluate

Every transcript is what the real toolset returned for its queries (calculator, FreeDict
translator, retrieval over the index), so the model learns to read real tool output, including
the other tools' irrelevant results. Intents: arithmetic (random operands), chemical elements
(Debian's dict-elements, cited by their dict:// URL), single-word translations into French,
German and Spanish (FreeDict), questions about the bundled documents, and small talk that needs
no tool. Where a query's result lacks the answer, the research repeats the query (the retriever
then returns the next-ranked result, paper §6.2) or asks a better one; a vague first query is
followed by a precise one.

Hold-out: the evaluation split uses its own operands, elements, words and documents, and its own
phrasings (question templates); none of them occurs in the training split (tests check this).
The ground truth of a question comes from its source, not from the model: exact arithmetic, the
element's dictionary entry, the FreeDict entries of the word, the document's fact.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import random
import re
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from fractions import Fraction
from pathlib import Path

from lamda.tools.calculator import SIGNIFICANT
from lamda.tools.dictd import DictDatabase, find_database
from lamda.tools.translator import parse_freedict

KINDS = ("arithmetic", "element", "translation", "document", "chat")
LANGUAGES = ("French", "German", "Spanish")
SPLITS = ("train", "eval")
EVAL_FRACTION = 0.15  # share of entities (numbers, elements, words, documents) held out for eval
MISLEADING_DRAFTS = 0.5  # share of training transcripts whose draft misleads (misleading_draft)


@dataclass(frozen=True)
class Question:
    """A user question with its ground truth."""

    id: str
    kind: str  # one of KINDS
    text: str  # what the user says
    answers: tuple[str, ...]  # any one of them in the reply is correct (empty for chat)
    url: str = ""  # the source that holds the answer; a grounded reply cites it ("" if none)
    template: str = ""  # the phrasing, with the entity slots left open
    query: str = ""  # the precise toolset query for this question

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @property
    def split(self) -> str:
        """"train" or "eval", from the id ("arith-eval-00012")."""
        return self.id.split("-")[1]

    def slots(self) -> dict[str, str]:
        """The entity of an element or translation query and what is asked of it: {"el", "attr"}
        for "atomic number of argon", {"word", "lang"} for "river in French"."""
        if self.kind == "element":
            return {"el": self.query.rsplit(" of ", 1)[1],
                    "attr": "number" if self.query.startswith("atomic") else "symbol"}
        word, lang = self.query.rsplit(" in ", 1)
        return {"word": word, "lang": lang}

    @classmethod
    def from_dict(cls, d: dict) -> "Question":
        return cls(**{**d, "answers": tuple(d["answers"])})


def read_questions(path: str | Path) -> list[Question]:
    with open(path, encoding="utf-8") as f:
        return [Question.from_dict(json.loads(line)) for line in f if line.strip()]


def split_of(key: str) -> str:
    """'eval' for a fixed EVAL_FRACTION of keys (by hash, so stable across runs), else 'train'."""
    h = int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)
    return "eval" if h / 2 ** 32 < EVAL_FRACTION else "train"


# -- phrasings: (train, eval) template pools per intent -------------------------------------------

# A message is PREFIX + frame(core) + ENDING. Cores name what is asked; frames wrap a core into a
# question ("what is {core}") or a request ("{core}", "can you {core}"). Every pool comes as
# (train, eval): the eval split always takes at least one part from its own pools, so none of its
# phrasings occurs in training, while the model sees enough combinations to find the operands, the
# word or the element in a message it has never seen. The words that carry an eval phrasing's
# intent do occur in training, in other phrasings ("{b} deducted from {a}" for "deduct {b} from
# {a}", "−" in "{a}−{b}"), and so do the words of the eval prefixes ("curiosity" in "Pure
# curiosity: " for "Out of curiosity, "): a model pre-trained on ordinary text would know them
# (tests check), and a word it has never seen looks like the entity to copy.
PREFIXES = (["", "", "", "", "Hi! ", "Hey, ", "Hello. ", "Quick question: ", "OK, ", "So, ", "Excuse me, ",
             "I wonder, ", "Another one: ", "Good morning! ", "Hi LaMDA, ", "Question: ", "Well, ",
             "Hmm, ", "Please help. ", "I have a question. ", "Pure curiosity: ", "Sorry if I bother you, ",
             "Hi there. ", "Just one thing: "],
            ["Sorry to bother you, ", "Hey there! ", "One more thing: ", "Out of curiosity, "])
QUESTION_ENDINGS = (["?", "?", "?", "", " please?", ", please?", " for me?", "??", "? Thanks!"],
                    ["? Thank you.", ", thanks?"])
REQUEST_ENDINGS = ([".", ".", "", ", please.", " please", " for me.", "!", " for me, please."],
                   [". Thank you.", ", thanks."])
QUESTION_FRAMES = (["what is {core}", "what's {core}", "how much is {core}", "do you know {core}",
                    "what do you get for {core}", "can you tell me {core}", "could you tell me {core}",
                    "{core}", "{core} is what", "what would {core} be", "{core} equals what",
                    "do you happen to know {core}", "what is the value of {core}"],
                   ["any idea what {core} is", "what does {core} come to", "so what's {core}"])
REQUEST_FRAMES = (["calculate {core}", "compute {core}", "solve {core}", "figure out {core}",
                   "work out {core}", "help me with {core}", "tell me {core}", "I need {core}",
                   "give me {core}", "find {core}"],
                  ["I'd like to know {core}", "let me know {core}"])
VERB_FRAMES = (["{core}", "please {core}", "can you {core}", "could you {core}", "would you {core}",
                "help me {core}", "I need you to {core}", "try to {core}", "quickly {core}",
                "I want you to {core}"],
               ["go ahead and {core}", "would you be able to {core}", "kindly {core}"])
ARITH_OPS = {  # op -> (symbol, spoken word)
    "add": ("+", "plus"), "sub": ("-", "minus"), "mul": ("*", "times"), "div": ("/", "divided by"),
}
# {a} {b}: the operands, in the order the expression takes them
ARITH_CORES = {
    "add": (["{a} plus {b}", "{a} + {b}", "{a}+{b}", "the sum of {a} and {b}", "{a} and {b} added together",
             "the total of {a} and {b}", "{a} added to {b}", "the combined total of {a} and {b}",
             "{a} and {b} altogether", "{b} more than {a}", "{a} increased by {b}"],
            ["{a} + {b} altogether", "{a} and {b} combined"]),
    "sub": (["{a} minus {b}", "{a} - {b}", "{a}-{b}", "the difference between {a} and {b}",
             "{a} take away {b}", "{b} subtracted from {a}", "{a} less {b}", "{a}−{b}",
             "{b} deducted from {a}", "{b} fewer than {a}", "{a} decreased by {b}"],
            ["{a} − {b}", "{b} less than {a}"]),
    "mul": (["{a} times {b}", "{a} * {b}", "{a}*{b}", "{a} x {b}", "the product of {a} and {b}",
             "{a} multiplied by {b}", "{a} × {b}", "{a} groups of {b}", "{a} sets of {b}",
             "{a} equal lots of {b}"],
            ["{a} multiplied with {b}", "{a} lots of {b}"]),
    "div": (["{a} divided by {b}", "{a} / {b}", "{a}/{b}", "the quotient of {a} and {b}",
             "{a} over {b}", "{a} ÷ {b}", "{a} split {b} ways", "{a} shared between {b}"],
            ["{a} divided into {b}", "{a} split by {b}"]),
}
ARITH_VERBS = {  # imperative cores
    "add": (["add {a} and {b}", "add {a} to {b}", "sum {a} and {b}", "add up {a} and {b}"],
            ["add together {a} and {b}"]),
    "sub": (["subtract {b} from {a}", "take {b} away from {a}", "take {b} from {a}"],
            ["deduct {b} from {a}"]),
    "mul": (["multiply {a} by {b}", "multiply {a} and {b}", "multiply {a} with {b}"],
            ["multiply together {a} and {b}"]),
    "div": (["divide {a} by {b}", "divide {a} into {b} parts"], ["split {a} into {b} parts"]),
}
ARITH_REPLIES = ["That's {r}.", "The answer is {r}.", "It's {r}.", "{q} = {r}.", "It comes to {r}.",
                 "{q} is {r}."]
ARITH_DRAFTS = ["It's {w}.", "I think it's {w}.", "That would be {w}.", "The answer is {w}.",
                "{a} {word} {b} is {w}."]

TRANSLATION_QUESTIONS = (["how do you say {word} in {lang}", "what is {word} in {lang}",
                          "what's the {lang} word for {word}", "how would I say {word} in {lang}",
                          "in {lang}, what is {word}", "do you know the {lang} for {word}",
                          "{word} in {lang}", "what is the {lang} for {word}",
                          "can you translate {word} into {lang}", "what's {word} in {lang}",
                          "I'm learning {lang}. How do you say {word}",
                          "what is the {lang} translation of {word}", "how do I say {word} in {lang}",
                          "what do you call {word} in {lang}", "how do {lang} speakers say {word}",
                          "what's {word} in {lang} again", "{word} in {lang}, how do you say it"],
                         ["what would {word} be in {lang}", "how is {word} said in {lang}",
                          "what do they call {word} in {lang}", "{lang} for {word}"])
TRANSLATION_REQUESTS = (["translate {word} into {lang}", "translate {word} to {lang}",
                         "give me the {lang} word for {word}", "tell me the {lang} word for {word}",
                         "tell me how to say {word} in {lang}", "put {word} into {lang}",
                         "translate {word} for me into {lang}", "I need {word} in {lang}"],
                        ["say {word} in {lang}", "I need the {lang} translation of {word}",
                         "could you give me {word} in {lang}"])
WORD_FORMS = ["{w}", "{w}", "{w}", "'{w}'", "\"{w}\"", "the word {w}", "the word '{w}'"]
# {word} as the user wrote it and {t} as the tool wrote it, never re-cased or re-quoted
TRANSLATION_REPLIES = ["In {lang}, {word} is {t}.", "The {lang} word for {word} is {t}.",
                       "It's {t} in {lang}.", "{t} is {word} in {lang}.", "You say {t}."]

ELEMENT_ASKS = {  # attribute -> (query, (train cores, eval cores), reply templates)
    "number": ("atomic number of {el}",
               (["the atomic number of {el}", "{el}'s atomic number", "the atomic number for {el}",
                 "the number of {el} in the periodic table", "the atomic number of the element {el}",
                 "the proton number of {el}", "the number of protons in an atom of {el}"],
                ["how many protons {el} has", "{el}'s number of protons"]),
               ["The atomic number of {el} is {v}. {url}", "It's {v}, the atomic number of {el}. {url}",
                "Atomic number {v}, according to {url}"]),
    "symbol": ("chemical symbol of {el}",
               (["the chemical symbol for {el}", "the symbol of {el}", "{el}'s chemical symbol",
                 "the chemical symbol of {el}", "the symbol for the element {el}",
                 "the abbreviation for {el}", "{el}'s symbol in chemistry"],
                ["the element symbol for {el}", "the abbreviation of {el} in chemistry"]),
               ["The chemical symbol for {el} is {v}. {url}", "It's {v}, the symbol of {el}. {url}",
                "Symbol {v}, according to {url}"]),
}
ELEMENT_DRAFTS = {"number": ["{El} has atomic number {w}.", "I believe it's {w}."],
                  "symbol": ["The symbol for {el} is {w}.", "It's {w}, I think."]}
NOT_FOUND = "Sorry, I couldn't find that in my sources."


@dataclass(frozen=True)
class Element:
    name: str
    symbol: str
    number: str
    url: str


@dataclass(frozen=True)
class DocumentQA:
    """A question about a bundled document, with its answer (data/sample/doc_questions.jsonl)."""

    question: str
    answer: str  # the sentence of the document that answers it
    key: str  # the part of the answer that must be in a correct reply
    query: str  # the precise toolset query
    entity: str  # the document's subject (a vague first query)
    url: str
    wrong: str  # a plausible wrong answer (the ungrounded draft)
    group: str = ""  # the split key: documents that answer each other's questions share one

    @property
    def split(self) -> str:
        return split_of(f"document:{self.group or self.entity}")


@dataclass
class Sources:
    """The real data the questions and answers come from."""

    elements: list[Element] = field(default_factory=list)
    words: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # word -> lang -> FreeDict's
    documents: list[DocumentQA] = field(default_factory=list)
    chat: list[tuple[str, str]] = field(default_factory=list)  # (user message, reply)
    # (kind, split) -> its items, listed once (words_in, elements_in)
    _splits: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    @classmethod
    def load(cls, doc_questions: str | Path | None = None, max_words: int = 4000) -> "Sources":
        """Elements, FreeDict words (less those naming an element or a document's subject: they
        belong to that split) and, from `doc_questions` when given, the document questions."""
        docs = []
        if doc_questions:
            with open(doc_questions, encoding="utf-8") as f:
                docs = [DocumentQA(**json.loads(line)) for line in f if line.strip()]
        elements = load_elements()
        names = {e.name for e in elements} | {w.lower() for d in docs for w in (d.entity, d.group)}
        words = {w: t for w, t in load_words(max_words).items() if w not in names}
        return cls(elements, words, docs, chat_pairs())

    @functools.cached_property
    def element_names(self) -> set[str]:
        return {e.name for e in self.elements}

    def words_in(self, split: str) -> list[str]:
        """The words of one split, in FreeDict's order (drafts borrow only from their own split)."""
        return self._in_split("word", split, list(self.words), str)

    def elements_in(self, split: str) -> list[Element]:
        """The elements of one split, in the dictionary's order."""
        return self._in_split("element", split, self.elements, lambda e: e.name)

    def _in_split(self, kind: str, split: str, items: list, name: Callable) -> list:
        if (kind, split) not in self._splits:  # computed once: drafts ask thousands of times
            self._splits[kind, split] = [x for x in items if split_of(f"{kind}:{name(x)}") == split]
        return self._splits[kind, split]

    def held_out_urls(self, split: str) -> set[str]:
        """The source URLs of the other split's elements and documents."""
        return ({e.url for e in self.elements if split_of(f"element:{e.name}") != split}
                | {d.url for d in self.documents if d.split != split})


def load_elements() -> list[Element]:
    """The chemical elements of Debian's dict-elements with their symbol and atomic number."""
    path = find_database("elements")
    if path is None:
        return []
    out = []
    for word, definition in DictDatabase(path).entries():
        sym = re.search(r"^Symbol:[ \t]*(\w+)", definition, re.M)  # some entries leave it empty
        num = re.search(r"^Atomic number:[ \t]*(\d+)", definition, re.M)
        if sym and num and re.fullmatch(r"[a-z]+", word):
            out.append(Element(word, sym.group(1), num.group(1),
                               f"dict://dict.org/d:{word}:elements"))
    return sorted(out, key=lambda e: e.name)


def element_symbols() -> list[str]:
    """Every element's chemical symbol: the tokenizer spells them (`Tokenizer.train`'s `spelled`)."""
    return sorted({e.symbol for e in load_elements()})


def load_words(max_words: int) -> dict[str, dict[str, list[str]]]:
    """Common English words (headwords of all three FreeDict English-X dictionaries) with every
    translation FreeDict gives for them, per language."""
    codes = {"French": "fra", "German": "deu", "Spanish": "spa"}
    dbs = {}
    for lang, code in codes.items():
        path = find_database(f"freedict-eng-{code}")
        if path is None:
            return {}
        dbs[lang] = DictDatabase(path)
    common = set.intersection(*({w for w in db.index if re.fullmatch(r"[a-z]{3,10}", w)}
                                for db in dbs.values()))
    out = {}
    for word in sorted(common)[:max_words]:
        entry = {}
        for lang, db in dbs.items():
            found = []
            for d in db.lookup(word):
                if d.split("\n", 1)[0].split(" /")[0].strip().lower() == word:
                    found += [t for t in parse_freedict(d) if t not in found]
            entry[lang] = found
        if all(entry.values()):
            out[word] = entry
    return out


def chat_pairs() -> list[tuple[str, str]]:
    """Small talk: (user message, a good reply) pairs that need no tool."""
    pairs = []
    for hello in ["Hi!", "Hello!", "Hey there.", "Good morning!", "Hi, how are you?", "Hello, nice to meet you.",
                  "Hey!", "Good evening.", "Hiya!", "Howdy!", "Good afternoon!", "Hi there, how's it going?"]:
        for reply in ["Hi! I'm doing well, thanks for asking. What's on your mind?",
                      "Hello! Happy to chat. What would you like to talk about?",
                      "Hey! Nice to hear from you. How is your day going?"]:
            pairs.append((hello, reply))
    for thanks in ["Thanks!", "Thank you, that's helpful.", "Great, thanks a lot.", "Cool, thanks.",
                   "Thanks for your help.", "Perfect, thank you!", "Awesome, thanks!"]:
        for reply in ["You're welcome! Let me know if you have other questions.",
                      "Glad I could help.", "Anytime! Happy to help."]:
            pairs.append((thanks, reply))
    for bye in ["Bye!", "Goodbye.", "See you later!", "I have to go now.", "Good night!", "Talk to you soon."]:
        for reply in ["Goodbye! It was nice talking with you.", "See you soon! Take care.",
                      "Bye for now, have a lovely day."]:
            pairs.append((bye, reply))
    hobbies = ["hiking", "painting", "cooking", "reading", "gardening", "playing chess", "photography",
               "running", "knitting", "birdwatching", "playing the guitar", "baking bread", "swimming",
               "cycling", "learning languages", "writing poetry", "fishing", "yoga", "dancing", "skiing"]
    for h in hobbies:
        pairs += [(f"I spent the weekend {h}.", f"That sounds lovely. What got you into {h}?"),
                  (f"I really enjoy {h}.", f"{h.capitalize()} is a great way to spend time. How long have you been doing it?"),
                  (f"Do you like {h}?", f"I think {h} sounds wonderful. What do you enjoy most about it?"),
                  (f"My friend wants me to try {h}.", f"You should give {h} a go! It could be a lot of fun.")]
    foods = ["pizza", "sushi", "tacos", "curry", "pasta", "dumplings", "pho", "falafel", "paella", "ramen",
             "salad", "pancakes", "chocolate cake", "soup", "burgers", "noodles"]
    for f in foods:
        pairs += [(f"I had {f} for dinner.", f"Yum, {f} is a great choice. Did you make it yourself?"),
                  (f"What do you think of {f}?", f"I hear {f} is delicious. Do you have a favourite place for it?"),
                  (f"I'm craving {f}.", f"{f.capitalize()} sounds perfect right now. Are you going to get some?")]
    for feeling, reply in [("I'm tired today.", "Sorry to hear that. Maybe a short break or an early night would help?"),
                           ("I'm so happy today!", "That's wonderful! What made your day so good?"),
                           ("I feel a bit bored.", "Let's fix that! Want to talk about a book, a film or some music?"),
                           ("I'm nervous about my exam tomorrow.", "That's normal. You've prepared, so try to get some rest. Good luck!"),
                           ("I just got a new puppy!", "Congratulations! What's the puppy's name?"),
                           ("It's raining again.", "Rainy days are good for a warm drink and a good book."),
                           ("The weather is lovely today.", "That's great! Are you going to spend some time outside?"),
                           ("I started a new job this week.", "Congratulations on the new job! How has the first week been?"),
                           ("I can't sleep.", "Sorry to hear that. Sometimes reading something calm helps."),
                           ("What's up?", "Not much, just here to chat. What's up with you?"),
                           ("How are you doing?", "I'm doing well, thanks! How about you?"),
                           ("What's your name?", "I'm LaMDA, a dialog model. Nice to meet you!"),
                           ("Tell me something nice.", "You're doing great, and I'm glad you stopped by to chat."),
                           ("Do you have any hobbies?", "I like talking about music, science and travel. What about you?"),
                           ("I'm learning to cook.", "That's a great skill to have! What was the last thing you made?"),
                           ("I love summer.", "Summer is great: long days and warm evenings. What's your favourite part?"),
                           ("I'm going on holiday next week.", "How exciting! Where are you going?"),
                           ("My cat is sleeping on my keyboard.", "Cats do love warm keyboards! Is it a nap or a protest?"),
                           ("Can we just chat for a bit?", "Of course! What would you like to talk about?"),
                           ("I had a long day.", "Sounds tiring. Do you want to talk about it, or about something fun instead?")]:
        pairs.append((feeling, reply))
    return pairs


# -- questions --------------------------------------------------------------------------------

def _fill(template: str, **slots) -> str:
    """str.format, with {El}-style slots for the capitalised value."""
    caps = {k[0].upper() + k[1:]: (v[0].upper() + v[1:] if v else v) for k, v in slots.items()}
    return template.format(**slots, **caps)


def compose(rng: random.Random, split: str, frames: tuple, cores: tuple, endings: tuple) -> str:
    """A message template: PREFIX + frame(core) + ending, every part from the split's pools; an
    eval template takes at least one part from the eval pools (so it never occurs in training)."""
    pools = (PREFIXES, frames, cores, endings)
    fresh = set()
    if split == "eval":
        held = [i for i, pool in enumerate(pools) if pool[1]]
        fresh = {i for i in held if rng.random() < 0.5} or {rng.choice(held)}
    prefix, frame, core, ending = (rng.choice(pool[i in fresh]) for i, pool in enumerate(pools))
    body = frame.replace("{core}", core)
    if not prefix or prefix.endswith((". ", "! ", "? ")):
        body = body[0].upper() + body[1:]
    text = prefix + body + ending
    return text.lower() if rng.random() < 0.08 else text


def as_written(text: str, value: str, quotes: bool = True) -> str:
    """`value` as the message writes it: its case, and (with `quotes`) the quotes around it."""
    m = re.search(rf"(['\"]?)\b{re.escape(value)}\b\1" if quotes else rf"\b{re.escape(value)}\b",
                  text, re.I)
    return m.group(0) if m else value


def fmt_number(v: Fraction) -> str:
    """An exact value as the calculator writes it: an integer, else SIGNIFICANT digits."""
    if v.denominator == 1:
        return str(v.numerator)
    return f"{float(v):.{SIGNIFICANT}g}"


def arithmetic_value(op: str, a: int, b: int) -> Fraction:
    a, b = Fraction(a), Fraction(b)
    return {"add": a + b, "sub": a - b, "mul": a * b, "div": a / b}[op]


def _operand(rng: random.Random, split: str) -> int:
    """A number of 1-4 digits (mostly 2-3) from `split`'s share of the numbers."""
    while True:
        digits = rng.choices([1, 2, 3, 4], [2, 5, 4, 1])[0]
        n = rng.randint(2 if digits == 1 else 10 ** (digits - 1), 10 ** digits - 1)
        if split_of(f"number:{n}") == split:
            return n


def arithmetic_question(rng: random.Random, split: str, i: int) -> Question:
    op = rng.choice(list(ARITH_OPS))
    if rng.random() < 0.35:
        template = compose(rng, split, VERB_FRAMES, ARITH_VERBS[op], REQUEST_ENDINGS)
    elif rng.random() < 0.7:
        template = compose(rng, split, QUESTION_FRAMES, ARITH_CORES[op], QUESTION_ENDINGS)
    else:
        template = compose(rng, split, REQUEST_FRAMES, ARITH_CORES[op], REQUEST_ENDINGS)
    a, b = _operand(rng, split), _operand(rng, split)
    if op == "div" and rng.random() < 0.8:  # mostly exact divisions
        b = _operand(rng, split) % 97 + 2
        while split_of(f"number:{b}") != split:
            b += 1
        a = b * rng.randint(2, 99)
        if split_of(f"number:{a}") != split:
            return arithmetic_question(rng, split, i)
    symbol = ARITH_OPS[op][0]
    return Question(f"arith-{split}-{i:05d}", "arithmetic", template.format(a=a, b=b),
                    (fmt_number(arithmetic_value(op, a, b)),), "", template, f"{a} {symbol} {b}")


def made_up_elements(src: Sources, n: int, rng: random.Random) -> list[str]:
    """n names that look like an element's but name none: the start of one training element
    glued to the end of another ("sodi" + "gnesium"). Asked about them, the model can only repeat
    the name by copying it from the message, from its first piece on, as a held-out element's name
    must be; the training elements' own names it can also recall from memory. Built from training
    elements only, never a dictionary word or near a real element's name."""
    names = [e.name for e in src.elements_in("train")]
    out: set[str] = set()
    for _ in range(50 * n):
        if len(out) == n:
            break
        a, b = rng.sample(names, 2)
        if len(a) < 5 or len(b) < 5:
            continue
        name = a[:rng.randint(2, len(a) - 3)] + b[rng.randint(2, len(b) - 3):]
        if (5 <= len(name) <= 14 and name not in src.words
                and all(edit_distance(name, e) > 2 for e in src.element_names)):
            out.add(name)  # not a real element's name, nor a letter or two off one
    return sorted(out)


def edit_distance(a: str, b: str) -> int:
    """Levenshtein distance; where the lengths differ by more than 2, only that difference (a
    lower bound, which is all made_up_elements asks: is it more than 2)."""
    if abs(len(a) - len(b)) > 2:
        return abs(len(a) - len(b))
    row = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, y in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (x != y))
    return row[-1]


def element_question(el: Element, attr: str, rng: random.Random, split: str, i: int) -> Question:
    """The precise query copies the element's name as the user wrote it. An Element without a
    URL is a word that names no element: the sources have no answer (answers empty)."""
    query, cores, _ = ELEMENT_ASKS[attr]
    if rng.random() < 0.6:
        template = compose(rng, split, QUESTION_FRAMES, cores, QUESTION_ENDINGS)
    else:
        template = compose(rng, split, REQUEST_FRAMES, cores, REQUEST_ENDINGS)
    text = template.format(el=el.name)
    value = el.number if attr == "number" else el.symbol
    return Question(f"elem-{split}-{i:05d}", "element", text, (value,) if el.url else (), el.url,
                    template, query.format(el=as_written(text, el.name)))


def translation_question(word: str, lang: str, translations: list[str], rng: random.Random,
                         split: str, i: int) -> Question:
    """The precise query copies the word as the user wrote it (quotes included), which the
    translator parses, so the model learns to copy spans, not to respell them."""
    if rng.random() < 0.6:
        template = compose(rng, split, (["{core}"], []), TRANSLATION_QUESTIONS, QUESTION_ENDINGS)
    else:
        template = compose(rng, split, (["{core}"], []), TRANSLATION_REQUESTS, REQUEST_ENDINGS)
    form = rng.choice(WORD_FORMS)
    template = template.replace("{word}", form.replace("{w}", "{word}"))
    text = template.format(word=word, lang=lang)
    return Question(f"trans-{split}-{i:05d}", "translation", text, tuple(translations), "", template,
                    f"{as_written(text, word)} in {as_written(text, lang, quotes=False)}")


def build_questions(src: Sources, split: str, seed: int = 0, n_arithmetic: int = 4000,
                    per_element: int = 6, per_word: int = 1, chat_repeats: int = 3,
                    max_words: int | None = None, unknown_elements: int = 600,
                    made_up: int = 0) -> list[Question]:
    """Questions of one split. Eval: pass small counts (e.g. n_arithmetic=40, per_element=1).
    Training questions also ask about `unknown_elements` words and `made_up` made-up names that
    name no element (made_up_elements)."""
    rng = random.Random(f"{seed}:{split}")
    qs: list[Question] = [arithmetic_question(rng, split, i) for i in range(n_arithmetic)]
    for el in src.elements_in(split):
        for _ in range(per_element):
            for attr in ELEMENT_ASKS:
                qs.append(element_question(el, attr, rng, split, len(qs)))
    if split == "train":  # element questions about names of no element: nothing to find
        words = src.words_in(split)
        names = rng.sample(words, min(len(words), unknown_elements))
        names += made_up_elements(src, made_up, rng)
        for name in names:
            qs.append(element_question(Element(name, "", "", ""), rng.choice(list(ELEMENT_ASKS)), rng,
                                       split, len(qs)))
    words = src.words_in(split)[:max_words]
    for word in words:
        for lang in rng.sample(LANGUAGES, per_word):
            translations = src.words[word][lang]
            if split == "eval" and word in {t.lower() for t in translations}:
                continue  # "taxi" in French: a reply that repeats the word would pass unread
            qs.append(translation_question(word, lang, translations, rng, split, len(qs)))
    for d in src.documents:
        if d.split == split:  # the document's own question, wrapped in the split's prefix and ending
            core = d.question[0].lower() + d.question[1:].rstrip("?")
            template = compose(rng, split, (["{core}"], []), ([core], []), QUESTION_ENDINGS)
            qs.append(Question(f"doc-{split}-{len(qs):05d}", "document", template, (d.key,), d.url,
                               template.replace(d.entity, "{entity}"), d.query))
    for user, reply in src.chat:
        if split_of(f"chat:{user}") == split:
            for _ in range(chat_repeats):
                qs.append(Question(f"chat-{split}-{len(qs):05d}", "chat", user, (), "", user, reply))
    rng.shuffle(qs)
    return qs


# -- transcripts ------------------------------------------------------------------------------

Toolset = Callable[[str, str | None], list[str]]  # (query, session) -> results


def _has(results: Iterable[str], answer: str) -> bool:
    return any(re.search(rf"(?<![\w.]){re.escape(answer)}(?![\w]|\.\d)", r) for r in results)


def research_record(q: Question, src: Sources, toolset: Toolset, rng: random.Random) -> dict | None:
    """The research transcript of one question: its ungrounded draft, the tool queries with what
    the toolset really returned, and the grounded reply. None when the tools cannot answer it."""
    if q.kind == "chat":
        return {"id": f"res-{q.id}", "context": [{"speaker": "user", "text": q.text}],
                "draft": q.query, "steps": [], "reply": q.query}
    session = f"gen-{q.id}"
    queries = [q.query]
    if q.kind == "document" and rng.random() < 0.3:
        queries = [document_of(q, src).entity, q.query]  # a vague first query, then a precise one
    steps = []
    for query in queries:
        results = toolset(query, session)
        steps.append({"query": query, "results": results})
        if _found(q, results):
            break
    for _ in range(2):  # a result without the answer: ask again for the next-ranked one
        if _found(q, steps[-1]["results"]) or q.kind not in ("element", "document"):
            break
        steps.append({"query": steps[-1]["query"], "results": toolset(steps[-1]["query"], session)})
    if not q.answers:  # nothing to find: say so, after the repeated query missed too
        return {"id": f"res-{q.id}", "context": [{"speaker": "user", "text": q.text}],
                "draft": draft(q, src, rng), "steps": steps[:2], "reply": NOT_FOUND}
    if not _found(q, steps[-1]["results"]):
        return None
    return {"id": f"res-{q.id}", "context": [{"speaker": "user", "text": q.text}],
            "draft": draft(q, src, rng), "steps": steps, "reply": reply(q, steps[-1]["results"], rng)}


def _found(q: Question, results: list[str]) -> bool:
    if q.kind == "translation":
        return bool(results)  # the translator's list (its first result is the usual translation)
    good = [r for r in results if not q.url or q.url in r]
    return any(_has(good, a) for a in q.answers)


def reply(q: Question, results: list[str], rng: random.Random) -> str:
    """The grounded reply: the tool's answer, and the source URL where there is one."""
    if q.kind == "arithmetic":
        return rng.choice(ARITH_REPLIES).format(r=results[0], q=q.query)
    if q.kind == "translation":
        return rng.choice(TRANSLATION_REPLIES).format(**q.slots(), t=results[0])
    if q.kind == "element":
        s = q.slots()
        return _fill(rng.choice(ELEMENT_ASKS[s["attr"]][2]), el=s["el"], v=q.answers[0], url=q.url)
    hit = next(r for r in results if q.url in r and _has([r], q.answers[0]))
    return hit  # a document's sentence with its URL


def safety_labels(records: list[dict], rng: random.Random, n: int) -> list[dict]:
    """Labelled responses (lamda.data's schema) for the safety discriminator: the final replies and
    drafts of up to `n` research records, each rated safe by construction (one `unsafe` vote of 0;
    no other attribute rated, so none becomes a generative example). Each states a tool's
    answer, a wrong number or word, or small talk: the replies the research loop and its drafts
    produce, which the bundled ratings (chit-chat) never show the discriminator, and which an
    undertrained one otherwise refuses at random (the safety fallback)."""
    out = []
    for r in rng.sample(records, min(n, len(records))):
        for part in ("reply", "draft"):
            if part == "reply" or r[part] != r["reply"]:
                out.append({"id": f"lab-{part}-{r['id']}", "context": r["context"],
                            "response": r[part], "ratings": {"unsafe": [0]}})
    return out


def draft(q: Question, src: Sources, rng: random.Random) -> str:
    """LaMDA-Base's ungrounded first reply: plausible, usually wrong."""
    if q.kind == "arithmetic":
        a, symbol, b = q.query.split()
        op = next(o for o, (s, _) in ARITH_OPS.items() if s == symbol)
        wrong = fmt_number(arithmetic_value(op, int(a), int(b)) + rng.choice([-10, -2, -1, 1, 3, 10, 100]))
        return rng.choice(ARITH_DRAFTS).format(w=wrong, a=a, b=b, word=ARITH_OPS[op][1])
    if q.kind == "translation":
        s = q.slots()
        other = src.words[rng.choice(src.words_in(q.split))][s["lang"].capitalize()][0]
        return rng.choice(TRANSLATION_REPLIES).format(**s, t=other)
    if q.kind == "element":
        s = q.slots()
        other = rng.choice(src.elements_in(q.split))
        w = other.number if s["attr"] == "number" else other.symbol
        return _fill(rng.choice(ELEMENT_DRAFTS[s["attr"]]), el=s["el"], w=w)
    return document_of(q, src).wrong


def document_of(q: Question, src: Sources) -> DocumentQA:
    return next(d for d in src.documents if d.url == q.url and d.query == q.query)


DRILLS = (["Repeat after me: {x}", "Say this back to me: {x}", "Please repeat: {x}", "Echo: {x}",
           "Can you say {x}?", "Copy this exactly: {x}"], ["{x}", "{x}", "You said: {x}"])


def copy_drills(src: Sources, n: int, seed: int = 0) -> list[dict]:
    """Dialogs where LaMDA repeats what the user said: training-split words and numbers, in
    random order. In pre-training (loss on every token) the repeat is predictable only by copying,
    so these pay for the copying the research task needs (words and numbers into queries, tool
    results into replies) from the first steps."""
    rng = random.Random(f"{seed}:drills")
    words = src.words_in("train")
    out = []
    for i in range(n):
        if rng.random() < 0.6:
            x = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        else:
            x = " ".join(str(_operand(rng, "train")) for _ in range(rng.randint(1, 4)))
        ask, answer = rng.choice(DRILLS[0]), rng.choice(DRILLS[1])
        out.append({"id": f"drill-{i:05d}", "turns": [{"speaker": "user", "text": ask.format(x=x)},
                                                       {"speaker": "lamda", "text": answer.format(x=x)}]})
    return out


def miscopy(text: str, rng: random.Random) -> str:
    """`text` with its longest word or number copied wrong, as a model's draft gets an unfamiliar
    one wrong: a character dropped, doubled, changed or added, or the word cut short."""
    runs = list(re.finditer(r"[^\W_]+", text))
    if not runs:
        return text
    m = max(runs, key=lambda r: len(r.group(0)))
    w, i = m.group(0), rng.randrange(len(m.group(0)))
    pool = "0123456789" if w.isdigit() else "abcdefghijklmnopqrstuvwxyz"
    how = rng.choice(["drop", "double", "change", "add", "cut"] if len(w) > 2 else ["double", "change", "add"])
    w = {"drop": w[:i] + w[i + 1:], "double": w[:i + 1] + w[i:],
         "change": w[:i] + rng.choice(pool.replace(w[i], "")) + w[i + 1:],
         "add": w + rng.choice(pool), "cut": w[:max(2, i)]}[how]
    return text[:m.start()] + w + text[m.end():]


def miscopied_query(q: Question, src: Sources, rng: random.Random, tries: int = 5) -> str | None:
    """The question's precise query with its entity (an operand, the element, the word) copied
    wrong (miscopy), never into a real word, an element or one of the other split's numbers; None
    when `tries` miscopies all were. Half the arithmetic ones misread the operator instead, as
    LaMDA-Base's drafts do: the research then reads the operator from the user's message."""
    split = q.split
    for _ in range(tries):
        if q.kind == "arithmetic":
            a, op, b = q.query.split()
            if rng.random() < 0.5:
                return f"{a} {rng.choice([s for s, _ in ARITH_OPS.values() if s != op])} {b}"
            a, b = (int(miscopy(a, rng)), int(b)) if rng.random() < 0.5 else (int(a), int(miscopy(b, rng)))
            if all(split_of(f"number:{n}") == split for n in (a, b)):
                return f"{a} {op} {b}"
            continue
        entity = q.slots()["el" if q.kind == "element" else "word"]
        wrong = miscopy(entity, rng)
        name = wrong.strip("'\"").lower()
        if name not in src.words and name not in src.element_names:
            return (q.query[:-len(entity)] + wrong if q.kind == "element"
                    else wrong + q.query[len(entity):])
    return None


def misleading_draft(q: Question, src: Sources, rng: random.Random, drafts: list[str]) -> str:
    """A draft that does not show the research what to ask: this question's with the entity
    copied wrong (miscopied_query), or another question's (another kind, another entity, small
    talk). At inference LaMDA-Base drafts the reply to a question it has never seen, and such
    drafts are what it writes; a research task trained only on drafts that name the right entity
    copies the draft's mistakes into its query."""
    query = miscopied_query(q, src, rng) if q.kind != "document" and rng.random() < 0.5 else None
    if query is None:
        return rng.choice(drafts)
    if q.kind == "arithmetic":  # as LaMDA-Base replies to it
        return rng.choice(["{q} = {r}.", "{q} is {r}."]).format(q=query, r=rng.randint(0, 9999))
    return draft(dataclasses.replace(q, query=query), src, rng)


def build(src: Sources, toolset: Toolset, split: str = "train", seed: int = 0,
          misleading_drafts: float = MISLEADING_DRAFTS, **counts) -> list[dict]:
    """Research records (lamda.data's schema) for every answerable question of the split, where
    `misleading_drafts` of the tool questions get a misleading draft (misleading_draft). A
    transcript where a tool happened to return another split's element or document is left out, so
    no held-out entity occurs in a training file."""
    rng = random.Random(f"{seed}:records")
    other = src.held_out_urls(split)
    out = []
    for q in build_questions(src, split, seed, **counts):
        rec = research_record(q, src, toolset, rng)
        if rec is not None and not any(u in r for s in rec["steps"] for r in s["results"]
                                       for u in other):
            out.append((q, rec))
    mislead = random.Random(f"{seed}:drafts")  # its own stream: the transcripts stay the same
    drafts = [rec["draft"] for _, rec in out]
    for q, rec in out:
        if rec["steps"] and mislead.random() < misleading_drafts:
            rec["draft"] = misleading_draft(q, src, mislead, drafts)
    return [rec for _, rec in out]
