"""A paired difference A − B over worlds × seeds × problems, with a 95 % bootstrap interval.

The data of one claim cell: per world w, the outcomes of method A's runs (its training seeds) on the
world's test problems, a matrix A_w [S_A, P_w] (0/1 per problem for a selection rule; a single column of
run-level values where no per-problem outcomes exist, e.g. a first-error F1), and B_w likewise. The estimate
is the mean over worlds of the per-world difference of means,

    θ = 1/W · Σ_w ( mean(A_w) − mean(B_w) ),

which is the mean over worlds of the seed-mean metric difference (a best-of-N accuracy is the mean of its
problems' outcomes).

The interval is a stratified two-way bootstrap. Within each world, independently, the seeds are resampled
with replacement and, independently of them, the problems with replacement (the "pigeonhole" bootstrap
for a crossed design, Owen 2007): every seed of a world is evaluated on the same problems, so a problem's
difficulty is shared by all of them, and resampling problems separately within each run would count that
shared noise as if it averaged out over seeds, giving intervals too narrow. When A and B come from the
same runs (two metrics of one run) the seeds are resampled jointly, so the seed effect cancels in the
difference, as it should in a paired comparison; when they come from different runs (two methods trained
on the same world) A's and B's seeds are resampled separately and the problems jointly. Worlds are strata,
not resampled: with three worlds a bootstrap over worlds is too coarse to mean anything (ten distinct
resamples), so the interval is about these worlds, over seeds and problems; how many worlds the claim
holds on stays a separate column (`iprm.analysis.claims`). The interval is the 2.5 and 97.5 percentiles
of θ over the resamples; a claim holds when it excludes 0.

The two-way bootstrap is conservative: each (seed, problem) cell's own noise enters through both margins.
On synthetic draws (3 worlds × 3 seeds × 200 problems, a known difference) its 95 % intervals covered the
truth 99–100 % of the time and were about 1.5× as wide as the estimate's true spread
(`tests/test_analysis_interval.py` checks the coverage); a claim it accepts is not a narrow escape.
"""

from dataclasses import dataclass

import numpy as np

RESAMPLES = 4000
LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    """θ = mean over worlds of mean(A) − mean(B), its bootstrap interval, and what was resampled."""

    estimate: float
    low: float
    high: float
    problems: bool  # whether problems were resampled (every world had per-problem outcomes)

    @property
    def verdict(self) -> str:
        """ "A > B" or "A < B" when the interval excludes 0, else "no"."""
        if self.low > 0:
            return "A > B"
        if self.high < 0:
            return "A < B"
        return "no"


@dataclass(frozen=True)
class F1Outcomes:
    """Per run × problem counts for the first-error F1 (the harmonic mean of the accuracy on erroneous and
    on fully correct samples): a run's F1 is a ratio of sums over problems, so it is recomputed from the
    resampled problems' counts rather than averaged. Each array is [S, P]."""

    hits_erroneous: np.ndarray
    erroneous: np.ndarray
    hits_correct: np.ndarray
    correct: np.ndarray

    @property
    def shape(self) -> tuple[int, int]:
        return self.erroneous.shape

    def per_run(self, problems: np.ndarray | None = None) -> np.ndarray:
        """F1 of every run [S] (no `problems`), or of every run under each resample's problems [R, S]."""
        sums = [x if problems is None else problems @ x.T for x in
                (self.hits_erroneous, self.erroneous, self.hits_correct, self.correct)]  # fmt: skip
        if problems is None:
            sums = [x.sum(axis=1) for x in sums]
        with np.errstate(invalid="ignore", divide="ignore"):
            a, b = sums[0] / sums[1], sums[2] / sums[3]
            return np.where((a > 0) & (b > 0), 2 * a * b / (a + b), 0.0)


def _estimate(side) -> float:
    return float(side.per_run().mean()) if isinstance(side, F1Outcomes) else float(side.mean())


def _resampled(side, seeds: np.ndarray, problems: np.ndarray) -> np.ndarray:
    """The side's statistic under each resample's seed and problem counts, [resamples]."""
    if isinstance(side, F1Outcomes):
        return (seeds * side.per_run(problems)).sum(axis=1) / side.shape[0]
    total = np.einsum("rs,sp,rp->r", seeds, side, problems)
    return total / (side.shape[0] * side.shape[1])


def _counts(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """[resamples, size]: how often each of `size` units is drawn in a resample of `size` with replacement."""
    return rng.multinomial(size, np.full(size, 1.0 / size), size=resamples)


def paired_difference(
    worlds: list[tuple],
    paired: bool,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Difference:
    """θ and its interval from per-world (A, B) outcomes — each an array [S, P] of per-problem outcomes (P = 1
    for run-level values) or an `F1Outcomes` — (see the module docstring). `paired`: A and B are two metrics
    of the same runs (row s of A and of B is one run), so their seeds are drawn together."""
    if not worlds:
        raise ValueError("no world has both A and B")
    rng = np.random.default_rng(seed)
    estimate, draws = 0.0, np.zeros(resamples)
    for a, b in worlds:
        a, b = (x if isinstance(x, F1Outcomes) else np.asarray(x, dtype=float) for x in (a, b))
        if a.shape[1] != b.shape[1] or (paired and a.shape[0] != b.shape[0]):
            raise ValueError(f"A {a.shape} and B {b.shape} do not pair up")
        estimate += _estimate(a) - _estimate(b)
        problems = _counts(rng, a.shape[1], resamples)
        seeds_a = _counts(rng, a.shape[0], resamples)
        seeds_b = seeds_a if paired else _counts(rng, b.shape[0], resamples)
        draws += _resampled(a, seeds_a, problems) - _resampled(b, seeds_b, problems)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws / len(worlds), [tail, 100 - tail])
    per_problem = all(a.shape[1] > 1 for a, _ in worlds)
    return Difference(estimate / len(worlds), float(low), float(high), per_problem)
