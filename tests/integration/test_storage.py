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
