"""Local paths and s3:// URIs for exports and data, the same URI syntax Ray and pyarrow use:

    s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http

The query parameters point at an S3-compatible store; without them boto3's usual configuration
applies (AWS_ENDPOINT_URL, credentials, region). Uses boto3 only: no Ray.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlsplit


def is_s3(uri: str | os.PathLike) -> bool:
    return str(uri).startswith("s3://")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    key: str  # no leading or trailing slash
    endpoint_url: str | None  # e.g. http://127.0.0.1:9000, or None for boto3's default

    @classmethod
    def parse(cls, uri: str) -> "S3Location":
        parts = urlsplit(uri)
        if parts.scheme != "s3" or not parts.netloc:
            raise ValueError(f"not an s3:// URI: {uri!r}")
        q = {k: v[-1] for k, v in parse_qs(parts.query).items()}
        endpoint = q.get("endpoint_override")
        if endpoint and "://" not in endpoint:
            endpoint = f"{q.get('scheme', 'https')}://{endpoint}"
        return cls(parts.netloc, parts.path.strip("/"), endpoint)

    def client(self):
        import boto3
        return boto3.client("s3", endpoint_url=self.endpoint_url)

    def child(self, name: str) -> str:
        return f"{self.key}/{name}" if self.key else name


def join(base: str | os.PathLike, *parts: str) -> str:
    """`base`/part/... for a local path or a URI, keeping a URI's query string at the end."""
    base = str(base)
    if "://" not in base:
        return str(Path(base, *parts))
    head, sep, query = base.partition("?")
    return "/".join([head.rstrip("/"), *parts]) + sep + query


def filesystem(path: str):
    """(pyarrow filesystem, path within it) for a local path or a URI (s3://...), as Ray Data's
    readers and writers take them."""
    import pyarrow.fs
    if "://" in path:
        return pyarrow.fs.FileSystem.from_uri(path)
    return pyarrow.fs.LocalFileSystem(), path


def upload_dir(local: str | os.PathLike, uri: str, last: tuple[str, ...] = ()) -> None:
    """Upload every file under `local` to the s3:// `uri` prefix; the files named in `last` go
    after all others (a reader that waits for them sees a complete upload)."""
    loc = S3Location.parse(uri)
    s3 = loc.client()
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name in last)
    for p in files:
        s3.upload_file(str(p), loc.bucket, loc.child(p.relative_to(local).as_posix()))


def _objects(loc: S3Location, s3) -> list[dict]:
    """The objects under `loc` as {rel, key, size, etag}: the object itself when `loc.key` names
    one (rel = its file name), else every object under the prefix (rel = path below it)."""
    if loc.key:
        try:
            head = s3.head_object(Bucket=loc.bucket, Key=loc.key)
            return [{"rel": Path(loc.key).name, "key": loc.key, "size": head["ContentLength"],
                     "etag": head["ETag"].strip('"')}]
        except Exception as e:  # 404 (a prefix, not an object) and 403 alike: try listing
            if getattr(e, "response", {}).get("Error", {}).get("Code") not in ("404", "NoSuchKey", "403"):
                raise
    prefix = loc.key + "/" if loc.key else ""
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if rel and not rel.endswith("/"):
                found.append({"rel": rel, "key": obj["Key"], "size": obj["Size"],
                              "etag": obj["ETag"].strip('"')})
    return found


def _download(loc: S3Location, s3, objects: list[dict], local: Path) -> None:
    """Download `objects` under `local`, each checked against its listed size (and its MD5 where
    the ETag is one: objects not uploaded in parts)."""
    for obj in objects:
        dest = local / obj["rel"]
        if local.resolve() not in dest.resolve().parents:
            raise ValueError(f"refusing to write outside {local}: {obj['key']!r}")
        dest.parent.mkdir(parents=True, exist_ok=True)
        s3.download_file(loc.bucket, obj["key"], str(dest))
        if dest.stat().st_size != obj["size"]:
            raise OSError(f"s3://{loc.bucket}/{obj['key']}: got {dest.stat().st_size} bytes "
                          f"of {obj['size']}")
        if "-" not in obj["etag"] and _md5(dest) != obj["etag"]:
            raise OSError(f"s3://{loc.bucket}/{obj['key']}: checksum differs from its ETag")


def _md5(path: Path) -> str:
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def download_dir(uri: str, local: str | os.PathLike) -> Path:
    """Download every object under the s3:// `uri` prefix into `local`."""
    loc = S3Location.parse(uri)
    s3 = loc.client()
    objects = [o for o in _objects(loc, s3) if o["key"] != loc.key]
    if not objects:
        raise FileNotFoundError(f"nothing found under {uri}")
    _download(loc, s3, objects, Path(local))
    return Path(local)


def cache_root() -> Path:
    """Where fetched artifacts are kept on this node: $LAMDA_CACHE_DIR, else ~/.cache/lamda."""
    return Path(os.environ.get("LAMDA_CACHE_DIR") or Path.home() / ".cache" / "lamda") / "artifacts"


def cached(uri: str | os.PathLike, root: str | os.PathLike | None = None) -> Path:
    """A local path for `uri`: itself when local; for an s3:// object or prefix (a model export,
    a retrieval index), a copy fetched once per node and version. The copy is named by a digest of
    the listing (keys, sizes, ETags), so a new upload is fetched again; it is downloaded into a
    temporary directory, checked, and renamed into place, under a file lock so that the replicas
    of one node download it once. Returns the file for an object, the directory for a prefix."""
    if not is_s3(uri):
        if not Path(uri).exists():
            raise FileNotFoundError(f"no such file or directory: {uri}")
        return Path(uri)
    loc = S3Location.parse(str(uri))
    s3 = loc.client()
    try:
        objects = _objects(loc, s3)
    except Exception as e:  # botocore's errors: no bucket, no access, no endpoint
        raise FileNotFoundError(f"cannot list {uri}: {e}") from e
    if not objects:
        raise FileNotFoundError(f"nothing found at {uri}")
    single = objects[0]["key"] == loc.key
    listing = json.dumps([loc.endpoint_url, loc.bucket, loc.key, objects], sort_keys=True)
    root = Path(root) if root else cache_root()
    dest = root / hashlib.sha256(listing.encode()).hexdigest()[:24]
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f"{dest.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one download per node; the others wait for it
        if not dest.is_dir():
            tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{dest.name}-"))
            try:
                _download(loc, s3, objects, tmp)
                (tmp / ".source.json").write_text(listing)
                os.rename(tmp, dest)
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
    return dest / objects[0]["rel"] if single else dest


def fetch_file(uri: str | os.PathLike, local_dir: str | os.PathLike) -> Path:
    """A local path for `uri`: itself when local, else a download of the s3:// object."""
    if not is_s3(uri):
        if not Path(uri).is_file():
            raise FileNotFoundError(f"no such file: {uri}")
        return Path(uri)
    loc = S3Location.parse(str(uri))
    dest = Path(local_dir) / Path(loc.key).name
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        loc.client().download_file(loc.bucket, loc.key, str(dest))
    except Exception as e:  # botocore's ClientError (404, 403) and connection errors
        raise FileNotFoundError(f"cannot fetch {uri}: {e}") from e
    return dest
