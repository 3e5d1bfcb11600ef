"""The console and the rating loop on the served chat app (a local Ray cluster, real HTTP): the
page in a real browser (Debian's chromium, driven headless by selenium) sends a message, shows the
reply and its trace, and rates it into the store; model and tool text is never run as HTML; the
rating API follows the API-key rules; and people's ratings, exported by jobs.export_ratings,
train the discriminators on the next jobs.finetune."""

import json
import os
import shutil

import httpx
import pytest
import torch

from jobs import export_ratings, finetune
from lamda.checkpoint import load_export
from lamda.conversations import ConversationStore
from lamda.data import Turn
from lamda.rank import score_responses
from lamda.ratings import REPLY, key_id
from tests.integration.test_serve import AUTH, KEY, post, start_app

pytestmark = pytest.mark.slow
CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"


@pytest.fixture(scope="module")
def server(ray_cluster, tmp_path_factory, tok, research_records):
    from ray import serve
    work = tmp_path_factory.mktemp("console")
    url = start_app(work, tok, research_records)
    yield {"url": url, "work": work, "store": ConversationStore(work / "conversations.sqlite")}
    serve.shutdown()


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.fail("Debian's chromium and chromium-driver are needed (`make test` installs them)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    # no sandbox as root; no background connections (the machine's network is closed)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1280,1400",
                f"--user-data-dir={tmp_path_factory.mktemp('chromium')}"):
        opts.add_argument(arg)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout=120):
    from selenium.webdriver.support.ui import WebDriverWait
    return WebDriverWait(driver, timeout).until(condition)


def chat(server, message):
    r = post(f"{server['url']}/chat", {"message": message, "model": "lamda-everest"})
    assert r.status_code == 200, r.text
    return r.json()


def test_the_page_is_public_and_locked_down_the_api_is_not(server):
    page = httpx.get(f"{server['url']}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "script-src 'self'" in page.headers["content-security-policy"]
    assert httpx.get(f"{server['url']}/console.js").headers["content-type"].startswith("text/javascript")
    for method, path, body in (("GET", "/conversations/abc", None),
                               ("POST", "/ratings", {"conversation_id": "abc", "turn": 1,
                                                     "rater": "r", "ssi": "sensible", "safe": True})):
        for headers in ({}, {"Authorization": "Bearer nope"}):
            r = httpx.request(method, f"{server['url']}{path}", json=body, headers=headers)
            assert r.status_code == 401, r.text


def test_rating_api(server):
    body = chat(server, "What is 2+3?")
    cid, turn = body["conversation_id"], body["turn"]
    assert turn == 1 and len(body["trace"]["candidates"]) == 4
    rate = {"conversation_id": cid, "turn": turn, "rater": "ann", "ssi": "specific", "safe": True,
            "grounded": None, "helpful": True, "note": "fine"}
    r = httpx.post(f"{server['url']}/ratings", json=rate, headers=AUTH)
    assert r.status_code == 201, r.text
    assert r.json()["key_id"] == key_id(KEY) and r.json()["candidate"] is None
    r = httpx.post(f"{server['url']}/ratings", json={**rate, "candidate": 3}, headers=AUTH)
    assert r.status_code == 201 and r.json()["candidate"] == 3
    for bad, status in (({"turn": 0}, 404), ({"turn": 9}, 404), ({"candidate": 4}, 404),
                        ({"conversation_id": "nope"}, 404), ({"ssi": "very"}, 422),
                        ({"rater": "<b>"}, 422), ({"safe": "yes"}, 422), ({"admin": True}, 422),
                        ({"note": "x" * 2001}, 422)):
        r = httpx.post(f"{server['url']}/ratings", json={**rate, **bad}, headers=AUTH)
        assert r.status_code == status and r.json()["error"]["message"], (bad, r.text)
    got = httpx.get(f"{server['url']}/conversations/{cid}", headers=AUTH).json()
    assert [t["speaker"] for t in got["turns"]] == ["user", "lamda"]
    assert got["turns"][1]["trace"]["candidates"] == body["trace"]["candidates"]
    assert [(r["rater"], r["candidate"]) for r in got["ratings"]] == [("ann", None), ("ann", 3)]
    assert httpx.get(f"{server['url']}/conversations/nope", headers=AUTH).status_code == 404


def test_chat_and_rate_in_a_real_browser(server, browser, tmp_path):
    from selenium.webdriver.common.by import By
    browser.get(server["url"] + "/")
    browser.find_element(By.ID, "key").send_keys(KEY)
    browser.find_element(By.ID, "rater").send_keys("rater-7")
    browser.execute_script("for (const id of ['key', 'rater']) document.getElementById(id)"
                           ".dispatchEvent(new Event('change'))")
    wait(browser, lambda d: "lamda-everest" in [o.text for o in d.find_elements(By.CSS_SELECTOR, "#role option")])
    browser.find_element(By.CSS_SELECTOR, "#role option[value='lamda-everest']").click()
    assert browser.execute_script("return document.getElementById('role').value") == "lamda-everest"
    browser.find_element(By.ID, "message").send_keys("How tall is Mount Everest?")
    browser.find_element(By.ID, "send-button").click()
    reply = wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, ".turn.lamda"))[0]
    cid = browser.execute_script("return location.hash").removeprefix("#c=")
    stored = server["store"].conversation(cid)
    shown = reply.find_element(By.CLASS_NAME, "text").text  # the browser keeps some spaces Python strips
    assert shown.split() == stored[1]["text"].split()
    # the trace: every candidate with its scores, the research steps and the tool calls
    reply.find_element(By.TAG_NAME, "summary").click()
    rows = reply.find_elements(By.CSS_SELECTOR, "table.candidates tr")[1:]
    assert len(rows) == len(stored[1]["trace"]["candidates"]) == 4
    assert rows[0].find_elements(By.TAG_NAME, "td")[1].text == stored[1]["trace"]["candidates"][0]["text"].strip()
    assert reply.find_elements(By.CSS_SELECTOR, "ol.research li")
    # the cascade: not sensible => specific and interesting cannot be ticked
    form = reply.find_element(By.CSS_SELECTOR, "form.rating")
    sensible, specific = (form.find_element(By.NAME, n) for n in ("sensible", "specific"))
    specific.click()
    sensible.click()
    assert not specific.is_selected() and not specific.is_enabled()
    sensible.click()
    specific.click()
    form.find_element(By.NAME, "note").send_keys("on topic, no source")
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: form.find_element(By.CLASS_NAME, "result").text == "saved")
    # then a candidate, from its row in the trace
    rows[2].find_element(By.CLASS_NAME, "rate-candidate").click()
    form.find_element(By.NAME, "safe").click()
    form.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    wait(browser, lambda d: len(reply.find_elements(By.CSS_SELECTOR, ".ratings li")) == 2)
    ratings = server["store"].ratings(cid)
    assert [(r.rater, r.turn, r.candidate, r.ssi, r.safe, r.note) for r in ratings] == [
        ("rater-7", 1, REPLY, "specific", True, "on topic, no source"),
        ("rater-7", 1, 2, "specific", False, "on topic, no source")]
    assert ratings[0].key_id == key_id(KEY)
    if os.environ.get("LAMDA_CONSOLE_SCREENSHOT"):  # the README's picture
        browser.save_screenshot(os.environ["LAMDA_CONSOLE_SCREENSHOT"])


def test_model_and_tool_text_is_never_run_as_html(server, browser):
    """A reply, candidate, research step and citation holding markup are shown as text."""
    from selenium.webdriver.common.by import By
    store, cid = server["store"], ConversationStore.new_id()
    evil = '<img src=x onerror="window.pwned=1"><script>window.pwned=1</script>'
    store.append(cid, [Turn("user", evil), Turn("lamda", evil)], {
        "model": "lamda", "candidates": [{"text": evil, "sensible": 0.5, "specific": 0.5,
                                          "interesting": 0.5, "unsafe": 0.1, "quality": 2.5,
                                          "filtered": evil}],
        "draft": evil, "fallback": False, "flops": 1.0, "energy_kwh": 0.0, "seconds": {},
        "research": {"steps": [], "trace": [{"from": "LAMDA-BASE", "text": evil},
                                            {"from": "TS", "query": evil, "results": [evil]}]},
        "tool_calls": [{"query": evil, "calls": [{"tool": evil, "results": [evil], "error": None}]}],
        "citations": ["javascript:window.pwned=1", "https://example.org/a?b=<i>"]})
    browser.get(f"{server['url']}/#c={cid}")
    wait(browser, lambda d: cid in d.find_element(By.ID, "conversation").text)
    reply = browser.find_element(By.CSS_SELECTOR, ".turn.lamda")
    reply.find_element(By.TAG_NAME, "summary").click()
    assert reply.find_element(By.CLASS_NAME, "text").text == evil
    assert browser.find_element(By.CSS_SELECTOR, ".turn.user .text").text == evil
    assert browser.execute_script("return window.pwned") is None
    assert not browser.find_elements(By.CSS_SELECTOR, "#log script, #log img")
    links = [a.get_attribute("href") for a in reply.find_elements(By.CSS_SELECTOR, ".citations a")]
    assert links == ["https://example.org/a?b=%3Ci%3E"]  # javascript: is shown, not linked
    assert "javascript:window.pwned=1" in reply.find_element(By.CLASS_NAME, "citations").text


def test_ratings_train_the_discriminators_on_the_next_finetune(server, tmp_path):
    """Three raters call a reply not sensible and unsafe, and another candidate interesting and
    safe; after exporting and fine-tuning on exactly those ratings, the discriminators score the
    two responses the way the raters did, and further apart than before."""
    body = chat(server, "Tell me about Mount Everest.")
    cid, turn, reply = body["conversation_id"], body["turn"], body["reply"]
    other = next(i for i, c in enumerate(body["trace"]["candidates"]) if c["text"] != reply)
    for rater in ("r1", "r2", "r3"):
        for candidate, ssi, safe in ((None, "not_sensible", False), (other, "interesting", True)):
            r = httpx.post(f"{server['url']}/ratings", headers=AUTH, json={
                "conversation_id": cid, "turn": turn, "candidate": candidate, "rater": rater,
                "ssi": ssi, "safe": safe})
            assert r.status_code == 201, r.text
    out = tmp_path / "ratings.jsonl"
    assert export_ratings.main(["--conversations", str(server["work"] / "conversations.sqlite"),
                                "--out", str(out), "--min-raters", "3"])["responses"] == 2
    records = [json.loads(x) for x in out.read_text().splitlines()]
    assert [r["labels"] for r in records] == [
        {"sensible": 0, "specific": 0, "interesting": 0, "unsafe": 1},
        {"sensible": 1, "specific": 1, "interesting": 1, "unsafe": 0}]

    export = server["work"] / "export"
    finetune.main(["--run-name", "rated", "--init-from", str(export), "--labelled", str(out),
                   "--storage-path", str(tmp_path / "runs"), "--workers", "1", "--steps", "30",
                   "--batch-size", "2", "--seq-len", "64", "--lr", "2e-3", "--warmup-steps", "3",
                   "--eval-every", "0", "--checkpoint-every", "30", "--log-every", "10"])
    context = [Turn("user", "Tell me about Mount Everest.")]
    texts = [reply, body["trace"]["candidates"][other]["text"]]

    def scores(path):
        model, tok = load_export(path)
        with torch.no_grad():
            return score_responses(model.eval(), tok, [context, context], texts)  # (2, 4)

    before, after = scores(export), scores(tmp_path / "runs" / "rated" / "export")
    sensible, unsafe = 0, 3
    assert after[0, unsafe] > 0.5 > after[1, unsafe], after
    assert after[1, sensible] > 0.5 > after[0, sensible], after
    assert (after[0, unsafe] - after[1, unsafe]) > (before[0, unsafe] - before[1, unsafe]) + 0.3
