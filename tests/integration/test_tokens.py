"""A tokenised corpus (jobs.tokenize) read by the Ray Train workers themselves: tokenised once,
mixed by weights, nothing materialised, an evaluation loss on held-out windows, exact resume; on a
corpus 100 times the bundled one."""

import json
import math

import pyarrow.parquet as pq
import pytest

from bench.token_stream import write_corpus
from jobs import tokenize
from lamda import data as D
from lamda import ray_train as R
from lamda.data import SAMPLE_DIR
from tests.integration.conftest import KillWorker

pytestmark = pytest.mark.slow

STEPS, SEQ, COPIES = 30, 64, 100


@pytest.fixture(scope="module")
def corpus(ray_cluster, tmp_path_factory, tok):
    """The bundled documents and dialogs 100 times over (each copy numbered), tokenised."""
    d = tmp_path_factory.mktemp("corpus")
    tok.save(d / "tokenizer.model")
    paths = write_corpus(d, COPIES)
    meta = tokenize.main(["--tokenizer", str(d / "tokenizer.model"), "--out", str(d / "tokens"),
                          "--documents", paths["documents"], "--dialogs", paths["dialogs"],
                          "--rows-per-file", "500"])
    return d, meta


def test_the_corpus_is_tokenised_once_into_files(corpus, tok):
    d, meta = corpus
    docs = list(D.read_jsonl(d / "documents.jsonl", "document"))
    assert meta["dtype"] == "uint16" and meta["vocab_size"] == tok.vocab_size
    assert meta["sources"]["document"] == {
        "records": len(docs), "tokens": sum(len(D.document_ids(tok, r)) for r in docs)}
    assert meta["sources"]["dialog"]["records"] == 100 * len(list(D.read_jsonl(
        SAMPLE_DIR / "dialogs.jsonl", "dialog")))
    files = list((d / "tokens" / "document").glob("*.parquet"))
    assert len(files) >= 8
    # row groups (the windows the workers read) of at most the records asked per file
    groups = [pq.ParquetFile(f).metadata for f in files]
    assert max(m.row_group(g).num_rows for m in groups for g in range(m.num_row_groups)) <= 500
    assert json.loads((d / "tokens" / "tokens.json").read_text()) == meta


def mixed_run(tok, corpus_dir, storage, name, marker=None):
    spec = R.RunSpec(model=R.ModelConfig.from_name("debug", vocab_size=tok.vocab_size),
                     train=R.TrainConfig(steps=STEPS, batch_size=8, seq_len=SEQ, lr=3e-3,
                                         warmup_steps=3, log_every=5),
                     tokenizer=tok, checkpoint_every=10, eval_every=10,
                     tokens=str(corpus_dir / "tokens"), mixture={"document": 0.5, "dialog": 0.5},
                     after_step=KillWorker(15, str(marker)) if marker else None)
    return R.fit(spec, R.ClusterSpec(workers=2, storage_path=storage, run_name=name,
                                     max_failures=1))


def test_a_streamed_mixture_trains_and_resumes_exactly(corpus, tok, tmp_path):
    d, _ = corpus
    whole = mixed_run(tok, d, str(tmp_path / "runs"), "mixed")
    resumed = mixed_run(tok, d, str(tmp_path / "runs"), "mixed-crash", tmp_path / "crashed")
    assert resumed.metrics["restarts"] == [10] and whole.metrics["step"] == STEPS
    losses = {int(r["step"]): r["loss"] for _, r in whole.metrics_dataframe.iterrows()}
    again = {int(r["step"]): r["loss"] for _, r in resumed.metrics_dataframe.iterrows()}
    assert [again[s] for s in (20, 30)] == pytest.approx([losses[s] for s in (20, 30)], rel=1e-5)
    assert losses[30] < losses[20] < math.log(tok.vocab_size)
    # an evaluation loss at every checkpoint (the kept ones: 20 and 30), on held-out windows
    evals = {int(r["step"]): r["eval_loss"] for _, r in whole.metrics_dataframe.iterrows()}
    assert evals[30] < evals[20] < math.log(tok.vocab_size)
    # each worker read both sources, within their first epoch: [epoch, window, row]
    positions = whole.metrics["sources"]
    assert set(positions) == {"document", "dialog"} and all(p[0] == 0 for p in positions.values())
    assert all(p[1] > 0 or p[2] > 0 for p in positions.values())
