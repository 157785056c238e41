"""Detectors on small seeded series: a step, pure noise, one spike, a seasonal pattern, a counter reset."""

import numpy as np
import pytest

from backend.regression.detectors import NotAnalysed, change_points, fdr, seasonal_anomaly, window_comparison

RNG = np.random.default_rng(7)


def noise(n, sigma=1.0, mean=100.0, seed=7):
    return np.random.default_rng(seed).normal(mean, sigma, n)


def test_a_step_is_found_at_its_index_with_levels_and_intervals():
    x = np.concatenate([noise(200, 2), noise(200, 2, mean=112, seed=8)])
    (cp,) = change_points(x)
    assert abs(cp.index - 200) <= 2
    assert cp.before == pytest.approx(100, abs=0.6) and cp.after == pytest.approx(112, abs=0.6)
    assert cp.ci_before[0] < cp.before < cp.ci_before[1]
    assert cp.relative_change == pytest.approx(0.12, abs=0.01) and cp.p_value < 1e-6


def test_sigma_zero_steps_are_exact_and_constant_series_not_analysed():
    x = np.array([100.0] * 50 + [120.0] * 50 + [90.0] * 50)
    assert [c.index for c in change_points(x)] == [50, 100]
    with pytest.raises(NotAnalysed, match="constant"):
        change_points([5.0] * 100)


@pytest.mark.parametrize("seed", range(5))
def test_pure_noise_gives_nothing(seed):
    assert change_points(noise(1000, 3, seed=seed)) == []


@pytest.mark.parametrize("where", [2, 100, 197])
def test_a_single_spike_is_never_a_change(where):
    x = noise(200, 1)
    x[where] += 50
    assert change_points(x) == []
    flat = np.full(200, 100.0)
    flat[where] = 150.0
    assert change_points(flat) == []


def test_counter_resets_missing_points_and_short_series_are_explained():
    with pytest.raises(NotAnalysed, match="counter reset at point 3"):
        change_points([1, 2, 3, 1, 2, 3, 4, 5, 6, 7, 8, 9], counter=True)
    with pytest.raises(NotAnalysed, match="too short"):
        change_points([1.0, 2.0, 3.0])
    with pytest.raises(NotAnalysed, match="no finite values"):
        change_points([np.nan, np.inf])
    x = np.concatenate([noise(100, 1), noise(100, 1, mean=110, seed=9)])
    x[[5, 50, 150]] = np.nan  # missing points are dropped, not fatal
    assert len(change_points(x)) == 1


def test_window_comparison_has_an_effect_floor():
    base = noise(300, 1)
    assert window_comparison(np.concatenate([base, noise(50, 1, mean=108, seed=3)]), recent=50).p_value < 1e-6
    assert window_comparison(np.concatenate([base, noise(50, 1, mean=100.5, seed=3)]), recent=50) is None


def test_daily_cycles_do_not_alert_but_a_break_in_them_does():
    t = np.arange(24 * 14)
    daily = 100 + 20 * np.sin(2 * np.pi * t / 24) + noise(t.size, 1, mean=0)
    assert seasonal_anomaly(daily, period=24, recent=24) is None
    broken = daily.copy()
    broken[-12:] += 15
    found = seasonal_anomaly(broken, period=24, recent=24)
    assert found is not None and found.p_value < 1e-3


def test_benjamini_hochberg_controls_a_thousand_null_series():
    rng = np.random.default_rng(1)
    reject, adjusted = fdr(list(rng.uniform(size=1000)))
    assert sum(reject) <= 5  # ~0 expected; far below the 50 an uncorrected 5% would give
    reject, _ = fdr([1e-8, 0.2, 0.5])
    assert reject == [True, False, False]
