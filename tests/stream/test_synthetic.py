"""The synthetic stream has the planted structure it promises."""

from __future__ import annotations

import numpy as np

from stream.synthetic import DAY, generate


def test_deterministic_and_ordered() -> None:
    a, b = generate(n_events=3000, seed=5), generate(n_events=3000, seed=5)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.ts, b.ts)
    assert np.all(np.diff(a.ts) > 0)
    assert not np.array_equal(a.item, generate(n_events=3000, seed=6).item)
    ids = [e.event_id for e in a.events()]
    assert len(set(ids)) == len(ids)


def test_power_law_popularity_and_arrivals() -> None:
    s = generate(n_events=40_000, seed=1)
    counts = np.sort(np.bincount(s.item))[::-1]
    head = counts[: len(counts) // 10].sum() / counts.sum()
    assert head > 0.4  # the top 10% of items take a large share
    first_seen = np.full(s.item.max() + 1, np.inf)
    np.minimum.at(first_seen, s.item, s.ts)
    late = first_seen > s.config.start + 0.5 * s.config.days * DAY
    assert late.sum() > 0.1 * len(first_seen)  # new items keep arriving


def test_daily_cycle() -> None:
    s = generate(n_events=40_000, seed=2)
    hours = np.bincount(((s.ts % DAY) // 3600).astype(int), minlength=24)
    assert hours[16:20].mean() > 3 * hours[2:6].mean()  # evening peak, night trough


def test_tastes_drive_choices_and_drift() -> None:
    s = generate(n_events=40_000, seed=3)
    topic = s.item_topic[s.item]
    before = s.ts < s.drift_time[s.user]
    top_before = s.taste_before[s.user[before]].argmax(axis=1)
    # users mostly consume their favourite taste (chance would be 1/n_topics)
    assert np.mean(topic[before] == top_before) > 0.3
    drifted = np.isfinite(s.drift_time)
    assert 0.2 < drifted.mean() < 0.4
    after = ~before
    top_after = s.taste_after[s.user[after]].argmax(axis=1)
    assert np.mean(topic[after] == top_after) > 0.3
