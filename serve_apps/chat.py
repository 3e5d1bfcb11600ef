"""The Chat ingress: the HTTP API in front of the Sampler, Ranker and Toolset deployments.

Per turn: the role's pre-conditioning + the conversation -> Sampler (candidates) -> Ranker (safety
filter, 3S+Sp+I) -> the research loop (Sampler's research task <-> Toolset) -> reply. The turn is
lamda.chat.chat_turn, run in a worker thread with blocking calls to the DeploymentHandles (so the
same orchestration serves in-process use and Serve; the event loop never blocks).
"""


import asyncio
import dataclasses
import json
import os
import time
import uuid

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray.serve.metrics import Counter, Histogram

from lamda.chat import Answer, ChatConfig, chat_turn
from lamda.conversations import ConversationStore
from lamda.data import Turn
from lamda.rank import Ranked, Scored
from lamda.roles import load_roles
from serve_apps.api import MAX_BODY_BYTES, ChatCompletionRequest, ChatRequest, error

CHAT_SETTINGS = ("research", "max_iterations", "research_candidates", "research_temperature")
app = FastAPI(title="LaMDA on Ray", version="0.1.0",
              description="LaMDA-style dialog: sample-and-rank, safety filter, research loop.")


class LimitBody:
    """ASGI middleware: 413 for bodies over MAX_BODY_BYTES (by header or as they stream in)."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > MAX_BODY_BYTES):
            return await error(413, f"request body over {MAX_BODY_BYTES} bytes",
                               code="body_too_large")(scope, receive, send)
        seen = 0

        async def limited():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > MAX_BODY_BYTES:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, limited, send)
        except BodyTooLarge:
            await error(413, f"request body over {MAX_BODY_BYTES} bytes",
                        code="body_too_large")(scope, receive, send)


class BodyTooLarge(Exception):
    pass


app.add_middleware(LimitBody)


@app.middleware("http")
async def authenticate(request: Request, call_next):
    key = os.environ.get("LAMDA_API_KEY")
    if key and request.url.path not in ("/healthz", "/docs", "/openapi.json"):
        if request.headers.get("authorization", "") != f"Bearer {key}":
            return error(401, "missing or wrong API key (Authorization: Bearer ...)",
                         "authentication_error", "invalid_api_key")
    return await call_next(request)


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException):
    return error(exc.status_code, str(exc.detail))


@app.exception_handler(RequestValidationError)
async def invalid_request(request: Request, exc: RequestValidationError):
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    return error(422, f"{where + ': ' if where else ''}{first.get('msg', 'invalid request')}",
                 code="invalid_request")


class Metrics:
    """Custom metrics, exported by Ray next to Serve's own (prefix ray_, counters end in _total)."""

    def __init__(self):
        self.requests = Counter("lamda_requests", "chat requests by route and HTTP status",
                                tag_keys=("route", "status"))
        self.latency = Histogram("lamda_turn_latency_seconds", "time to answer one turn",
                                 boundaries=[0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60],
                                 tag_keys=("route",))
        self.candidates = Counter("lamda_candidates", "candidates generated, by outcome",
                                  tag_keys=("outcome",))
        self.fallbacks = Counter("lamda_safety_fallbacks", "turns where every candidate was unsafe")
        self.tool_calls = Counter("lamda_tool_calls", "tool calls by tool and outcome",
                                  tag_keys=("tool", "outcome"))
        self.research_iterations = Counter("lamda_research_iterations", "toolset queries made")
        self.flops = Counter("lamda_flops_served", "model FLOPs spent answering")
        self.energy = Counter("lamda_energy_kwh_served", "estimated energy spent answering (kWh)")

    def turn(self, answer: Answer, energy_kwh: float) -> None:
        for s in answer.ranked.candidates:
            self.candidates.inc(1, {"outcome": "filtered_unsafe" if s.filtered else "kept"})
        if answer.fallback:
            self.fallbacks.inc()
        positive(self.research_iterations, len(answer.research.steps) if answer.research else 0)
        positive(self.flops, answer.flops)
        positive(self.energy, energy_kwh)


def positive(counter: Counter, value: float) -> None:
    """Ray counters only take positive increments."""
    if value > 0:
        counter.inc(value)


def ranked_from_dict(d: dict) -> Ranked:
    return Ranked(d["reply"], d["fallback"], Scored(**d["best"]) if d["best"] else None,
                  [Scored(**s) for s in d["candidates"]])


class DownstreamError(Exception):
    """A deployment the turn needs failed (e.g. its replica died); the client may retry."""


def sse_chunks(cid: str, created: int, model: str, reply: str, usage: dict):
    """The reply as chat.completion.chunk events: role, the words, the stop, then [DONE]."""

    def event(delta: dict, finish=None, **extra) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}
        return f"data: {json.dumps(chunk)}\n\n"

    yield event({"role": "assistant", "content": ""})
    words = reply.split(" ")
    for i, w in enumerate(words):
        yield event({"content": w if i == 0 else " " + w})
    yield event({}, "stop", usage=usage)
    yield "data: [DONE]\n\n"


@serve.deployment
@serve.ingress(app)
class Chat:
    def __init__(self, sampler, ranker, toolset, conversations: str = "runs/serve/conversations.sqlite",
                 roles_dir: str | None = None, api_key: str | None = None, call_timeout_s: float = 60.0):
        self.sampler, self.ranker, self.toolset = sampler, ranker, toolset
        self.store = ConversationStore(conversations)
        self.roles = load_roles(roles_dir)
        if api_key:
            os.environ["LAMDA_API_KEY"] = api_key
        self.cfg = ChatConfig()
        self.call_timeout_s = call_timeout_s
        self.metrics = Metrics()

    def reconfigure(self, config: dict) -> None:
        """user_config: research (bool), max_iterations, research_candidates,
        research_temperature (unknown keys are refused)."""
        unknown = set(config) - set(CHAT_SETTINGS)
        if unknown:
            raise ValueError(f"unknown Chat settings in user_config: {sorted(unknown)}")
        self.cfg = dataclasses.replace(ChatConfig(), **config)

    # -- one turn ---------------------------------------------------------------------------

    def _call(self, response):
        try:
            return response.result(timeout_s=self.call_timeout_s)
        except Exception as e:  # a dead replica, a timeout, an error inside the deployment
            raise DownstreamError(f"{type(e).__name__}: {str(e)[:200]}") from e

    def _turn(self, context: list[Turn], session: str) -> tuple[Answer, dict]:
        """Runs in a worker thread: blocking handle calls are fine here."""
        spent = {"energy_kwh": 0.0, "tool_calls": [], "sampler_batch": 0}
        ctx = [t.__dict__ for t in context]

        def respond(_):
            s = self._call(self.sampler.generate.remote(ctx))
            r = self._call(self.ranker.rank.remote(ctx, s["candidates"]))
            spent["energy_kwh"] += s["energy_kwh"] + r["energy_kwh"]
            spent["sampler_batch"] = s["batch"]
            return ranked_from_dict(r["ranked"]), s["flops"] + r["flops"], {**s["tokens"], **r["tokens"]}

        def research(_, draft, steps):
            out = self._call(self.sampler.research.remote(
                ctx, draft, [{"query": s.query, "results": list(s.results)} for s in steps],
                self.cfg.research_candidates, self.cfg.research_temperature))
            spent["energy_kwh"] += out["energy_kwh"]
            return out["output"], out["flops"]

        def check(_, reply):  # the research loop's reply passes the safety filter too
            r = self._call(self.ranker.rank_reply.remote(ctx, reply))
            spent["energy_kwh"] += r["energy_kwh"]
            return ranked_from_dict(r["ranked"]), r["flops"]

        def toolset(query):
            calls = self._call(self.toolset.run.remote(query, session))
            for c in calls:
                outcome = "error" if c["error"] else ("results" if c["results"] else "empty")
                self.metrics.tool_calls.inc(1, {"tool": c["tool"], "outcome": outcome})
            spent["tool_calls"].append({"query": query, "calls": calls})
            return [r for c in calls for r in c["results"]]

        return chat_turn(context, respond, research, toolset, self.cfg, check), spent

    async def _answer(self, route: str, model: str, conversation: list[Turn], session: str):
        """(answer, spent) or an error response."""
        role = self.roles.get(model)
        if role is None:
            return None, error(404, f"unknown model {model!r}; GET /v1/models lists them",
                               code="model_not_found")
        t0 = time.perf_counter()
        try:
            answer, spent = await asyncio.to_thread(self._turn, role.context(conversation), session)
        except DownstreamError as e:
            self.metrics.requests.inc(1, {"route": route, "status": "503"})
            return None, error(503, f"the model is unavailable, retry shortly ({e})",
                               "server_error", "unavailable")
        self.metrics.latency.observe(time.perf_counter() - t0, {"route": route})
        self.metrics.turn(answer, spent["energy_kwh"])
        self.metrics.requests.inc(1, {"route": route, "status": "200"})
        return (answer, spent), None

    # -- routes -----------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": r.model, "object": "model", "created": 0, "owned_by": "lamda-on-ray",
             "description": r.description} for r in self.roles.values()]}

    @app.post("/chat")
    async def chat(self, req: ChatRequest):
        """Native API: the reply plus the trace of how it was chosen."""
        cid = req.conversation_id or ConversationStore.new_id()
        history = self.store.history(cid)
        user = Turn("user", req.message)
        result, err = await self._answer("chat", req.model, [*history, user], cid)
        if err:
            return err
        answer, spent = result
        self.store.append(cid, [user, Turn("lamda", answer.reply)])
        body = {"conversation_id": cid, "model": req.model, "reply": answer.reply,
                "usage": answer.tokens, "flops": answer.flops, "energy_kwh": spent["energy_kwh"]}
        if req.trace:
            body["trace"] = {
                "candidates": [s.__dict__ for s in answer.ranked.candidates],
                "filtered": [{"text": s.text, "reason": s.filtered}
                             for s in answer.ranked.candidates if s.filtered],
                "fallback": answer.fallback,
                "draft": answer.ranked.reply,
                "research": answer.research.to_dict() if answer.research else None,
                "tool_calls": spent["tool_calls"],
                "citations": answer.research.citations if answer.research else [],
                "sampler_batch": spent["sampler_batch"],
            }
        return body

    @app.post("/v1/chat/completions")
    async def completions(self, req: ChatCompletionRequest):
        """OpenAI-compatible chat completions (n=1; stream as server-sent events)."""
        conversation = [Turn("user" if m.role == "user" else "lamda", m.content)
                        for m in req.messages if m.role != "system" and m.content.strip()]
        if not conversation or conversation[-1].speaker != "user":
            return error(422, "messages must end with a non-empty user message",
                         code="invalid_request")
        session = req.user or uuid.uuid4().hex
        result, err = await self._answer("completions", req.model, conversation, session)
        if err:
            return err
        answer, _ = result
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        usage = {"prompt_tokens": answer.tokens.get("prompt", 0),
                 "completion_tokens": answer.tokens.get("generated", 0)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if not req.stream:
            return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": answer.reply}}],
                    "usage": usage}
        return StreamingResponse(sse_chunks(cid, created, req.model, answer.reply, usage),
                                 media_type="text/event-stream")
