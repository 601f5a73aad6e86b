"""Synthetic traffic: seeded, streaming, the three models, duplicates and reordering."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest

from shardbill.rules import comms
from shardbill.workloads.synthetic import Traffic


def test_the_same_seed_gives_the_same_stream_and_another_seed_does_not() -> None:
    """Two runs with one seed are equal event for event; a new seed changes them."""
    a = list(Traffic(model="skewed", events=500, seed=3))
    b = list(Traffic(model="skewed", events=500, seed=3))
    c = list(Traffic(model="skewed", events=500, seed=4))
    assert a == b
    assert [e.account for e in a] != [e.account for e in c]


def test_uniform_gives_every_event_its_own_account_and_hot_one_account() -> None:
    """Uniform: all accounts distinct. Hot: a single account."""
    uniform = [e.account for e in Traffic(model="uniform", events=300, seed=1)]
    hot = {e.account for e in Traffic(model="hot", events=300, seed=1)}
    assert len(set(uniform)) == 300
    assert len(hot) == 1


def test_skewed_concentrates_traffic_on_few_accounts() -> None:
    """Zipf(1.1) over 10,000 accounts: the top 1% send well over a third of the events.

    For s = 1.1 and N = 10,000 the top 100 ranks hold H(100, 1.1) / H(10000, 1.1)
    = 3.77 / 5.11 = 74 % of the probability mass; with 20,000 seeded draws the
    sample share cannot fall below half unless the sampler is broken.
    """
    events = Traffic(model="skewed", events=20_000, seed=7, accounts=10_000)
    counts = Counter(e.account for e in events)
    top = sum(n for _, n in counts.most_common(100))
    assert top / 20_000 > 0.5


def test_duplicates_repeat_identical_events_and_add_about_the_fraction() -> None:
    """Re-deliveries are equal to their originals, and their number tracks the fraction."""
    traffic = Traffic(model="uniform", events=4000, seed=2, duplicate_fraction=0.1)
    delivered = list(traffic)
    distinct = list(traffic.distinct())
    by_id = {e.event_id: e for e in distinct}
    assert all(by_id[e.event_id] == e for e in delivered)
    extra = len(delivered) - len(distinct)
    assert 300 < extra < 500  # Binomial(4000, 0.1): mean 400, sd 19
    assert {e.event_id for e in delivered} == set(by_id)


def test_reordering_keeps_the_multiset_of_events() -> None:
    """Out-of-order delivery changes the order, never the events."""
    ordered = list(Traffic(model="skewed", events=1000, seed=5).distinct())
    shuffled = list(Traffic(model="skewed", events=1000, seed=5, reorder_window=50))
    assert shuffled != ordered
    assert sorted(e.event_id for e in shuffled) == sorted(e.event_id for e in ordered)


def test_generation_streams() -> None:
    """Taking a few events of a ten-million-event stream is immediate: nothing is built up front."""
    first = list(itertools.islice(Traffic(model="uniform", events=10_000_000, seed=1), 3))
    assert len(first) == 3


def test_the_example_rules_price_every_synthetic_event() -> None:
    """The comms rules accept the synthetic events of every model (no rejections)."""
    engine = comms.engine()
    for model in ("uniform", "skewed", "hot"):
        result = engine.price_batch(Traffic(model=model, events=500, seed=9))
        assert result.rejected == ()
        assert len(result.charges) >= 500


def test_bad_settings_name_the_field() -> None:
    """Fractions outside [0, 1) and unknown models are refused by name."""
    with pytest.raises(ValueError, match="duplicate_fraction"):
        Traffic(model="uniform", events=1, duplicate_fraction=1.5)
    with pytest.raises(ValueError, match="lukewarm"):
        Traffic(model="lukewarm", events=1)
