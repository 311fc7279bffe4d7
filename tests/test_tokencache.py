"""The verified-token cache: a hit only for the same header, within the token's own time and
the cache's age, and never more entries than its bound."""

from __future__ import annotations

import pytest

from axrisi.web import tokencache
from axrisi.web.tokencache import VerifiedTokens


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(1_000_000.0)
    monkeypatch.setattr(tokencache.time, "time", fake.time)
    return fake


def test_a_remembered_token_proves_its_user(clock: Clock) -> None:
    tokens = VerifiedTokens()
    tokens.remember("Bearer a.b.c", {"sub": "alice", "exp": clock.now + 3600})
    assert tokens.user("Bearer a.b.c") == "alice"
    assert tokens.user("Bearer a.b.d") is None  # another (or altered) token: verified in full
    assert tokens.user("bearer a.b.c") is None


def test_an_expired_token_misses(clock: Clock) -> None:
    tokens = VerifiedTokens()
    tokens.remember("Bearer t", {"sub": "alice", "exp": clock.now + 5})
    clock.now += 5
    assert tokens.user("Bearer t") is None
    clock.now -= 5
    assert tokens.user("Bearer t") is None  # dropped, not kept for later


def test_not_before_is_checked(clock: Clock) -> None:
    tokens = VerifiedTokens()
    tokens.remember("Bearer t", {"sub": "alice", "exp": clock.now + 100, "nbf": clock.now + 1})
    assert tokens.user("Bearer t") is None


def test_an_entry_lives_at_most_max_age(clock: Clock) -> None:
    tokens = VerifiedTokens(max_age=60)
    tokens.remember("Bearer t", {"sub": "alice", "exp": clock.now + 3600})
    clock.now += 59
    assert tokens.user("Bearer t") == "alice"
    clock.now += 1
    assert tokens.user("Bearer t") is None


def test_claims_without_exp_or_sub_are_not_kept(clock: Clock) -> None:
    tokens = VerifiedTokens()
    tokens.remember("Bearer t", {"sub": "alice"})
    tokens.remember("Bearer u", {"exp": clock.now + 100})
    assert tokens.user("Bearer t") is None and tokens.user("Bearer u") is None


def test_the_oldest_entries_go_first(clock: Clock) -> None:
    tokens = VerifiedTokens(max_entries=3)
    for n in range(5):
        tokens.remember(f"Bearer {n}", {"sub": f"u{n}", "exp": clock.now + 100})
    assert [tokens.user(f"Bearer {n}") for n in range(5)] == [None, None, "u2", "u3", "u4"]
