"""Reading a page once: a memo of reads, shared by everything a GET page asks (it writes and decides
nothing)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from contextvars import ContextVar

_page_reads: ContextVar[dict | None] = ContextVar("opsweb_page_reads", default=None)


@contextmanager
def one_reading():
    """Within it, what a page asks several times — an environment's approval rules, whether a
    person approves there or has decided on a run, a run's quorum — is read from the database
    once. For pages that change nothing (GETs): a decision that writes reads afresh, outside
    it. Nested uses share the outer memo."""
    if _page_reads.get() is not None:
        yield
        return
    token = _page_reads.set({})
    try:
        yield
    finally:
        _page_reads.reset(token)


def once(key: tuple, read):
    """``read()``, or within ``one_reading`` the value it gave for ``key`` before (or the
    value ``prime`` put there)."""
    memo = _page_reads.get()
    if memo is None:
        return read()
    if key not in memo:
        memo[key] = read()
    return memo[key]


def prime(values: Mapping[tuple, object]) -> None:
    """Within ``one_reading``, answer the reads named by ``values``' keys with its values:
    a page that shows many environments reads each kind of fact for all of them in one query
    (``opsweb.reading``) and the rules below decide from those facts as they would from their
    own reads. Outside ``one_reading`` it does nothing."""
    memo = _page_reads.get()
    if memo is not None:
        memo.update(values)


def primed(key: tuple):
    """The value ``prime`` gave ``key`` in this reading, or None."""
    memo = _page_reads.get()
    return None if memo is None else memo.get(key)


__all__ = [
    "one_reading",
    "once",
    "prime",
    "primed",
]
