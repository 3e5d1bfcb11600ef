"""Each rank reads its own windows of a tokenised corpus: every row once per epoch across the
ranks, an order fixed by the seed and the epoch, one window in memory, and an exact resume from
three integers."""

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lamda import token_stream as TS
from lamda.storage import filesystem

SEQ = 7  # rows of 8 tokens


@pytest.fixture
def corpus(tmp_path):
    """Two files of records 0..59 (record i: 12 tokens i*100 + 0..11), row groups of 5 records."""
    (tmp_path / "dialog").mkdir()
    for f, ids in enumerate((range(0, 30), range(30, 60))):
        table = pa.table({"ids": pa.array([[i * 100 + t for t in range(12)] for i in ids],
                                          type=pa.list_(pa.uint16()))})
        pq.write_table(table, tmp_path / "dialog" / f"{f}.parquet", row_group_size=5)
    return str(tmp_path)


def epoch_rows(corpus, world, epoch=0, **kw):
    """Each rank's rows of one epoch."""
    out = []
    for rank in range(world):
        s = TS.SourceStream(corpus, "dialog", SEQ, rank, world, seed=3, **kw)
        s.position = [epoch, 0, 0]
        mine = TS.dealt(s.windows, 3, epoch, rank, world)
        n = sum(len(TS.window_rows(s.fs, s.windows[i], SEQ)) for i in mine)
        it = iter(s)
        out.append(np.stack([next(it) for _ in range(n)]))
        next(it)
        assert s.position == [epoch + 1, 0, 1]  # the epoch had exactly n rows
    return out


def test_windows_are_row_groups_and_every_row_is_read_once_per_epoch(corpus):
    ws = TS.windows(corpus, "dialog")
    assert len(ws) == 12 and {w.records for w in ws} == {5}
    whole = np.concatenate([TS.window_rows(filesystem(corpus)[0], w, SEQ) for w in ws])
    assert whole.shape == (12 * 7, 8)  # 60 tokens per window: 7 rows, 4 tokens dropped
    for world in (1, 2, 3):
        per_rank = epoch_rows(corpus, world)
        got = np.concatenate(per_rank)
        assert sorted(map(tuple, got)) == sorted(map(tuple, whole)), world
    a, b = epoch_rows(corpus, 1, epoch=0)[0], epoch_rows(corpus, 1, epoch=1)[0]
    assert not np.array_equal(a, b) and sorted(map(tuple, a)) == sorted(map(tuple, b))


def test_a_stream_resumes_exactly_from_its_position(corpus):
    s = TS.SourceStream(corpus, "dialog", SEQ, 1, 2, seed=0)
    it = iter(s)
    first = [next(it) for _ in range(50)]  # into the second epoch (42 rows per rank and epoch)
    saved = list(s.position)
    rest = [next(it) for _ in range(30)]
    again = TS.SourceStream(corpus, "dialog", SEQ, 1, 2, seed=0)
    again.position = saved
    it2 = iter(again)
    assert all(np.array_equal(x, next(it2)) for x in rest)
    assert saved[0] == 1 and len(first) == 50


def test_the_last_window_is_held_out(corpus):
    held = TS.held_out_rows(corpus, "dialog", SEQ, 3)
    assert held.shape == (3, 8) and held[0, 0] // 100 >= 55  # records 55..59
    trained = np.concatenate(epoch_rows(corpus, 2, exclude=1))
    assert len(trained) == 11 * 7 and (trained // 100 < 55).all()


def test_clear_errors(corpus, tmp_path):
    with pytest.raises(FileNotFoundError, match="jobs.tokenize"):
        TS.read_meta(str(tmp_path / "nope"))
    with pytest.raises(ValueError, match="windows"):
        TS.SourceStream(corpus, "dialog", SEQ, 0, 13)
    with pytest.raises(ValueError, match="no row"):
        next(iter(TS.SourceStream(corpus, "dialog", 100, 0, 2)))
