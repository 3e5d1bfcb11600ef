"""Conversation affinity with bounded load (serve_apps.routing): the replicas a conversation's
call tries, in order, from its replicas in ring order and every replica's requests in flight."""

import pytest

from lamda.data import Turn
from serve_apps.chat import first_message_key
from serve_apps.routing import ConversationRouter, bounded_ranks


def test_a_conversation_keeps_to_its_replica_while_the_load_is_within_bounds():
    assert bounded_ranks(["a", "b", "c"], {"a": 5, "b": 1, "c": 3, "d": 2}, 4) == ["a", "b", "c"]
    assert bounded_ranks(["a", "b"], {"a": None, "b": 9}, 0) == ["a", "b"]  # unknown: within
    assert bounded_ranks(["a", "b"], {"a": None, "b": None}, 0) == ["a", "b"]


def test_an_overloaded_replica_is_passed_over_for_the_next_on_the_ring():
    assert bounded_ranks(["a", "b", "c"], {"a": 6, "b": 2, "c": 1, "d": 1}, 4) == ["b", "c", "d", "a"]
    assert bounded_ranks(["a", "b"], {"a": 3, "b": 2, "c": 0}, 1) == ["c", "a", "b"]  # the idlest
    assert bounded_ranks(["a", "b"], {"a": 3, "b": 0, "c": 0}, 1) == ["b", "c", "a"]


def test_a_bad_bound_is_refused():
    router = ConversationRouter.__new__(ConversationRouter)  # initialize_state alone
    with pytest.raises(ValueError, match="max_excess"):
        router.initialize_state(max_excess=-1)


def test_a_stateless_conversation_is_known_by_its_beginning():
    """The OpenAI API's requests name no conversation: the key is its turns up to the first user
    message, so a continuation keeps it and a shared system message does not merge two."""
    system, hi, bye = Turn("lamda", "Be brief."), Turn("user", "Hi!"), Turn("user", "Bye!")
    key = first_message_key([system, hi])
    assert first_message_key([system, hi, Turn("lamda", "Hello."), bye]) == key
    assert first_message_key([system, bye]) != key
    assert first_message_key([hi]) != key and first_message_key([]) == first_message_key([])
