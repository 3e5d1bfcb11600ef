"""ConversationStore on SQLite and on a real PostgreSQL server: history, all-or-nothing appends,
concurrent appends to one conversation, and a clear error when the database is down."""

import concurrent.futures as cf
import time

import pytest

from lamda.conversations import ConversationStore, StoreUnavailable
from lamda.data import Turn


@pytest.fixture(params=["sqlite", "postgresql"])
def store(request, tmp_path):
    if request.param == "sqlite":
        s = ConversationStore(tmp_path / "c.sqlite", max_turns=4)
    else:
        s = ConversationStore(request.getfixturevalue("postgres").url, max_turns=4)
    yield s
    s.close()


def test_history_keeps_the_latest_turns_in_order(store):
    cid = store.new_id()
    assert store.history(cid) == []
    for i in range(3):
        store.append(cid, [Turn("user", f"q{i}"), Turn("lamda", f"a{i}")])
    assert store.history(cid) == [Turn("user", "q1"), Turn("lamda", "a1"),
                                  Turn("user", "q2"), Turn("lamda", "a2")]
    assert store.history(store.new_id()) == []


def test_a_failed_append_writes_nothing(store):
    cid = store.new_id()
    store.append(cid, [Turn("user", "hi")])
    with pytest.raises(Exception):
        store.append(cid, [Turn("user", "kept?"), Turn("lamda", None)])  # NOT NULL fails 2nd row
    assert store.history(cid) == [Turn("user", "hi")]


def test_concurrent_appends_to_one_conversation_all_land(store):
    cid = store.new_id()
    store.max_turns = 100
    with cf.ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda i: store.append(cid, [Turn("user", f"q{i}"), Turn("lamda", f"a{i}")]),
                      range(24)))
    turns = store.history(cid)
    assert len(turns) == 48
    for q, a in zip(turns[::2], turns[1::2]):  # each pair stayed together
        assert q.text[1:] == a.text[1:]


def test_an_unreachable_postgres_is_a_clear_error_within_the_timeout():
    from tests.integration.conftest import free_port
    t0 = time.monotonic()
    store = ConversationStore(f"postgresql://lamda:secret@127.0.0.1:{free_port()}/x", timeout_s=1)
    with pytest.raises(StoreUnavailable) as e:
        store.history("c")
    assert "127.0.0.1" in str(e.value) and "secret" not in str(e.value)
    assert time.monotonic() - t0 < 10
    store.close()


def test_a_restarted_postgres_is_reconnected_to(postgres):
    store = ConversationStore(postgres.url, timeout_s=2)
    cid = store.new_id()
    store.append(cid, [Turn("user", "before")])
    postgres.stop()
    try:
        with pytest.raises(StoreUnavailable):
            store.append(cid, [Turn("user", "during")])
    finally:
        postgres.start()
    store.append(cid, [Turn("user", "after")])
    assert [t.text for t in store.history(cid)] == ["before", "after"]
    store.close()


def test_traces_and_ratings_are_kept_with_the_conversation(store):
    from lamda.conversations import NotFound
    from lamda.ratings import REPLY, Rating
    cid = store.new_id()
    assert store.append(cid, [Turn("user", "hi"), Turn("lamda", "hello")],
                        {"candidates": [{"text": "hello"}, {"text": "hey"}]}) == 0
    assert store.append(cid, [Turn("user", "more")]) == 2
    turns = store.conversation(cid)
    assert [(t["index"], t["speaker"]) for t in turns] == [(0, "user"), (1, "lamda"), (2, "user")]
    assert turns[1]["trace"]["candidates"][1]["text"] == "hey" and turns[0]["trace"] is None
    stored = store.add_rating(Rating(cid, 1, 1, "ann", "key", "specific", True, None, False, "n"))
    assert stored.id and stored.created > 0 and store.response(cid, 1, 1) == "hey"
    assert store.ratings(cid) == [stored] and store.ratings() == [stored]
    for turn, candidate in ((0, REPLY), (2, REPLY), (7, REPLY), (1, 2)):  # user turns, no such
        with pytest.raises(NotFound):
            store.add_rating(Rating(cid, turn, candidate, "ann", "key", "sensible", True))
    assert store.ratings(cid) == [stored]
