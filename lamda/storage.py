"""Local paths and s3:// URIs for exports and data, the same URI syntax Ray and pyarrow use:

    s3://bucket/prefix?endpoint_override=127.0.0.1:9000&scheme=http

The query parameters point at an S3-compatible store; without them boto3's usual configuration
applies (AWS_ENDPOINT_URL, credentials, region). Uses boto3 only: no Ray.
"""

from __future__ import annotations

import os
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


def upload_dir(local: str | os.PathLike, uri: str, last: tuple[str, ...] = ()) -> None:
    """Upload every file under `local` to the s3:// `uri` prefix; the files named in `last` go
    after all others (a reader that waits for them sees a complete upload)."""
    loc = S3Location.parse(uri)
    s3 = loc.client()
    files = sorted(p for p in Path(local).rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name in last)
    for p in files:
        s3.upload_file(str(p), loc.bucket, loc.child(p.relative_to(local).as_posix()))


def download_dir(uri: str, local: str | os.PathLike) -> Path:
    """Download every object under the s3:// `uri` prefix into `local`."""
    loc = S3Location.parse(uri)
    s3 = loc.client()
    local = Path(local)
    prefix = loc.key + "/" if loc.key else ""
    found = False
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=loc.bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            rel = obj["Key"][len(prefix):]
            if not rel or rel.endswith("/"):
                continue
            dest = local / rel
            if local.resolve() not in dest.resolve().parents:
                raise ValueError(f"refusing to write outside {local}: {obj['Key']!r}")
            dest.parent.mkdir(parents=True, exist_ok=True)
            s3.download_file(loc.bucket, obj["Key"], str(dest))
            found = True
    if not found:
        raise FileNotFoundError(f"nothing found under {uri}")
    return local


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
