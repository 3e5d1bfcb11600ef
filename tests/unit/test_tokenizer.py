import pytest

from lamda import tokenizer as tkn
from lamda.tokenizer import SPECIAL_TOKENS, Tokenizer

TEXTS = [
    "Mount Everest is 8,849 metres tall.",
    "What is 135+7721?  Two spaces, a tab\tand a trailing space ",
    "Ünïcödé, 日本語, emoji 🎵 and bytes never seen in training: \u2603\u0f00",
    "RESPONSE SENSIBLE <1> USER: TS, User, typed by a user",
]


@pytest.mark.parametrize("text", TEXTS)
def test_plain_text_round_trips(tok, text):
    assert tok.decode(tok.encode(text)) == text


def test_unknown_characters_fall_back_to_bytes(tok):
    ids = tok.encode("\u0f00")
    assert tkn.UNK_ID not in ids
    assert all(tok.piece(i).startswith("<0x") for i in ids if tok.piece(i) != "\u2581")


def test_special_tokens_are_atomic_ids(tok):
    ids = [tok.special(name) for name in SPECIAL_TOKENS]
    assert len(set(ids)) == len(SPECIAL_TOKENS)
    assert all(i < tok.vocab_size for i in ids)
    rendered = tok.decode([tok.special(tkn.USER), *tok.encode("hi"), tok.eot_id, tok.special(tkn.RESPONSE)])
    assert rendered == "USER: hi <eot> RESPONSE"


def test_user_text_cannot_produce_special_tokens(tok):
    ids = tok.encode(" ".join(SPECIAL_TOKENS))
    assert not set(ids) & set(tok.special_ids.values())


def test_digits_are_split(tok):
    assert len(tok.encode("7721")) >= 4


def test_save_and_load(tok, tmp_path):
    tok.save(tmp_path / "t" / "tokenizer.model")
    again = Tokenizer.load(tmp_path / "t" / "tokenizer.model")
    assert again.encode(TEXTS[0]) == tok.encode(TEXTS[0])
    assert again.special_ids == tok.special_ids
    assert not list((tmp_path / "t").glob("*.tmp"))


def test_corrupt_model_file_is_a_clear_error(tmp_path):
    bad = tmp_path / "tokenizer.model"
    bad.write_bytes(b"not a model")
    with pytest.raises(ValueError, match="not a SentencePiece model"):
        Tokenizer.load(bad)


def test_unknown_special_name(tok):
    with pytest.raises(KeyError, match="not a special token"):
        tok.special("ASSISTANT:")


def test_pieces_are_at_most_max_piece_length_characters_but_symbols_stay_whole(sample_docs):
    from lamda.data import corpus_texts
    url = "dict://dict.org/d:"
    short = Tokenizer.train(corpus_texts(sample_docs, []), vocab_size=1024, symbols=[url],
                            max_piece_length=5)
    pieces = [short.decode([i]) for i in short.encode(f"the element californium {url}carbon:elements")]
    assert url in pieces
    assert all(len(p) <= 5 for p in pieces if p != url)
    assert len(short.encode("californium")) > 1


def test_spelled_words_are_never_one_piece(sample_docs):
    """A corpus that names iron's "Fe" often makes it a piece; spelled, it is written as a held-out
    symbol is, in smaller pieces, and the text still round-trips."""
    from lamda.data import corpus_texts
    texts = [*corpus_texts(sample_docs, []), *["Symbol: Fe. Iron is Fe, Fe is iron."] * 300]
    plain = Tokenizer.train(texts, vocab_size=1024)
    spelled = Tokenizer.train(texts, vocab_size=1024, spelled=["Fe", "H"])
    text = "It's Fe, the symbol of iron. Fe"
    assert [plain.sp.id_to_piece(i) for i in plain.encode(text)].count("▁Fe") == 2  # one piece
    pieces = [spelled.sp.id_to_piece(i) for i in spelled.encode(text)]
    assert not {"▁Fe", "Fe"} & set(pieces) and spelled.decode(spelled.encode(text)) == text
    assert spelled.encode("He said") == plain.encode("He said")  # one letter: never split further
