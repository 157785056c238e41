"""Detectors on small seeded series: steps, trends and bends, noise (white and autocorrelated), spikes, cycles of
unknown period, sparse data, counter resets."""

import numpy as np
import pytest

from backend.regression.detectors import NotAnalysed, change_points, fdr, find_period

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


def test_a_trend_is_one_segment_and_a_bend_in_it_is_one_drift_with_its_rate():
    t = np.arange(400.0)
    trend = 100 + 0.5 * t + noise(400, 2, mean=0)
    assert change_points(trend) == []  # steady growth is not a staircase of steps
    bend = 100 + np.where(t < 250, 0.5 * t, 125 + 1.5 * (t - 250)) + noise(400, 2, mean=0, seed=3)
    (cp,) = change_points(bend)
    assert cp.kind == "drift" and abs(cp.index - 250) <= 8 and cp.rate == pytest.approx(1.5, abs=0.1)
    stepped = trend.copy()
    stepped[300:] += 60
    (cp,) = change_points(stepped)
    assert cp.kind == "step" and abs(cp.index - 300) <= 2


def test_autocorrelated_noise_and_changes_below_the_practical_floor_give_nothing():
    # a 5-minute rate queried every 15 s: each point shares 19/20 of its window with the next
    e = np.random.default_rng(2).normal(0, 1, 2019)
    smooth = 100 + np.convolve(e, np.ones(20) / 20, "valid")
    assert change_points(smooth) == []
    tiny = noise(600, 0.05)
    tiny[300:] *= 1.002  # +0.2 %: certain with this little noise, and not worth anyone's time
    assert change_points(tiny) == []
    assert len(change_points(tiny, min_effect=0.001)) == 1  # unless the series asks for it


def test_a_change_early_in_the_series_is_found_as_surely_as_a_late_one():
    x = np.concatenate([noise(60, 1), noise(540, 1, mean=130, seed=5)])
    (early,) = change_points(x)
    (late,) = change_points(x[::-1])
    assert early.index == 60 and late.index == 540


def test_a_sparse_series_of_mostly_zeros_is_not_all_significant():
    rng = np.random.default_rng(6)
    errors = (rng.uniform(size=2000) < 0.02).astype(float)  # an error count: mostly 0, now and then 1
    assert change_points(errors) == []
    failing = errors.copy()
    failing[500:700] = 1.0  # a sustained failure early on
    found = change_points(failing)
    assert [abs(c.index - i) <= 2 for c, i in zip(found, (500, 700))] == [True, True]


@pytest.mark.parametrize("period", [12, 24, 96, 288])
def test_the_period_of_a_cycle_is_found_and_a_cycle_alone_is_not_a_change(period):
    t = np.arange(period * 6)
    cyc = 100 + 20 * np.sin(2 * np.pi * t / period) + noise(t.size, 1, mean=0, seed=period)
    assert find_period(cyc) == period
    assert change_points(cyc) == []
    stepped = cyc.copy()
    stepped[period * 4 + 3:] += 15  # a step on top of the cycle: exactly one change, at the step
    (cp,) = change_points(stepped)
    assert abs(cp.index - (period * 4 + 3)) <= 2 and cp.kind == "step"
    assert find_period(noise(period * 6, 1)) is None


def test_an_evenly_spaced_staircase_is_steps_not_a_cycle():
    x = np.repeat([100.0, 110.0, 120.0, 130.0], 125) + noise(500, 2, mean=0)
    assert [round(c.index / 125) for c in change_points(x)] == [1, 2, 3]
    assert all(abs(c.index - 125 * round(c.index / 125)) <= 2 for c in change_points(x))


def test_a_given_season_overrides_the_search():
    t = np.arange(24 * 8)
    cyc = 100 + 20 * np.sin(2 * np.pi * t / 24) + noise(t.size, 1, mean=0)
    cyc[100:] += 12
    assert [c.index for c in change_points(cyc, period=24)] == [100]
    assert [c.index for c in change_points(cyc, period=0)] != [100]  # the cycle left in blurs the step


def test_benjamini_hochberg_controls_a_thousand_null_series():
    rng = np.random.default_rng(1)
    reject, adjusted = fdr(list(rng.uniform(size=1000)))
    assert sum(reject) <= 5  # ~0 expected; far below the 50 an uncorrected 5% would give
    reject, _ = fdr([1e-8, 0.2, 0.5])
    assert reject == [True, False, False]
    reject, adjusted = fdr([0.01, 0.04, 0.03, 0.005])  # the step-up rule by hand: p·m/rank, monotone from the top
    assert adjusted == pytest.approx([0.02, 0.04, 0.04, 0.02]) and reject == [True, True, True, True]
    assert fdr([0.01, 0.04, 0.03, 0.005], q=0.03)[0] == [True, False, False, True]
