import time

from lamda.tools import Toolset


def test_order_is_calculator_translator_retrieval():
    ts = Toolset(retriever=lambda q, s: [f"doc about {q} https://example.org/x"],
                 translator=lambda q: ["tr"])
    assert ts("135+7721") == ["7856", "tr", "doc about 135+7721 https://example.org/x"]
    assert [c.tool for c in ts.run("x")] == ["calculator", "translator", "retrieval"]


def test_a_failing_or_slow_tool_contributes_nothing():
    def broken(q):
        raise RuntimeError("backend down")

    def slow(q, s):
        time.sleep(5)
        return ["late"]

    ts = Toolset(retriever=slow, translator=broken, timeout_s=0.3)
    t0 = time.perf_counter()
    calls = ts.run("2+2")
    assert time.perf_counter() - t0 < 2
    assert [(c.tool, c.results) for c in calls] == [("calculator", ["4"]), ("translator", []),
                                                    ("retrieval", [])]
    assert "backend down" in calls[1].error and calls[2].error == "timeout"
    assert ts("2+2") == ["4"]


def test_without_an_index_there_is_no_retrieval():
    assert [c.tool for c in Toolset(translator=lambda q: []).run("x")] == ["calculator", "translator"]
