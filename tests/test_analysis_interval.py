"""The claims' bootstrap interval against cases with a known answer."""

import numpy as np
import pytest

from iprm.analysis.interval import F1Outcomes, paired_difference


def test_one_run_gives_the_textbook_interval_of_a_mean():
    """One world, one seed: only problems are resampled, so the interval is the ordinary bootstrap of the
    mean of the 400 paired differences d_p ∈ {−1, 0, 1}: mean ± 1.96 · sd / √400 (sd with divisor P, the
    bootstrap's), to the bootstrap's own noise."""
    d = np.random.default_rng(0).choice([-1.0, 0.0, 0.0, 1.0, 1.0], size=400)
    result = paired_difference([(d[None, :], np.zeros((1, 400)))], paired=True, resamples=20000)
    half = 1.96 * d.std() / 20
    assert result.estimate == pytest.approx(d.mean())
    assert result.low == pytest.approx(d.mean() - half, abs=0.006)
    assert result.high == pytest.approx(d.mean() + half, abs=0.006)
    assert result.problems and result.verdict == "A > B"


def test_run_level_values_resample_seeds_only():
    """A single column per world (a run-level metric such as F1): seeds alone vary. Identical seeds give a
    zero-width interval at the difference; A below B everywhere is the reverse verdict."""
    worlds = [(np.full((3, 1), 0.4), np.full((3, 1), 0.5)), (np.full((2, 1), 0.3), np.full((2, 1), 0.5))]
    result = paired_difference(worlds, paired=False)
    assert (result.estimate, result.low, result.high) == pytest.approx((-0.15, -0.15, -0.15))
    assert not result.problems and result.verdict == "A < B"


def _synthetic_worlds(rng, effect: float, seed_sd: float = 0.02) -> list[tuple[np.ndarray, np.ndarray]]:
    """3 worlds × 3 seeds × 150 problems: B right with the problem's probability p, A with p + effect +
    a seed offset; the true difference, given these problems, is `effect`."""
    worlds = []
    for _ in range(3):
        p = rng.uniform(0.2, 0.9, 150)
        offsets = rng.normal(0, seed_sd, (3, 1))
        a = rng.random((3, 150)) < p + effect + offsets
        b = rng.random((3, 150)) < p
        worlds.append((a, b))
    return worlds


@pytest.mark.parametrize("paired", [True, False])
def test_the_interval_covers_the_true_difference_at_least_95_percent_of_the_time(paired):
    """Over 120 synthetic draws the 95 % interval contains the true 0.1 at least ~95 % of the time (measured:
    0.99–1.0, the two-way bootstrap is conservative), and is not vacuous: it excludes 0 in most draws."""
    rng = np.random.default_rng(1)
    results = [
        paired_difference(_synthetic_worlds(rng, 0.1), paired=paired, resamples=400, seed=i)
        for i in range(120)
    ]
    coverage = np.mean([r.low <= 0.1 <= r.high for r in results])
    assert coverage >= 0.92
    assert np.mean([r.verdict == "A > B" for r in results]) > 0.5


def test_pairs_that_do_not_match_are_refused():
    with pytest.raises(ValueError, match="do not pair up"):
        paired_difference([(np.zeros((2, 5)), np.zeros((3, 5)))], paired=True)
    with pytest.raises(ValueError, match="no world"):
        paired_difference([], paired=True)


def test_a_first_error_f1_is_recomputed_from_the_resampled_problems_counts():
    """One run, 4 problems of one erroneous and one correct sample each. A hits 3/4 erroneous and 4/4 correct:
    F1 = 2·0.75·1 / 1.75 = 6/7; B hits 2/4 and 4/4: F1 = 2/3. Identical sides: a zero-width interval at 0."""
    ones = np.ones((1, 4))
    a = F1Outcomes(np.array([[1, 1, 1, 0]]), ones, ones, ones)
    b = F1Outcomes(np.array([[1, 1, 0, 0]]), ones, ones, ones)
    assert a.per_run() == pytest.approx([6 / 7]) and b.per_run() == pytest.approx([2 / 3])
    result = paired_difference([(a, b)], paired=True, resamples=2000)
    assert result.estimate == pytest.approx(6 / 7 - 2 / 3) and result.problems
    assert result.low <= result.estimate <= result.high and result.high > result.low
    same = paired_difference([(a, a)], paired=True)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
