"""A terminal chat client for the LaMDA HTTP API.

    python -m serve_apps.client [--url http://127.0.0.1:8000] [--model lamda-everest] [--trace]

Type a message and press Enter. Commands: /trace (toggle the trace), /new (a new conversation),
/models (list roles), /quit. The API key comes from --api-key or LAMDA_API_KEY.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request


class Client:
    def __init__(self, url: str, api_key: str | None = None, timeout: float = 120.0):
        self.url, self.api_key, self.timeout = url.rstrip("/"), api_key, timeout

    def _request(self, path: str, body: dict | None = None) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                return json.loads(resp.read())
        except urllib.error.HTTPError as e:
            try:
                message = json.loads(e.read())["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = e.reason
            raise RuntimeError(f"HTTP {e.code}: {message}") from None

    def models(self) -> list[str]:
        return [m["id"] for m in self._request("/v1/models")["data"]]

    def chat(self, message: str, model: str, conversation_id: str | None, trace: bool) -> dict:
        body = {"message": message, "model": model, "trace": trace}
        if conversation_id:
            body["conversation_id"] = conversation_id
        return self._request("/chat", body)


def format_trace(trace: dict) -> str:
    lines = []
    for s in trace["candidates"][:5]:
        mark = "x" if s["filtered"] else " "
        lines.append(f"  [{mark}] {s['quality']:.2f} q  {s['safety']:.2f} safe  {s['text'][:70]}")
    hidden = len(trace["candidates"]) - 5
    if hidden > 0:
        lines.append(f"  ... {hidden} more candidates")
    for call in trace["tool_calls"]:
        results = [r for c in call["calls"] for r in c["results"]]
        lines.append(f"  TS, {call['query']} -> {results[:2]}")
    if trace["citations"]:
        lines.append(f"  cited: {', '.join(trace['citations'])}")
    if trace["fallback"]:
        lines.append("  (every candidate was unsafe: fallback reply)")
    return "\n".join(lines)


def read_lines():
    """Lines typed at a prompt, or piped in; ends at EOF (Ctrl-D)."""
    if not sys.stdin.isatty():
        yield from sys.stdin
        return
    while True:
        try:
            yield input("you> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8000")
    p.add_argument("--model", default="lamda", help="role: lamda, lamda-everest, lamda-music, ...")
    p.add_argument("--trace", action="store_true", help="show candidates, scores and tool calls")
    p.add_argument("--api-key", default=os.environ.get("LAMDA_API_KEY"))
    a = p.parse_args(argv)
    client, conversation, trace = Client(a.url, a.api_key), None, a.trace
    print(f"Chatting with {a.model} at {a.url}. /trace, /new, /models, /quit")
    for line in read_lines():
        line = line.strip()
        if not line:
            continue
        if line == "/quit":
            break
        if line == "/trace":
            trace = not trace
            print(f"trace {'on' if trace else 'off'}")
            continue
        if line == "/new":
            conversation = None
            print("new conversation")
            continue
        try:
            if line == "/models":
                print(", ".join(client.models()))
                continue
            r = client.chat(line, a.model, conversation, trace)
        except (RuntimeError, OSError) as e:
            print(f"error: {e}")
            continue
        conversation = r["conversation_id"]
        print(f"lamda> {r['reply']}")
        if trace and "trace" in r:
            print(format_trace(r["trace"]))


if __name__ == "__main__":
    main()
