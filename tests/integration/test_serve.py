"""The Serve chat graph on a local Ray cluster, over real HTTP on loopback: the native and
OpenAI-compatible APIs (with the official `openai` client), limits and errors, a bounded load test,
a replica killed under load, live reconfiguration, and a real Prometheus scraping the metrics."""

import concurrent.futures as cf
import dataclasses
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import time
import urllib.request

import httpx
import openai
import psutil
import pytest
import torch

from lamda.checkpoint import save_export
from lamda.config import ModelConfig
from lamda.conversations import ConversationStore
from lamda.data import SAMPLE_DIR, collate, read_jsonl, research_example
from lamda.model import build_model
from lamda.training import TrainConfig, build_optimizer, train_step
from lamda.tools.retrieval import Retriever
from tests.integration.conftest import free_port, wait_for_port

pytestmark = pytest.mark.slow
KEY = "test-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def deploy(serve, work, num_candidates=4):
    from serve_apps.chat import Chat
    from serve_apps.deployments import Ranker, Sampler, Toolset
    small = {"num_cpus": 0.25}
    model = str(work / "export")
    app = Chat.options(ray_actor_options=small, max_ongoing_requests=32, max_queued_requests=200,
                       user_config={"research": True, "max_iterations": 2, "research_candidates": 2,
                                    "research_temperature": 1.0}
                       ).bind(
        Sampler.options(ray_actor_options=small, max_ongoing_requests=32, num_replicas=2,
                        # seeded: whether the briefly trained model routes to the toolset
                        # must not depend on the draw
                        user_config={"num_candidates": num_candidates, "max_new_tokens": 12,
                                     "seed": 0}).bind(model),
        Ranker.options(ray_actor_options=small, max_ongoing_requests=32,
                       user_config={"safety_threshold": 0.0}).bind(model),
        Toolset.options(ray_actor_options=small, num_replicas=2).bind(str(work / "index.sqlite")),
        conversations=str(work / "conversations.sqlite"), api_key=KEY,
        api_keys_file=str(work / "api_keys"))
    serve.run(app, name="lamda", route_prefix="/")


def research_trained_model(tok, records, steps=120):
    """A debug model briefly fine-tuned on tool-use transcripts, so that it routes to the toolset
    ("TS, ...") like a fine-tuned LaMDA, and the tool path gets exercised. It learns no replies, so
    its own drafts are noise ("1111111111"); half its transcripts get a draft of random
    characters, or it takes such a draft for a tool result and answers without a tool (3 of 10
    sampled turns of the first test's request without them, 0 of 10 with them)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig.from_name("debug", vocab_size=tok.vocab_size))
    rng = random.Random(0)
    chars = "abcdefghij0123456789 .'+*"
    noise = [dataclasses.replace(r, draft="".join(rng.choices(chars, k=rng.randint(4, 24))))
             if rng.random() < 0.5 else r for r in records if r.steps]
    examples = [research_example(tok, r) for r in noise]
    cfg = TrainConfig(steps=steps, lr=3e-3, warmup_steps=5, batch_size=16)
    opt = build_optimizer(model, cfg)
    for step in range(steps):
        batch = [examples[(step * 16 + i) * 7 % len(examples)] for i in range(16)]
        train_step(model, opt, [collate(batch, 256, tok.pad_id, packed=True)], step, cfg)
    return model.eval()


def start_app(work, tok, research_records, api_keys: str = "") -> str:
    """The chat app on a free loopback port, with a briefly research-trained model, the bundled
    documents as its index and `api_keys` as its keys file (besides KEY); returns its URL."""
    from ray import serve
    model = research_trained_model(tok, research_records)
    save_export(work / "export", model.state_dict(), model.cfg, tok)
    Retriever(work / "index.sqlite").add(read_jsonl(SAMPLE_DIR / "documents.jsonl", "document"))
    (work / "api_keys").write_text(api_keys)
    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    deploy(serve, work)
    return f"http://127.0.0.1:{port}"


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory, tok, research_records):
    from ray import serve
    work = tmp_path_factory.mktemp("serve")
    url = start_app(work, tok, research_records, "# a second key\nother-key\n")
    yield {"url": url, "work": work, "serve": serve}
    serve.shutdown()


def post(url, body, headers=AUTH, raw=None):
    return httpx.post(url, content=raw if raw is not None else json.dumps(body),
                      headers={"Content-Type": "application/json", **headers}, timeout=120)


def test_health_and_models(server):
    assert httpx.get(f"{server['url']}/healthz").json() == {"status": "ok"}
    models = httpx.get(f"{server['url']}/v1/models", headers=AUTH).json()
    assert {"lamda", "lamda-everest", "lamda-music"} <= {m["id"] for m in models["data"]}


def test_native_chat_with_trace_and_multi_turn(server):
    r = post(f"{server['url']}/chat", {"message": "What is 135+7721?", "model": "lamda-everest"})
    assert r.status_code == 200, r.text
    body = r.json()
    trace = body["trace"]
    assert isinstance(body["reply"], str) and len(trace["candidates"]) == 4
    assert {"sensible", "specific", "interesting", "unsafe", "quality", "filtered"} <= set(trace["candidates"][0])
    assert trace["research"]["trace"][0]["from"] == "LAMDA-BASE"
    # the research-trained model consults the toolset; each call runs every tool in order
    assert trace["tool_calls"] and [c["tool"] for c in trace["tool_calls"][0]["calls"]] == \
        ["calculator", "translator", "retrieval"]
    assert body["flops"] > 0 and body["energy_kwh"] > 0
    cid = body["conversation_id"]
    r2 = post(f"{server['url']}/chat", {"message": "And 2+2?", "conversation_id": cid})
    assert r2.status_code == 200 and r2.json()["conversation_id"] == cid
    history = ConversationStore(server["work"] / "conversations.sqlite").history(cid)
    assert [t.speaker for t in history] == ["user", "lamda", "user", "lamda"]
    assert history[0].text == "What is 135+7721?" and history[2].text == "And 2+2?"


def test_terminal_client(server):
    proc = subprocess.run([sys.executable, "-m", "serve_apps.client", "--url", server["url"],
                           "--model", "lamda-everest", "--trace", "--api-key", KEY],
                          input="What is 2+2?\n/models\nAnd 3+3?\n/quit\n", capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("lamda> ") == 2 and "lamda-everest" in proc.stdout
    assert "safe" in proc.stdout  # the trace's candidate lines


def test_openai_client(server, tok):
    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY)
    done = client.chat.completions.create(model="lamda", messages=[{"role": "user", "content": "Hi!"}])
    assert done.choices[0].message.role == "assistant" and done.usage.completion_tokens > 0
    stream = client.chat.completions.create(model="lamda-music", stream=True, max_tokens=8,
                                            stream_options={"include_usage": True},
                                            messages=[{"role": "user", "content": "Any jazz?"}])
    *chunks, last = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    # the stream ends with its reason: the reply's end, or max_tokens when it was cut there (a
    # token or two short of it where the cut would split a character); then the usage
    reason, tokens = chunks[-1].choices[0].finish_reason, last.usage.completion_tokens
    assert not last.choices and len(tok.encode(text)) == tokens <= 8
    assert reason == "stop" or (reason == "length" and tokens >= 6)
    assert [m.id for m in client.models.list()][:1] == ["lamda"]


@pytest.mark.parametrize("case,headers,body,raw,status", [
    ("no key", {}, {"message": "hi"}, None, 401),
    ("wrong key", {"Authorization": "Bearer nope"}, {"message": "hi"}, None, 401),
    ("too big", AUTH, None, b'{"message": "' + b"a" * 70_000 + b'"}', 413),
    ("empty message", AUTH, {"message": ""}, None, 422),
    ("long message", AUTH, {"message": "a" * 5000}, None, 422),
    ("a NUL character", AUTH, {"message": "a\u0000b"}, None, 422),
    ("bad conversation id", AUTH, {"message": "hi", "conversation_id": "../../etc"}, None, 422),
    ("malformed json", AUTH, None, b'{"message": ', 422),
    ("invalid utf-8", AUTH, None, b'{"message": "\xff\xfe"}', 400),
    ("not an object", AUTH, None, b"[1, 2, 3]", 422),
    ("unknown model", AUTH, {"message": "hi", "model": "gpt-4"}, None, 404),
    ("a field it does not take", AUTH, {"message": "hi", "top_p": 0.5}, None, 422),
])
def test_bad_requests_get_clean_4xx(server, case, headers, body, raw, status):
    r = post(f"{server['url']}/chat", body, headers, raw)
    assert r.status_code == status, (case, r.text)
    assert r.json()["error"]["message"]


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize("body", [
    {"model": "lamda", "messages": []},
    {"model": "lamda", "messages": HI * 65},
    {"model": "lamda", "messages": [{"role": "robot", "content": "hi"}]},
    {"model": "lamda", "messages": HI, "n": 17},
    {"model": "lamda", "messages": HI, "temperature": 2.5},
    {"model": "lamda", "messages": HI, "top_p": 1.5},
    {"model": "lamda", "messages": HI, "max_tokens": 0},
    {"model": "lamda", "messages": HI, "logprobs": True, "top_logprobs": 21},
    {"model": "lamda", "messages": HI, "stop": ["a", "b", "c", "d", "e"]},
    {"model": "lamda", "messages": [{"role": "user", "content": [{"type": "image_url",
                                                                  "image_url": {"url": "x"}}]}]},
    {"model": "lamda", "messages": HI, "stream": 1},
])
def test_bad_completions_get_422(server, body):
    r = post(f"{server['url']}/v1/chat/completions", body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize("extra,param", [
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"presence_penalty": 0.5}, "presence_penalty"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
])
def test_parameters_it_cannot_honour_get_400_naming_them(server, extra, param):
    r = post(f"{server['url']}/v1/chat/completions", {"model": "lamda", "messages": HI, **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(param), r.text


def completion(server, **body):
    r = post(f"{server['url']}/v1/chat/completions",
             {"model": "lamda", "messages": [{"role": "user", "content": "What is 2+2?"}], **body})
    assert r.status_code == 200, r.text
    return r.json()


def texts(body):
    return [c["message"]["content"] for c in body["choices"]]


def test_openai_sampling_parameters_are_honoured(server):
    # greedy is deterministic; a seed makes sampling repeatable; different seeds differ
    assert texts(completion(server, temperature=0)) == texts(completion(server, temperature=0))
    seeded = [texts(completion(server, seed=s, n=4)) for s in (11, 11, 12)]
    assert seeded[0] == seeded[1] and seeded[0] != seeded[2]
    # n: the reply, then the next best candidates
    four = completion(server, seed=11, n=4)
    assert [c["index"] for c in four["choices"]] == [0, 1, 2, 3]
    # max_tokens: no choice holds more; a cut reply says "length"
    cut = completion(server, seed=11, n=4, max_tokens=2, logprobs=True)
    assert all(len(c["logprobs"]["content"]) <= 2 for c in cut["choices"])
    assert cut["usage"]["completion_tokens"] == sum(len(c["logprobs"]["content"]) for c in cut["choices"])
    assert "length" in {c["finish_reason"] for c in cut["choices"]}
    # stop: a word of the unconstrained replies never appears once it is a stop string
    word = next(w for t in seeded[0] for w in t.split() if len(w) > 2)
    stopped = completion(server, seed=11, n=4, stop=[word])
    assert not any(word in t for t in texts(stopped)), (word, texts(stopped))
    # top_p = 0 and top_k = 1 leave one token to draw: greedy whatever the seed
    assert texts(completion(server, seed=1, top_p=0.0)) == texts(completion(server, seed=2, top_p=0.0))
    assert texts(completion(server, seed=1, top_k=1)) == texts(completion(server, seed=2, top_k=1))


def test_logprobs_usage_and_the_turns_work(server):
    body = completion(server, seed=3, logprobs=True, top_logprobs=3)
    (choice,) = body["choices"]
    entries = choice["logprobs"]["content"]
    assert "".join(e["token"] for e in entries).strip() == choice["message"]["content"].strip()
    assert bytes(b for e in entries for b in e["bytes"]).decode().strip() == choice["message"]["content"].strip()
    for e in entries:
        assert e["logprob"] <= 0 and len(e["top_logprobs"]) == 3
        assert e["top_logprobs"][0]["logprob"] >= e["logprob"] - 1e-4
        assert bytes(e["bytes"]).decode(errors="replace")
    usage, work = body["usage"], body["lamda"]
    assert usage["completion_tokens"] == len(entries) and usage["prompt_tokens"] > 0
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert work["candidates"] == 4 and work["generated_tokens"] >= usage["completion_tokens"]
    assert work["scored_tokens"] > 0 and work["flops"] > 0 and work["energy_kwh"] > 0
    assert {"sample", "rank", "finish"} <= set(work["seconds"])


def test_a_conversation_keeps_to_one_sampler_replica(server):
    """Two Sampler replicas, each with its own prefix cache. A conversation's requests (named by
    `user` or by `conversation_id`, or sharing their first message) reach the same replica, so
    a context asked again is prefilled only at its last position (OpenAI's cached_tokens), and a
    continued conversation's next turn only after the last turn's prompt. Routed by chance, each
    of these 12 checks would hold 1 time in 2 (any replica's cache holds the pre-conditioning)."""
    assert len(replica_pids("Sampler")) == 2
    for i in range(4):
        for user in ({"user": f"user-{i}"}, {}):
            text = f"Tell me about mountain {i} {'of ' * bool(user)}the world."
            messages = [{"role": "user", "content": text}]
            first, again = (completion(server, messages=messages, seed=s, **user) for s in (1, 2))
            assert first["usage"]["prompt_tokens"] == again["usage"]["prompt_tokens"] > 8
            cached = again["usage"]["prompt_tokens_details"]["cached_tokens"]
            assert cached == again["usage"]["prompt_tokens"] - 1
        one = post(f"{server['url']}/chat", {"message": f"Hello, conversation {i}."}).json()
        two = post(f"{server['url']}/chat", {"message": "Tell me more.",
                                             "conversation_id": one["conversation_id"]}).json()
        assert two["usage"]["reused"] >= one["usage"]["prompt"] - 1, (one["usage"], two["usage"])


def test_a_conversations_repeated_query_goes_on_to_the_next_result(server):
    """Two Toolset replicas, each with its own retrieval sessions: the calls of a conversation
    (its session id, as the Chat sets it) reach the same one, so a repeated query returns the
    next-ranked document (paper §6.2), while a new conversation starts at the first. Routed by
    chance, each of the 4 conversations would see the first document again 1 time in 2."""
    from ray import serve
    toolset = serve.get_deployment_handle("Toolset", "lamda")
    assert len(replica_pids("Toolset")) == 2

    def retrieved(session):
        calls = toolset.options(session_id=session).run.remote("Mount Everest", session).result()
        return next(c["results"] for c in calls if c["tool"] == "retrieval")

    for i in range(4):
        first, again = retrieved(f"conversation-{i}"), retrieved(f"conversation-{i}")
        assert first and again and first != again
        assert retrieved(f"other-{i}") == first


def test_content_parts_and_system_messages(server):
    parts = completion(server, temperature=0,
                       messages=[{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}]}])
    assert texts(parts) == texts(completion(server, temperature=0))
    plain = completion(server, temperature=0)
    system = completion(server, temperature=0, messages=[
        {"role": "system", "content": "You are a calculator."},
        {"role": "user", "content": "What is 2+2?"}])
    # the system message is in the model's context (pre-conditioning), not dropped
    assert system["usage"]["prompt_tokens"] > plain["usage"]["prompt_tokens"]
    unknown = completion(server, temperature=0, some_new_field=1, store=False)
    assert texts(unknown) == texts(plain)


def test_stream_options_include_usage(server):
    client = openai.OpenAI(base_url=f"{server['url']}/v1", api_key=KEY)
    chunks = list(client.chat.completions.create(
        model="lamda", messages=[{"role": "user", "content": "Hi!"}], stream=True, n=2, seed=4,
        stream_options={"include_usage": True}))
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])
    assert {c.choices[0].index for c in chunks[:-1]} == {0, 1}
    done = client.chat.completions.create(model="lamda", messages=[{"role": "user", "content": "Hi!"}],
                                          n=2, seed=4)
    streamed = ["".join(c.choices[0].delta.content or "" for c in chunks[:-1] if c.choices[0].index == i)
                for i in (0, 1)]
    assert streamed == [c.message.content for c in done.choices]


def test_several_api_keys_and_readiness(server, tmp_path):
    assert httpx.get(f"{server['url']}/readyz").json() == {"status": "ready"}
    for headers, status in ((AUTH, 200), ({"Authorization": "Bearer other-key"}, 200),
                            ({"Authorization": "Bearer test-ke"}, 401), ({"Authorization": KEY}, 401)):
        assert httpx.get(f"{server['url']}/v1/models", headers=headers).status_code == status


def test_readiness_fails_while_a_deployment_has_no_replica(server):
    """A second app whose Toolset scales from zero: /readyz says 503 naming it until a replica
    runs (the readiness ping itself brings one up), then 200; /healthz is fine throughout."""
    from ray import serve
    from serve_apps.chat import Chat
    from serve_apps.deployments import Ranker, Sampler, Toolset
    small, work = {"num_cpus": 0.25}, server["work"]
    serve.run(Chat.options(ray_actor_options=small).bind(
        Sampler.options(ray_actor_options=small).bind(str(work / "export")),
        Ranker.options(ray_actor_options=small).bind(str(work / "export")),
        Toolset.options(ray_actor_options=small, autoscaling_config={
            "min_replicas": 0, "initial_replicas": 0, "max_replicas": 1, "upscale_delay_s": 0,
            "downscale_delay_s": 600}).bind(str(work / "index.sqlite")),
        conversations=str(work / "rc.sqlite")), name="rc", route_prefix="/rc")
    try:
        first = httpx.get(f"{server['url']}/rc/readyz", timeout=30)
        assert first.status_code == 503 and "Toolset" in first.json()["error"]["message"], first.text
        assert httpx.get(f"{server['url']}/rc/healthz").status_code == 200
        deadline = time.time() + 60
        while httpx.get(f"{server['url']}/rc/readyz", timeout=30).status_code != 200:
            assert time.time() < deadline
            time.sleep(0.5)
    finally:
        serve.delete("rc")


def chat_handle():
    from ray import serve
    return serve.get_deployment_handle("Chat", app_name="lamda")


def test_a_disconnected_client_cancels_its_turn(server):
    import socket
    from urllib.parse import urlparse
    handle = chat_handle()
    calls = lambda: handle.stats.remote().result()["downstream_calls"]  # noqa: E731
    body = json.dumps({"model": "lamda", "messages": [{"role": "user", "content": "What is 2+2?"}],
                       "temperature": 0, "max_tokens": 100}).encode()
    before = calls()
    assert post(f"{server['url']}/v1/chat/completions", None, raw=body).status_code == 200
    full = calls() - before
    assert full >= 4  # sample, rank, research..., finish
    cancelled, before = handle.stats.remote().result()["cancelled"], calls()
    url = urlparse(server["url"])
    with socket.create_connection((url.hostname, url.port)) as sock:  # a client that goes away
        sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                     + KEY.encode() + b"\r\nContent-Type: application/json\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        deadline = time.time() + 30
        while calls() == before and time.time() < deadline:  # once its turn has started
            time.sleep(0.01)
    time.sleep(5)
    stats = handle.stats.remote().result()
    assert stats["cancelled"] == cancelled + 1
    assert 1 <= stats["downstream_calls"] - before < full, (stats, before, full)


def load(url, n, concurrency, timeout=120):
    """n chat requests from `concurrency` threads -> (status codes, latencies)."""
    def one(i):
        t0 = time.perf_counter()
        try:
            r = post(f"{url}/chat", {"message": f"What is {i}+{i}?", "trace": False})
            return r.status_code, time.perf_counter() - t0, r
        except httpx.HTTPError as e:
            return type(e).__name__, time.perf_counter() - t0, None

    with cf.ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, range(n)))


def test_bounded_load_has_no_server_errors(server):
    results = load(server["url"], 200, 64)
    codes = [c for c, _, _ in results]
    latencies = sorted(t for _, t, _ in results)
    p50, p99 = statistics.median(latencies), latencies[int(0.99 * len(latencies)) - 1]
    print(json.dumps({"load": "200 requests, 64 concurrent", "p50_s": round(p50, 3),
                      "p99_s": round(p99, 3), "codes": {str(c): codes.count(c) for c in set(codes)}}))
    assert codes.count(200) == 200


def replica_pids(name: str) -> list[int]:
    """PIDs of a deployment's replica processes (Ray titles them ray::ServeReplica:<app>:<name>)."""
    return [p.pid for p in psutil.process_iter(["cmdline"])
            if any(f"ServeReplica:lamda:{name}" in part for part in (p.info["cmdline"] or []))]


def test_a_killed_replica_is_replaced(server, ray_cluster):
    pool = cf.ThreadPoolExecutor(1)
    future = pool.submit(load, server["url"], 60, 10)
    time.sleep(3)
    os.kill(replica_pids("Sampler")[0], signal.SIGKILL)  # one of the two
    results = future.result()
    codes = [c for c, _, _ in results]
    assert set(codes) <= {200, 503}, codes  # in-flight requests fail cleanly, never 500
    for c, _, r in results:
        if c == 503:
            assert r.json()["error"]["code"] == "unavailable"
    deadline = time.time() + 120
    while time.time() < deadline:  # the replacement replica comes up and serves again
        if post(f"{server['url']}/chat", {"message": "hello"}).status_code == 200:
            break
        time.sleep(2)
    assert all(c == 200 for c, _, _ in load(server["url"], 10, 5))


def test_reconfigure_changes_the_candidate_count_live(server):
    deploy(server["serve"], server["work"], num_candidates=2)
    r = post(f"{server['url']}/chat", {"message": "hi"})
    assert len(r.json()["trace"]["candidates"]) == 2
    deploy(server["serve"], server["work"], num_candidates=4)


def test_prometheus_scrapes_the_custom_metrics(server, ray_cluster, tmp_path):
    post(f"{server['url']}/chat", {"message": "What is 2+2?"})
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(f"""
global: {{scrape_interval: 1s}}
scrape_configs:
  - job_name: ray
    static_configs: [{{targets: ["127.0.0.1:{ray_cluster.metrics_port}"]}}]
""")
    proc = subprocess.Popen(["prometheus", f"--config.file={config}",
                             f"--storage.tsdb.path={tmp_path / 'data'}",
                             f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_port(port)
        wanted = ["ray_lamda_requests_total", "ray_lamda_candidates_total",
                  "ray_lamda_tool_calls_total", "ray_lamda_flops_served_total",
                  "ray_lamda_turn_latency_seconds_bucket", "ray_lamda_stage_seconds_bucket",
                  "ray_lamda_tokens_total", "ray_lamda_turns_in_flight"]
        found = {}
        deadline = time.time() + 60
        while time.time() < deadline and len(found) < len(wanted):
            for name in wanted:
                q = urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/query?query={name}",
                                           timeout=5)
                result = json.loads(q.read())["data"]["result"]
                if result:
                    found[name] = result
            time.sleep(1)
        assert set(found) == set(wanted), set(wanted) - set(found)
        tools = {r["metric"]["tool"] for r in found["ray_lamda_tool_calls_total"]}
        assert {"calculator", "translator", "retrieval"} <= tools
        stages = {r["metric"]["stage"] for r in found["ray_lamda_stage_seconds_bucket"]}
        assert {"sample", "rank", "research", "tools"} <= stages
        statuses = {r["metric"]["status"] for r in found["ray_lamda_requests_total"]}
        assert {"200", "401", "422"} <= statuses  # every answer is counted, refusals too
    finally:
        proc.terminate()
        proc.wait(timeout=10)


TOOL_ERRORS = ("Inconsistent results", "AST constructor recursion depth mismatch")


def test_the_schema_tells_the_truth(server, tmp_path):
    """schemathesis against the live /openapi.json with every check: each status the API returns
    is in the schema, schema-valid requests are accepted, invalid ones refused, 405 has Allow.
    413 (the body-size limit, which JSON Schema cannot state) counts as an answer to both."""
    (tmp_path / "schemathesis.toml").write_text("""
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "401", "403", "404", "409", "413", "429", "5xx"]
[checks.negative_data_rejection]
expected-statuses = ["400", "401", "403", "404", "405", "406", "409", "413", "415", "422", "428", "429", "5xx"]
""")
    st = os.path.join(os.path.dirname(sys.executable), "st")
    for seed in (1, 2, 3):
        proc = subprocess.run(
            [st, "--config-file", str(tmp_path / "schemathesis.toml"), "run",
             f"{server['url']}/openapi.json", "--checks", "all", "--seed", str(seed), "--max-examples", "8",
             "--header", f"Authorization: Bearer {KEY}",
             "--workers", "2", "--request-timeout", "120", "--max-response-time", "60",
             "--suppress-health-check", "all"],
            capture_output=True, text=True, timeout=900, cwd=tmp_path)
        # schemathesis' own generator now and then fails inside hypothesis' AST handling of
        # lambdas ("Inconsistent results", "AST constructor recursion depth mismatch": runtime
        # errors of the tool, not failed checks): run it again then, with the next seed (the
        # same seed can hit the same path)
        if "Failures:" in proc.stdout or not any(e in proc.stdout for e in TOOL_ERRORS):
            break
    assert proc.returncode == 0, proc.stdout[:3000] + proc.stdout[-6000:]
