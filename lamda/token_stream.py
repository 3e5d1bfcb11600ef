"""A tokenised corpus (jobs.tokenize: per source, Parquet files of token ids, one record per
document or dialog) read as training rows by each rank itself.

The unit is a window: one Parquet row group of at most `WINDOW_RECORDS` records (jobs.tokenize
writes them that size). Each epoch, a source's windows are put in an order fixed by (seed,
epoch) and dealt to the ranks in turn; a rank reads its windows one at a time, concatenates the
window's records, cuts them into rows of seq_len + 1 tokens (the tail shorter than a row is
dropped) and yields them in an order fixed by (seed, epoch, window). So memory holds one window,
whatever the corpus size, nothing is shuffled globally, and a rank's position is three integers
(epoch, window, row): resuming reads only the window it stopped in.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.fs
import pyarrow.parquet as pq

from lamda.storage import filesystem

META = "tokens.json"  # written last by jobs.tokenize: dtype, vocabulary, counts per source
WINDOW_RECORDS = 1024  # records per row group written by jobs.tokenize


@dataclass(frozen=True)
class Window:
    file: str  # a Parquet file of one source (path within `filesystem`)
    row_group: int
    records: int


def read_meta(path: str) -> dict:
    fs, root = filesystem(path)
    try:
        with fs.open_input_stream(f"{root.rstrip('/')}/{META}") as f:
            return json.loads(f.read())
    except (FileNotFoundError, OSError) as e:
        raise FileNotFoundError(f"{path} is not a tokenised corpus (no {META}; run "
                                f"python -m jobs.tokenize)") from e


def windows(path: str, source: str) -> list[Window]:
    """Every row group of the source's files, in file order (the files' footers only)."""
    fs, root = filesystem(path)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(f"{root.rstrip('/')}/{source}"))
    files = sorted(i.path for i in infos if i.path.endswith(".parquet"))
    out = []
    for f in files:
        meta = pq.ParquetFile(f, filesystem=fs).metadata
        out += [Window(f, g, meta.row_group(g).num_rows) for g in range(meta.num_row_groups)
                if meta.row_group(g).num_rows]
    return out


def dealt(ws: list[Window], seed: int, epoch: int, rank: int, world: int) -> list[int]:
    """Indices of the windows rank `rank` reads in `epoch`: all windows in an order fixed by
    (seed, epoch), dealt to the ranks in turn."""
    order = np.random.default_rng([seed, epoch]).permutation(len(ws))
    return [int(i) for i in order[rank::world]]


class SourceStream:
    """One source's rows for one rank, epoch after epoch. `position` = [epoch, window (among
    this rank's), row (within that window)] of the next row; set it to resume."""

    def __init__(self, path: str, source: str, seq_len: int, rank: int, world: int, seed: int = 0,
                 exclude: int = 0):
        # exclude: the last `exclude` windows are held out (the evaluation's, `held_out_rows`)
        self.fs, _ = filesystem(path)
        self.source, self.seq_len, self.rank, self.world, self.seed = source, seq_len, rank, world, seed
        self.windows = windows(path, source)
        if exclude:
            self.windows = self.windows[:-exclude]
        if len(self.windows) < world:
            raise ValueError(f"{path}/{source} has {len(self.windows)} windows of records for "
                             f"{world} workers: tokenise it with fewer records per window")
        self.position = [0, 0, 0]

    def __iter__(self) -> Iterator[np.ndarray]:
        while True:
            epoch, k, r = self.position
            mine = dealt(self.windows, self.seed, epoch, self.rank, self.world)
            fresh, yielded = self.position == [epoch, 0, 0], 0
            for k in range(k, len(mine)):
                rows = window_rows(self.fs, self.windows[mine[k]], self.seq_len)  # (n, seq_len + 1)
                order = np.random.default_rng([self.seed, epoch, mine[k]]).permutation(len(rows))
                for r in range(r, len(rows)):
                    self.position = [epoch, k, r + 1]
                    yielded += 1
                    yield rows[order[r]]
                r = 0
            if fresh and not yielded:
                raise ValueError(f"rank {self.rank}'s windows of {self.source} hold no row of "
                                 f"{self.seq_len + 1} tokens")
            self.position = [epoch + 1, 0, 0]


def window_rows(fs, w: Window, seq_len: int) -> np.ndarray:
    """A window's records concatenated and cut into rows; (n, seq_len + 1) int32."""
    ids = pq.ParquetFile(w.file, filesystem=fs).read_row_group(w.row_group, columns=["ids"])
    flat = ids.column("ids").combine_chunks().flatten().to_numpy().astype(np.int32)
    n = len(flat) // (seq_len + 1)
    return flat[:n * (seq_len + 1)].reshape(n, seq_len + 1)


def held_out_rows(path: str, source: str, seq_len: int, rows: int) -> np.ndarray:
    """The first `rows` rows of the source's last window (SourceStream(exclude=1) never trains
    on it); (<= rows, seq_len + 1) int32, the same on every rank."""
    fs, _ = filesystem(path)
    return window_rows(fs, windows(path, source)[-1], seq_len)[:rows]
