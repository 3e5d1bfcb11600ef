"""SentencePiece BPE tokenizer with LaMDA's special tokens.

The special tokens (sentinel, attribute names, ratings, speaker and routing markers, end of turn)
are SentencePiece *control symbols*: each is one atomic id, and `encode(text)` never produces one.
So a user who types "RESPONSE" or "UNSAFE <0>" gets ordinary pieces and cannot forge the formats;
only the format builders in lamda.data insert special ids. `decode` renders them by name.

Text is kept byte-exact: identity normalisation, whitespace preserved, digits split one per piece,
byte fallback so no input is unencodable.
"""

from __future__ import annotations

import io
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

import sentencepiece as spm
from sentencepiece import sentencepiece_model_pb2

EOT = "<eot>"  # end of a turn
RESPONSE = "RESPONSE"  # sentinel between context and response
ATTRIBUTES = ("SENSIBLE", "SPECIFIC", "INTERESTING", "UNSAFE")  # discriminator attribute names
RATINGS = ("<0>", "<1>")  # rating tokens after an attribute name
USER, LAMDA = "USER:", "LAMDA:"  # dialog speakers
LAMDA_BASE, LAMDA_RESEARCH, TS = "LAMDA-BASE:", "LAMDA-RESEARCH:", "TS:"  # research transcripts
TO_TOOLSET, TO_USER = "TS,", "User,"  # first word of a research output routes it
SPECIAL_TOKENS = (EOT, RESPONSE, *ATTRIBUTES, *RATINGS, USER, LAMDA, LAMDA_BASE, LAMDA_RESEARCH, TS,
                  TO_TOOLSET, TO_USER)

PAD_ID, UNK_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


class Tokenizer:
    """A trained SentencePiece model plus the special-token table."""

    def __init__(self, model_proto: bytes):
        self.proto = model_proto
        self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
        self.special_ids = {name: self.sp.piece_to_id(name) for name in SPECIAL_TOKENS}
        for name, i in self.special_ids.items():
            if i == self.sp.unk_id() or not self.sp.is_control(i):
                raise ValueError(f"tokenizer model lacks the special token {name!r}")
        self.special_names = {i: name for name, i in self.special_ids.items()}

    def __reduce__(self):  # pickled as the model bytes (Ray ships tokenizers to workers)
        return Tokenizer, (self.proto,)

    # -- training and files -------------------------------------------------------------------

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 32000, *, split_digits: bool = True,
              symbols: Iterable[str] = (), max_sentence_length: int = 16384,
              input_sentence_size: int = 2_000_000, max_piece_length: int = 16,
              spelled: Iterable[str] = ()) -> "Tokenizer":
        """Train a BPE model on an iterator of texts (each may hold several lines). `symbols` are
        ordinary text that always becomes one piece (e.g. the URL prefixes of the sources a reply
        cites, so that copying a citation is copying the source's name after one piece). Pieces
        are at most `max_piece_length` characters (the leading space's included). No piece is
        one of the `spelled` words alone (see `_spell`)."""
        model = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=_lines(texts),
            model_writer=model,
            model_type="bpe",
            vocab_size=vocab_size,
            control_symbols=list(SPECIAL_TOKENS),
            user_defined_symbols=list(symbols),
            byte_fallback=True,
            split_digits=split_digits,
            normalization_rule_name="identity",
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            character_coverage=0.9995,
            max_sentence_length=max_sentence_length,
            max_sentencepiece_length=max_piece_length,
            input_sentence_size=input_sentence_size,
            shuffle_input_sentence=True,
            pad_id=PAD_ID, unk_id=UNK_ID, bos_id=BOS_ID, eos_id=EOS_ID,
            num_threads=os.cpu_count() or 1,
            minloglevel=2,
        )
        return cls(_spell(model.getvalue(), spelled))

    def save(self, path: str | os.PathLike) -> None:
        """Write the model file atomically (a reader never sees a partial file)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(self.proto)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Tokenizer":
        data = Path(path).read_bytes()
        try:
            return cls(data)
        except RuntimeError as e:  # sentencepiece's parse error
            raise ValueError(f"{path}: not a SentencePiece model ({e})") from e

    # -- ids ----------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def pad_id(self) -> int:
        return PAD_ID

    @property
    def eos_id(self) -> int:
        return EOS_ID

    @property
    def eot_id(self) -> int:
        return self.special_ids[EOT]

    def special(self, name: str) -> int:
        """Id of a special token by name, e.g. `special("RESPONSE")`."""
        try:
            return self.special_ids[name]
        except KeyError:
            raise KeyError(f"{name!r} is not a special token; they are {SPECIAL_TOKENS}") from None

    def encode(self, text: str) -> list[int]:
        """Plain text -> ids. Never yields a special token."""
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, special tokens rendered by name and set off by spaces."""
        parts: list[str] = []
        run: list[int] = []
        for i in ids:
            i = int(i)
            if i in self.special_names:
                if run:
                    parts.append(self.sp.decode(run))
                    run = []
                parts.append(self.special_names[i])
            elif i not in (PAD_ID, BOS_ID, EOS_ID):
                run.append(i)
        if run:
            parts.append(self.sp.decode(run))
        return " ".join(p.strip() for p in parts if p.strip()) if len(parts) > 1 else "".join(parts)

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    def byte_value(self, i: int) -> int | None:
        """The byte a byte piece ("<0x2A>") stands for; None for any other piece."""
        return int(self.piece(i)[3:5], 16) if self.sp.is_byte(int(i)) else None


def _lines(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        for line in text.splitlines():
            if line.strip():
                yield line


def _spell(proto: bytes, words: Iterable[str]) -> bytes:
    """The model with every piece that is one of `words` (of 2+ characters) alone, with or without
    its leading space, marked unused: the encoder then splits such a word into smaller pieces
    wherever it stands alone. For words a training corpus names often but a held-out one has
    never seen (chemical symbols: a training element's "Fe" would be one piece, a held-out "Hf"
    is "H" "f"), so that the model learns to copy them piece by piece as it must copy new ones."""
    words = {w for w in words if len(w) > 1}
    if not words:
        return proto
    m = sentencepiece_model_pb2.ModelProto()
    m.ParseFromString(proto)
    for p in m.pieces:
        if p.type == p.NORMAL and p.piece.removeprefix("▁") in words:
            p.type = p.UNUSED
    return m.SerializeToString()
