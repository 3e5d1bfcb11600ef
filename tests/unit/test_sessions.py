"""Bounded per-conversation tool state: least recently used out when full, idle ones expire."""

from lamda.tools.retrieval import Retriever
from lamda.tools.sessions import Sessions
from lamda.data import Document


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def test_least_recently_used_goes_first_when_full():
    s = Sessions(list, max_sessions=2, clock=Clock())
    s.update("a", lambda v: v.append(1))
    s.update("b", lambda v: v.append(2))
    s.update("a", lambda v: v.append(3))  # a used last
    s.update("c", lambda v: None)  # b out
    assert len(s) == 2
    assert s.update("a", list) == [1, 3]
    assert s.update("b", list) == []  # new again


def test_idle_sessions_expire():
    clock = Clock()
    s = Sessions(dict, ttl_s=10, clock=clock)
    s.update("a", lambda v: v.setdefault("k", 1))
    clock.now = 5
    s.update("b", lambda v: None)
    clock.now = 12
    assert len(s) == 1  # a idle 12 s, b 7 s
    assert s.update("a", dict) == {}


def test_retriever_state_is_bounded_and_still_pages(tmp_path):
    r = Retriever(tmp_path / "i.sqlite", max_sessions=3)
    r.add([Document(f"d{i}", f"River {i}", f"The river number {i} flows.", f"https://x/{i}")
           for i in range(3)])
    for i in range(50):  # a session per request, as OpenAI clients without `user` get
        r.search("river flows", session=f"req-{i}")
    assert len(r.sessions) == 3
    first, second = r.search("river flows", "conv"), r.search("river flows", "conv")
    assert first != second  # the next result within one conversation
