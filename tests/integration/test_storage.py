"""Artifacts named by s3:// URIs (on moto's S3 server) are fetched once per node into a local
cache, checked and renamed into place, then opened locally: a model export and a retrieval index."""

import concurrent.futures as cf
import json

import boto3
import pytest

from lamda.checkpoint import load_export, save_export
from lamda.config import ModelConfig
from lamda.data import Document
from lamda.model import build_model
from lamda.storage import cached, upload_dir
from lamda.tools.retrieval import Retriever

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def bucket(s3_server):
    s3 = boto3.client("s3", endpoint_url=f"http://{s3_server}")
    s3.create_bucket(Bucket="art")
    return s3, f"?endpoint_override={s3_server}&scheme=http"


def test_an_object_is_fetched_once_and_again_when_it_changes(bucket, tmp_path):
    s3, q = bucket
    s3.put_object(Bucket="art", Key="a/index.sqlite", Body=b"one")
    uri = f"s3://art/a/index.sqlite{q}"
    with cf.ThreadPoolExecutor(4) as pool:  # replicas of one node starting together
        paths = set(pool.map(lambda _: cached(uri, tmp_path), range(4)))
    (path,) = paths
    assert path.name == "index.sqlite" and path.read_bytes() == b"one"
    path.write_bytes(b"local")  # a second call opens the copy: no download
    assert cached(uri, tmp_path) == path and path.read_bytes() == b"local"
    s3.put_object(Bucket="art", Key="a/index.sqlite", Body=b"two!")  # a new version
    new = cached(uri, tmp_path)
    assert new != path and new.read_bytes() == b"two!"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no partial copies


def test_missing_artifacts_are_clear_errors(bucket, tmp_path):
    _, q = bucket
    with pytest.raises(FileNotFoundError, match="nothing found"):
        cached(f"s3://art/nope{q}", tmp_path)
    with pytest.raises(FileNotFoundError, match="cannot list"):
        cached(f"s3://no-such-bucket/x{q}", tmp_path)


def test_an_export_and_an_index_open_from_s3(bucket, tmp_path, tok, monkeypatch):
    s3, q = bucket
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size))
    save_export(tmp_path / "export", model.state_dict(), model.cfg, tok)
    upload_dir(tmp_path / "export", f"s3://art/models/m1{q}")
    index = Retriever(tmp_path / "index.sqlite")
    index.add([Document("e", "Everest", "Mount Everest is 8,849 m high.", "https://x/everest")])
    s3.upload_file(str(tmp_path / "index.sqlite"), "art", "indexes/docs.sqlite")

    cache = tmp_path / "cache"
    monkeypatch.setenv("LAMDA_CACHE_DIR", str(cache))
    loaded, _ = load_export(f"s3://art/models/m1{q}")
    load_export(f"s3://art/models/m1{q}")
    found = Retriever(cached(f"s3://art/indexes/docs.sqlite{q}")).search("how high is everest")
    for a, b in zip(loaded.state_dict().values(), model.state_dict().values()):
        assert (a == b).all()
    assert len(list((cache / "artifacts").glob("*/model.safetensors"))) == 1  # fetched once
    assert found and found[0].endswith("https://x/everest")


def test_ratings_export_to_s3(bucket, tmp_path):
    """jobs.export_ratings writes its labelled JSONL to s3:// in one PUT."""
    from jobs import export_ratings
    from lamda.conversations import ConversationStore
    from lamda.data import Turn, parse_labelled
    from lamda.ratings import REPLY, Rating
    s3, q = bucket
    store = ConversationStore(tmp_path / "c.sqlite")
    store.append("c1", [Turn("user", "hi"), Turn("lamda", "hello")], {"candidates": []})
    store.add_rating(Rating("c1", 1, REPLY, "ann", "", "sensible", True))
    store.close()
    export_ratings.main(["--conversations", str(tmp_path / "c.sqlite"),
                         "--out", f"s3://art/labelled/ratings.jsonl{q}"])
    body = s3.get_object(Bucket="art", Key="labelled/ratings.jsonl")["Body"].read().decode()
    (rec,) = [parse_labelled(json.loads(x)) for x in body.splitlines()]
    assert rec.response == "hello" and rec.ratings["sensible"] == (1,)


def test_a_tokenised_corpus_is_read_from_s3(bucket, tmp_path):
    """Training workers read a tokenised corpus's windows straight from s3://."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    from lamda import token_stream as TS
    s3, q = bucket
    ids = [[i * 100 + t for t in range(12)] for i in range(20)]
    pq.write_table(pa.table({"ids": pa.array(ids, type=pa.list_(pa.uint16()))}),
                   tmp_path / "0.parquet", row_group_size=5)
    s3.upload_file(str(tmp_path / "0.parquet"), "art", "tokens/dialog/0.parquet")
    s3.put_object(Bucket="art", Key="tokens/tokens.json", Body=json.dumps(
        {"dtype": "uint16", "vocab_size": 4096, "sources": {"dialog": {"records": 20}}}).encode())
    uri = f"s3://art/tokens{q}"
    assert TS.read_meta(uri)["sources"] == {"dialog": {"records": 20}}
    (tmp_path / "local" / "dialog").mkdir(parents=True)
    (tmp_path / "0.parquet").rename(tmp_path / "local" / "dialog" / "0.parquet")
    remote, local = (iter(TS.SourceStream(u, "dialog", 7, 0, 1)) for u in (uri, str(tmp_path / "local")))
    got, want = (np.stack([next(it) for _ in range(28)]) for it in (remote, local))  # one epoch
    assert np.array_equal(got, want)  # the same rows in the same order as from local disk
    assert sorted(set(got[:, 0] // 100)) == list(range(20))  # every record's first row
