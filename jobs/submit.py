"""Submit a job of this project to a Ray cluster and follow its logs.

    python -m jobs.submit [--address http://HEAD:8265] [--env KEY=VALUE ...] pretrain --run-name pt ...

The same as `ray job submit --working-dir . -- python -m jobs.<job> ...`, plus: Ray's token auth
(Ray >= 2.59 enables it on clusters it starts) is switched on when a token is available (--token,
RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token); the project directory is the working
dir (runs/ and .venv/ left out); the logs are followed until the job ends, and the exit status
says how it ended.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JOBS = sorted(p.stem for p in Path(__file__).parent.glob("*.py")
              if p.stem not in ("__init__", "common", "submit"))
EXCLUDES = [".venv", "runs", ".git", "**/__pycache__", ".pytest_cache", "*.egg-info"]


def enable_token_auth(token: str | None) -> bool:
    """RAY_AUTH_MODE=token when a token is at hand (the client then sends it)."""
    if token:
        os.environ["RAY_AUTH_TOKEN"] = token
    path = os.environ.get("RAY_AUTH_TOKEN_PATH") or str(Path.home() / ".ray" / "auth_token")
    if os.environ.get("RAY_AUTH_TOKEN") or Path(path).is_file():
        os.environ.setdefault("RAY_AUTH_MODE", "token")
        return True
    return False


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=os.environ.get("RAY_ADDRESS", "http://127.0.0.1:8265"),
                   help="the cluster's dashboard address")
    p.add_argument("--token", default=None, help="Ray auth token (default: found as Ray finds it)")
    p.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                   help="environment variable for the job (repeatable)")
    p.add_argument("--working-dir", default=str(ROOT), help="uploaded as the job's working dir")
    p.add_argument("--no-follow", action="store_true", help="print the job id and return")
    p.add_argument("job", choices=JOBS, help="the jobs.<name> module to run")
    p.add_argument("args", nargs=argparse.REMAINDER, help="the job's own flags")
    a = p.parse_args(argv)
    env = dict(kv.split("=", 1) for kv in a.env)
    enable_token_auth(a.token)

    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(a.address)
    entrypoint = " ".join(["python", "-m", f"jobs.{a.job}", *(shlex.quote(x) for x in a.args)])
    job_id = client.submit_job(entrypoint=entrypoint, runtime_env={
        "working_dir": a.working_dir, "excludes": EXCLUDES, "env_vars": env})
    print(f"submitted {job_id}: {entrypoint}", flush=True)
    if a.no_follow:
        return 0

    async def follow():
        async for lines in client.tail_job_logs(job_id):
            print(lines, end="", flush=True)

    asyncio.run(follow())
    status = client.get_job_status(job_id)
    print(f"job {job_id}: {status}", flush=True)
    return 0 if status == JobStatus.SUCCEEDED else 1


if __name__ == "__main__":
    sys.exit(main())
