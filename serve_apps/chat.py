"""The Chat ingress: the HTTP API in front of the Sampler, Ranker and Toolset deployments.

Per turn: the role's pre-conditioning + the conversation -> Sampler (candidates) -> Ranker (safety
filter, 3S+Sp+I) -> the research loop (Sampler's research task <-> Toolset) -> reply. The turn is
lamda.turn.chat_turn, run in a worker thread with blocking calls to the DeploymentHandles (so the
same orchestration serves in-process use and Serve; the event loop never blocks).
"""


import asyncio
import contextvars
import dataclasses
import hashlib
import hmac
import json
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
from fastapi import FastAPI, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response, StreamingResponse
from ray import serve
from ray.serve.exceptions import RequestCancelledError
from starlette.exceptions import HTTPException as StarletteHTTPException
from ray.serve.metrics import Counter, Gauge, Histogram

from lamda.conversations import ConversationStore, NotFound, StoreUnavailable
from lamda.data import Turn
from lamda.ratings import REPLY, Rating, key_id
from lamda.roles import load_roles
from lamda.turn import Answer, ChatConfig, chat_turn
from serve_apps.api import (ID_PATTERN, MAX_BODY_BYTES, ChatCompletionRequest, ChatRequest,
                            RatingRequest, documented, error)
from serve_apps.deployments import from_user_config
from serve_apps.messages import RankResult, Researched, Sampled

CHAT_SETTINGS = ("research", "max_iterations", "research_candidates", "research_temperature")
# the console: static files (no data in them; its API calls need the key like any client's)
CONSOLE = {"/": ("index.html", "text/html; charset=utf-8"),
           "/console.js": ("console.js", "text/javascript; charset=utf-8"),
           "/console.css": ("console.css", "text/css; charset=utf-8")}
# the console runs only its own script, talks only to this origin, and is never framed
CONSOLE_HEADERS = {"Content-Security-Policy": "default-src 'none'; script-src 'self'; "
                   "style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; "
                   "form-action 'none'; frame-ancestors 'none'",
                   "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"}
PUBLIC_PATHS = ("/healthz", "/readyz", "/docs", "/openapi.json", *CONSOLE)  # no API key needed
DOWNSTREAM = ("Sampler", "Ranker", "Toolset")  # deployments a turn needs
ROUTES = ("/chat", "/v1/chat/completions", "/v1/models", "/ratings", *PUBLIC_PATHS)  # metric labels
log = logging.getLogger("ray.serve")
app = FastAPI(title="LaMDA on Ray", version="0.1.0",
              description="LaMDA-style dialog: sample-and-rank, safety filter, research loop.")
app.state.api_keys = ()


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


def openapi() -> dict:
    """FastAPI's schema plus the API key: a bearer scheme on every route but the public ones."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, description=app.description,
                             routes=app.routes)
        schema.setdefault("components", {})["securitySchemes"] = {"apiKey": {
            "type": "http", "scheme": "bearer", "description": "needed when the app has API keys"}}
        for path, operations in schema["paths"].items():
            for op in operations.values():
                op["security"] = [] if path in PUBLIC_PATHS else [{"apiKey": []}]
        app.openapi_schema = schema
    return app.openapi_schema


app.openapi = openapi


def api_keys(key: str | None = None, keys_file: str | None = None) -> tuple[str, ...]:
    """The accepted API keys: `key`, LAMDA_API_KEY, LAMDA_API_KEYS (comma-separated) and the
    lines of `keys_file` or LAMDA_API_KEYS_FILE (blank lines and # comments skipped). None: open."""
    keys = [key, os.environ.get("LAMDA_API_KEY"), *os.environ.get("LAMDA_API_KEYS", "").split(",")]
    path = keys_file or os.environ.get("LAMDA_API_KEYS_FILE")
    if path:
        keys += [ln.strip() for ln in Path(path).read_text().splitlines()
                 if not ln.strip().startswith("#")]
    return tuple(sorted({k.strip() for k in keys if k and k.strip()}))


def key_matches(given: str, keys: tuple[str, ...]) -> bool:
    """Constant-time comparison against every key (the time does not tell which one, or how
    much of it, matched)."""
    found = False
    for k in keys:
        found |= hmac.compare_digest(given.encode(), k.encode())
    return found


@app.middleware("http")
async def authenticate(request: Request, call_next):
    keys = request.app.state.api_keys
    if keys and request.url.path not in PUBLIC_PATHS:
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not key_matches(given[7:], keys):
            return error(401, "missing or wrong API key (Authorization: Bearer ...)",
                         "authentication_error", "invalid_api_key")
    return await call_next(request)


@app.middleware("http")
async def count(request: Request, call_next):
    """Every answer in lamda_requests_total by route and status (refusals included)."""
    response = await call_next(request)
    metrics = getattr(request.app.state, "metrics", None)
    if metrics is not None:
        path = request.url.path
        if path in ROUTES:
            route = path.strip("/").replace("v1/chat/", "") or "console"
        else:
            route = "conversations" if path.startswith("/conversations/") else "other"
        metrics.requests.inc(1, {"route": route, "status": str(response.status_code)})
    return response


@app.exception_handler(StarletteHTTPException)
async def http_error(request: Request, exc: StarletteHTTPException):
    return error(exc.status_code, str(exc.detail), headers=getattr(exc, "headers", None))


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
        self.stage = Histogram("lamda_stage_seconds", "time per stage of a turn (sample, rank, "
                               "research, tools, check)", tag_keys=("stage",),
                               boundaries=[0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30])
        self.in_flight = Gauge("lamda_turns_in_flight", "turns being answered by this replica")
        self.cancelled = Counter("lamda_turns_cancelled", "turns whose client went away")
        self.tokens = Counter("lamda_tokens", "model tokens by kind (prompt, generated, "
                              "scored; reused: prompt positions taken from the prefix cache)",
                              tag_keys=("kind",))
        self.candidates = Counter("lamda_candidates", "candidates generated, by outcome",
                                  tag_keys=("outcome",))
        self.fallbacks = Counter("lamda_safety_fallbacks", "turns where every candidate was unsafe")
        self.tool_calls = Counter("lamda_tool_calls", "tool calls by tool and outcome",
                                  tag_keys=("tool", "outcome"))
        self.research_iterations = Counter("lamda_research_iterations", "toolset queries made")
        self.flops = Counter("lamda_flops_served", "model FLOPs spent answering")
        self.energy = Counter("lamda_energy_kwh_served", "estimated energy spent answering (kWh)")

    def turn(self, answer: Answer, work: "Work") -> None:
        for s in answer.ranked.candidates:
            self.candidates.inc(1, {"outcome": "filtered_unsafe" if s.filtered else "kept"})
        if answer.fallback:
            self.fallbacks.inc()
        positive(self.research_iterations, len(answer.research.steps) if answer.research else 0)
        positive(self.flops, answer.flops)
        positive(self.energy, work.energy_kwh)
        for kind in ("prompt", "generated", "scored", "reused", "research_reused"):
            positive(self.tokens, work.tokens.get(kind, 0), {"kind": kind})
        for stage, seconds in work.seconds.items():
            self.stage.observe(seconds, {"stage": stage})


def positive(counter: Counter, value: float, tags: dict | None = None) -> None:
    """Ray counters only take positive increments."""
    if value > 0:
        counter.inc(value, tags)


def rating_dict(r: Rating) -> dict:
    return {**dataclasses.asdict(r), "candidate": None if r.candidate == REPLY else r.candidate}


def console_file(path: str) -> Response:
    name, media_type = CONSOLE[path]
    return Response((Path(__file__).parent / "console" / name).read_bytes(), media_type=media_type,
                    headers=CONSOLE_HEADERS)


def unavailable(e: Exception):
    """503 for a part the turn needs that failed (a model replica, the conversation store)."""
    what = "conversation store" if isinstance(e, StoreUnavailable) else "model"
    log.warning("503: the %s is unavailable: %s", what, e)
    return error(503, f"the {what} is unavailable, retry shortly ({e})", "server_error",
                 "unavailable")


def first_message_key(conversation: list[Turn]) -> str:
    """A digest of a conversation up to its first user message (system messages included, which
    many conversations share): what every request continuing it shares."""
    first = next((i for i, t in enumerate(conversation) if t.speaker == "user"), len(conversation))
    head = json.dumps([[t.speaker, t.text] for t in conversation[:first + 1]])
    return hashlib.sha256(head.encode()).hexdigest()[:32]


class DownstreamError(Exception):
    """A deployment the turn needs failed (e.g. its replica died); the client may retry."""


class TurnCancelled(Exception):
    """The client went away: the turn makes no further calls."""


@dataclasses.dataclass
class Work:
    """Everything a turn spent, beyond the reply the client gets."""

    energy_kwh: float = 0.0
    tool_calls: list = dataclasses.field(default_factory=list)
    sampler_batch: int = 0
    tokens: dict = dataclasses.field(default_factory=dict)  # prompt, generated, scored, research_*
    seconds: dict = dataclasses.field(default_factory=dict)  # per stage
    calls: int = 0  # calls to the Sampler, Ranker and Toolset

    def add(self, stage: str, seconds: float, energy_kwh: float = 0.0, **tokens: int) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.energy_kwh += energy_kwh
        for k, v in tokens.items():
            self.tokens[k] = self.tokens.get(k, 0) + v


def completion_chunks(cid: str, created: int, model: str, choices: list[dict],
                      usage: dict | None, include_usage: bool):
    """The choices as chat.completion.chunk events: per choice its role, its text (token by token
    when logprobs were asked for, else word by word) and its finish_reason; then, with
    include_usage, a last chunk with the usage and no choices; then [DONE]."""

    def event(choices: list, **extra) -> str:
        chunk = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
                 "choices": choices, **extra}
        if include_usage:
            chunk.setdefault("usage", None)
        return f"data: {json.dumps(chunk)}\n\n"

    for c in choices:
        i = c["index"]
        yield event([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        if c.get("logprobs"):
            for entry in c["logprobs"]["content"]:
                yield event([{"index": i, "delta": {"content": entry["token"]},
                              "logprobs": {"content": [entry]}, "finish_reason": None}])
        else:
            words = c["message"]["content"].split(" ")
            for j, w in enumerate(words):
                yield event([{"index": i, "delta": {"content": w if j == 0 else " " + w},
                              "finish_reason": None}])
        yield event([{"index": i, "delta": {}, "finish_reason": c["finish_reason"]}])
    if include_usage:
        yield event([], usage=usage)
    yield "data: [DONE]\n\n"


@serve.deployment
@serve.ingress(app)
class Chat:
    def __init__(self, sampler, ranker, toolset, conversations: str = "runs/serve/conversations.sqlite",
                 roles_dir: str | None = None, api_key: str | None = None,
                 api_keys_file: str | None = None, call_timeout_s: float = 60.0,
                 max_turns: int = 256):
        self.sampler, self.ranker, self.toolset = sampler, ranker, toolset
        self.store = ConversationStore(conversations)
        self.roles = load_roles(roles_dir)
        app.state.api_keys = api_keys(api_key, api_keys_file)
        self.cfg = ChatConfig()
        self.call_timeout_s = call_timeout_s
        # a thread per turn in progress (each mostly waits on its deployment calls): asyncio's
        # default pool (cores + 4 threads) would cap the turns this replica overlaps
        self.turn_threads = ThreadPoolExecutor(max_turns, thread_name_prefix="turn")
        self.metrics = app.state.metrics = Metrics()
        self.downstream_calls = self.cancelled = 0  # all turns (read by tests through `stats`)
        self.served_by = {"replica": serve.get_replica_context().replica_id.unique_id,
                          "node": ray.get_runtime_context().get_node_id()}  # in the trace
        self.turns_in_flight = 0

    def reconfigure(self, config: dict) -> None:
        """user_config: research (bool), max_iterations, research_candidates,
        research_temperature (unknown keys are refused)."""
        self.cfg = from_user_config(ChatConfig, config, CHAT_SETTINGS)

    def stats(self) -> dict:
        """Counters of this replica (through a handle; not an HTTP route)."""
        return {"downstream_calls": self.downstream_calls, "cancelled": self.cancelled}

    # -- one turn ---------------------------------------------------------------------------

    def _call(self, cancel: threading.Event, work: Work, stage: str, method, *args):
        """`method.remote(*args)` on a deployment and its result, timed as `stage` of the turn.
        A cancelled turn issues no call, and cancels the one it waits for."""
        if cancel.is_set():
            raise TurnCancelled()
        self.downstream_calls += 1
        t0 = time.perf_counter()
        response = method.remote(*args)
        deadline = time.monotonic() + self.call_timeout_s
        while True:
            if cancel.is_set():
                response.cancel()
                raise TurnCancelled()
            try:
                out = response.result(timeout_s=min(0.5, max(0.01, deadline - time.monotonic())))
                work.add(stage, time.perf_counter() - t0)
                return out
            except TimeoutError:
                if time.monotonic() >= deadline:
                    raise DownstreamError(f"no answer within {self.call_timeout_s} s") from None
            except RequestCancelledError:  # Serve cancelled the request, and so its calls
                raise TurnCancelled() from None
            except Exception as e:  # a dead replica, an error inside the deployment
                raise DownstreamError(f"{type(e).__name__}: {str(e)[:200]}") from e

    def _turn(self, context: list[Turn], session: str, sampling: dict,
              cancel: threading.Event, affinity: str) -> tuple[Answer, Work]:
        """Runs in a worker thread: blocking handle calls are fine here. The Sampler calls carry
        `affinity` as their session id and the Toolset calls `session`: their routers send a
        conversation's calls to one replica, whose prefix cache holds its context and whose
        retriever its session."""
        work = Work()
        sampler = self.sampler.options(session_id=affinity)
        tools = self.toolset.options(session_id=session)
        # research samples with the request's top-k, top-p and seed; a greedy request (temperature
        # 0) gets greedy research too, so the same request gives the same reply
        research_sampling = {k: v for k, v in sampling.items() if k in ("top_k", "top_p", "seed")}
        research_sampling.update(num_candidates=self.cfg.research_candidates,
                                 temperature=0.0 if sampling.get("temperature") == 0
                                 else self.cfg.research_temperature)

        def call(stage: str, method, *args):
            return self._call(cancel, work, stage, method, *args)

        def respond(_):
            s: Sampled = call("sample", sampler.generate, context, sampling)
            r: RankResult = call("rank", self.ranker.rank, context, s.candidates)
            work.add("sample", 0, s.energy_kwh, **s.tokens)
            work.add("rank", 0, r.energy_kwh, **r.tokens)
            work.sampler_batch = s.batch
            return r.ranked, s.flops + r.flops, {**s.tokens, **r.tokens}

        def research(_, draft, steps):
            out: Researched = call("research", sampler.research, context, draft, steps,
                                   research_sampling)
            work.add("research", 0, out.energy_kwh,
                     **{f"research_{k}": v for k, v in out.tokens.items()})
            return out.output, out.flops

        def check(_, reply):  # the research loop's reply passes the safety filter too
            r: RankResult = call("check", self.ranker.rank_reply, context, reply)
            work.add("check", 0, r.energy_kwh, scored=r.tokens["scored"])
            return r.ranked, r.flops

        def toolset(query):
            calls = call("tools", tools.run, query, session)
            for c in calls:
                outcome = "error" if c["error"] else ("results" if c["results"] else "empty")
                self.metrics.tool_calls.inc(1, {"tool": c["tool"], "outcome": outcome})
            work.tool_calls.append({"query": query, "calls": calls})
            return [r for c in calls for r in c["results"]]

        return chat_turn(context, respond, research, toolset, self.cfg, check), work

    async def _answer(self, route: str, model: str, conversation: list[Turn], session: str,
                      sampling: dict | None = None, after=None, affinity: str | None = None):
        """((answer, work, after's result), None) or (None, an error response). `sampling`: the
        request's SamplingConfig fields; `affinity`: what the conversation's requests share, to
        route them to one Sampler replica (default: `session`). `after(context, answer, work,
        cancel)` runs in the turn's thread once the reply is chosen (e.g. Sampler.finish)."""
        role = self.roles.get(model)
        if role is None:
            return None, error(404, f"unknown model {model!r}; GET /v1/models lists them",
                               code="model_not_found")
        t0, cancel = time.perf_counter(), threading.Event()
        context = role.context(conversation)

        def run():
            answer, work = self._turn(context, session, sampling or {}, cancel, affinity or session)
            return answer, work, after(context, answer, work, cancel) if after else None

        self.turns_in_flight += 1
        self.metrics.in_flight.set(self.turns_in_flight)
        try:
            result = await asyncio.get_running_loop().run_in_executor(  # as asyncio.to_thread,
                self.turn_threads, contextvars.copy_context().run, run)  # with the request's context
        except (asyncio.CancelledError, TurnCancelled):  # the client went away (Serve cancels
            cancel.set()  # the request and its calls): the turn makes no further calls
            self.cancelled += 1
            self.metrics.cancelled.inc()
            raise asyncio.CancelledError() from None
        except DownstreamError as e:
            return None, unavailable(e)
        finally:
            self.turns_in_flight -= 1
            self.metrics.in_flight.set(self.turns_in_flight)
        answer, work, _ = result
        self.metrics.latency.observe(time.perf_counter() - t0, {"route": route})
        self.metrics.turn(answer, work)
        return result, None

    # -- routes -----------------------------------------------------------------------------

    @app.get("/healthz")
    async def healthz(self) -> dict:
        """Liveness: this ingress replica answers."""
        return {"status": "ok"}

    @app.get("/readyz", responses=documented(503))
    async def readyz(self):
        """Readiness: every deployment a turn needs has a running replica that answers."""
        missing = await asyncio.to_thread(self._unready)
        if missing:
            return error(503, f"not ready: {', '.join(missing)} cannot answer now",
                         "server_error", "not_ready")
        return {"status": "ready"}

    def _unready(self, timeout_s: float = 2.0) -> list[str]:
        """The deployments a turn needs that Serve reports without a running replica, or whose
        replica fails (or does not answer) a ping within `timeout_s`."""
        status = serve.status().applications[serve.get_replica_context().app_name].deployments
        handles = dict(zip(DOWNSTREAM, (self.sampler, self.ranker, self.toolset)))
        pings = {name: handle.ping.remote() for name, handle in handles.items()}
        deadline, unready = time.monotonic() + timeout_s, []
        for name, response in pings.items():
            try:
                running = status[name].replica_states.get("RUNNING", 0) if name in status else 0
                if not (running and response.result(timeout_s=max(0.01, deadline - time.monotonic()))):
                    unready.append(name)
            except Exception:  # a dead replica, no answer in time
                response.cancel()
                unready.append(name)
        return unready

    @app.get("/v1/models", responses=documented(401))
    async def models(self) -> dict:
        return {"object": "list", "data": [
            {"id": r.model, "object": "model", "created": 0, "owned_by": "lamda-on-ray",
             "description": r.description} for r in self.roles.values()]}

    @app.post("/chat", responses=documented(400, 401, 404, 413, 422, 503))
    async def chat(self, req: ChatRequest):
        """Native API: the reply plus the trace of how it was chosen."""
        cid = req.conversation_id or ConversationStore.new_id()
        user = Turn("user", req.message)
        try:  # off the event loop: the store may be a database across the network
            history = await asyncio.to_thread(self.store.history, cid)
        except StoreUnavailable as e:
            return unavailable(e)
        result, err = await self._answer("chat", req.model, [*history, user], cid)
        if err:
            return err
        answer, work, _ = result
        trace = {
            "model": req.model,
            "candidates": [s.__dict__ for s in answer.ranked.candidates],
            "filtered": [{"text": s.text, "reason": s.filtered}
                         for s in answer.ranked.candidates if s.filtered],
            "fallback": answer.fallback,
            "draft": answer.ranked.reply,
            "research": answer.research.to_dict() if answer.research else None,
            "tool_calls": work.tool_calls,
            "citations": answer.research.citations if answer.research else [],
            "sampler_batch": work.sampler_batch,
            "served_by": self.served_by,
            "flops": answer.flops, "energy_kwh": work.energy_kwh, "seconds": work.seconds,
        }
        try:  # the user's turn, the reply and its trace (raters rate candidates from it), all
            first = await asyncio.to_thread(  # or nothing
                self.store.append, cid, [user, Turn("lamda", answer.reply)], trace)
        except StoreUnavailable as e:
            return unavailable(e)
        body = {"conversation_id": cid, "turn": first + 1, "model": req.model,
                "reply": answer.reply, "usage": work.tokens, "flops": answer.flops,
                "energy_kwh": work.energy_kwh, "seconds": work.seconds}
        if req.trace:
            body["trace"] = trace
        return body

    @app.get("/conversations/{conversation_id}", responses=documented(401, 404, 422, 503))
    async def conversation(self, conversation_id: str = PathParam(max_length=64,
                                                                   pattern=ID_PATTERN)):
        """A conversation of the native API: every turn (LaMDA's with their traces) and the
        ratings given to its replies and candidates."""
        try:
            turns, ratings = await asyncio.to_thread(
                lambda: (self.store.conversation(conversation_id),
                         self.store.ratings(conversation_id)))
        except StoreUnavailable as e:
            return unavailable(e)
        if not turns:
            return error(404, f"no conversation {conversation_id!r}", code="not_found")
        return {"conversation_id": conversation_id, "turns": turns,
                "ratings": [rating_dict(r) for r in ratings]}

    @app.post("/ratings", status_code=201, responses=documented(400, 401, 404, 413, 422, 503))
    async def rate(self, req: RatingRequest, request: Request):
        """Rate a reply, or one of its candidates, by the paper's rubric; stored with the
        conversation, exported for fine-tuning by `jobs.export_ratings`. The rater name only
        labels the votes: the API key sent the rating, and its id is stored with it."""
        given = request.headers.get("authorization", "")[7:] if app.state.api_keys else None
        rating = Rating(req.conversation_id, req.turn,
                        REPLY if req.candidate is None else req.candidate, req.rater,
                        key_id(given), req.ssi, req.safe, req.grounded, req.helpful, req.note)
        try:
            stored = await asyncio.to_thread(self.store.add_rating, rating)
        except NotFound as e:
            return error(404, str(e), code="not_found")
        except StoreUnavailable as e:
            return unavailable(e)
        return rating_dict(stored)

    @app.get("/", include_in_schema=False)
    async def console(self) -> Response:
        """The console: chat, see each reply's trace, rate it."""
        return console_file("/")

    @app.get("/console.js", include_in_schema=False)
    async def console_js(self) -> Response:
        return console_file("/console.js")

    @app.get("/console.css", include_in_schema=False)
    async def console_css(self) -> Response:
        return console_file("/console.css")

    @app.post("/v1/chat/completions", responses={**documented(400, 401, 404, 413, 422, 503), 200: {
        "description": "a chat.completion, or with `stream` its chunks as server-sent events",
        "content": {"application/json": {}, "text/event-stream": {}}}})
    async def completions(self, req: ChatCompletionRequest):
        """OpenAI-compatible chat completions. Sampling parameters hold for this request only;
        choices are the turn's reply, then the next best safe candidates; `usage` counts the
        context and the returned replies, and `lamda` the turn's whole work."""
        refused = req.refused()
        if refused:
            return error(400, refused, code="unsupported_parameter")
        if req.unknown_fields():
            log.info("chat completion: ignored unknown fields %s", req.unknown_fields())
        system = [Turn("lamda", m.text()) for m in req.messages if m.role in ("system", "developer")]
        conversation = system + [Turn("user" if m.role == "user" else "lamda", m.text())
                                 for m in req.messages if m.role in ("user", "assistant")]
        sampling = {k: v for k, v in (("temperature", req.temperature), ("top_p", req.top_p),
                                      ("top_k", req.top_k), ("seed", req.seed)) if v is not None}
        if req.reply_limit():
            sampling["max_new_tokens"] = req.reply_limit() + 1  # + the final <eot>
        if req.stops():
            sampling["stop"] = req.stops()

        def finish(context: list[Turn], answer: Answer, work: Work, cancel: threading.Event):
            kept = [s for s in answer.ranked.candidates if not s.filtered]
            drafted = answer.reply == answer.ranked.reply and answer.ranked.best is not None
            texts = [answer.reply] + [s.text for s in kept[1:req.n]]
            cut = [drafted and answer.ranked.best.truncated] + [s.truncated for s in kept[1:req.n]]
            return self._call(cancel, work, "finish", self.sampler.finish,
                              context, texts, cut, req.reply_limit(),
                              list(req.stops()), req.logprob_count())

        # a stateless client names no conversation: its requests for one share their beginning
        session = req.user or uuid.uuid4().hex
        result, err = await self._answer("completions", req.model, conversation, session,
                                         sampling, finish, req.user or first_message_key(conversation))
        if err:
            return err
        answer, work, replies = result
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        choices = [{"index": i, "finish_reason": r["finish_reason"],
                    "message": {"role": "assistant", "content": r["text"]},
                    "logprobs": {"content": r["logprobs"]} if "logprobs" in r else None}
                   for i, r in enumerate(replies)]
        usage = {"prompt_tokens": work.tokens.get("prompt", 0),
                 "completion_tokens": sum(r["tokens"] for r in replies)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        usage["prompt_tokens_details"] = {"cached_tokens": work.tokens.get("reused", 0)}
        if req.stream:
            include = bool(req.stream_options and req.stream_options.include_usage)
            return StreamingResponse(completion_chunks(cid, created, req.model, choices, usage, include),
                                     media_type="text/event-stream")
        return {"id": cid, "object": "chat.completion", "created": created, "model": req.model,
                "choices": choices, "usage": usage, "lamda": {
                    "candidates": len(answer.ranked.candidates),
                    "generated_tokens": work.tokens.get("generated", 0),
                    "scored_tokens": work.tokens.get("scored", 0),
                    "research_steps": len(answer.research.steps) if answer.research else 0,
                    "research_prompt_tokens": work.tokens.get("research_prompt", 0),
                    "research_generated_tokens": work.tokens.get("research_generated", 0),
                    "research_cached_tokens": work.tokens.get("research_reused", 0),
                    "tool_calls": len(work.tool_calls), "fallback": answer.fallback,
                    "flops": answer.flops, "energy_kwh": work.energy_kwh, "seconds": work.seconds}}
