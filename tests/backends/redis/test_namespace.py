"""A namespace's unconfirmed operations: the latest per key, kept until confirmed."""

from __future__ import annotations

from loadercache.backends.redis._namespace import (
    MAX_OPERATIONS,
    Namespace,
    Reading,
)

A = b"lc:3:v1:{users}:i:1"
B = b"lc:3:v1:{users}:i:2"


def namespace() -> Namespace:
    return Namespace("users", b"lc:3:v1:{users}:")


def test_the_latest_operation_of_a_key_wins() -> None:
    ns = namespace()
    ns.prime(A, b"payload", 1000)
    ns.invalidate(A)
    override = ns.overrides(A)
    assert override is not None and override.kind == "del"
    ns.prime(A, b"again", None)
    override = ns.overrides(A)
    assert override is not None and (override.kind, override.payload) == (
        "prime",
        b"again",
    )


def test_a_confirmed_operation_goes_unless_a_newer_one_replaced_it() -> None:
    ns = namespace()
    ns.invalidate(A)
    ns.invalidate(B)
    sent = ns.take(1, primes=True)
    assert not ns.has_pending() and ns.has_unconfirmed()
    ns.prime(A, b"newer", None)  # made while the delete was in flight
    ns.confirmed(sent)
    override = ns.overrides(A)
    assert override is not None and override.kind == "prime"
    assert ns.overrides(B) is None


def test_a_failed_round_trip_gives_its_operations_back() -> None:
    ns = namespace()
    ns.invalidate(A)
    sent = ns.take(1, primes=True)
    ns.returned(sent)
    assert ns.has_pending()
    assert ns.take(2, primes=True) == sent


def test_primes_wait_for_the_generation_deletes_do_not() -> None:
    ns = namespace()
    ns.prime(A, b"p", None)
    ns.invalidate(B)
    assert [rkey for rkey, _ in ns.take(1, primes=False)] == [B]
    assert ns.has_unsent_primes()


def test_clear_all_forgets_earlier_operations_and_marks_loads_in_flight() -> None:
    ns = namespace()
    reading = Reading(None, {1: A}, ns.read_sent())
    ns.readings[None] = reading
    ns.invalidate(A)
    assert A in reading.cleared
    ns.clear_all()
    assert reading.cleared_all
    assert ns.overrides(A) is None
    assert ns.new_gen is not None and ns.gen == ns.new_gen
    sent_gen = ns.new_gen
    ns.new_gen_sent = 3
    ns.gen_confirmed(3)
    assert ns.new_gen is None and ns.gen == sent_gen


def test_too_many_deletes_become_one_clear_all_and_primes_survive() -> None:
    ns = namespace()
    ns.prime(A, b"kept", None)
    for key in range(MAX_OPERATIONS + 1):
        ns.invalidate(b"lc:3:v1:{users}:i:%d" % (1000 + key))
    assert ns.new_gen is not None
    # The new generation, the prime, and the delete made after the overflow.
    assert ns.pending_count() == 3
    override = ns.overrides(A)
    assert override is not None and override.payload == b"kept"


def test_a_created_generation_stands_for_reads_sent_before_it() -> None:
    ns = namespace()
    before = Reading(None, {}, ns.read_sent())
    ns.created_gen(b"t" * 8, ns.seq)
    after_seq = ns.read_sent()
    assert ns.tag_for(before) == b"t" * 8
    # A read sent after the creation that found none proves it lost.
    ns.read_answered(after_seq, None)
    assert ns.tag_for(before) is None
