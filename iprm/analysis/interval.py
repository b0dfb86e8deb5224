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


def _counts(rng: np.random.Generator, size: int, resamples: int) -> np.ndarray:
    """[resamples, size]: how often each of `size` units is drawn in a resample of `size` with replacement."""
    return rng.multinomial(size, np.full(size, 1.0 / size), size=resamples)


def _resampled_mean(matrix: np.ndarray, seeds: np.ndarray, problems: np.ndarray) -> np.ndarray:
    """Mean of `matrix` [S, P] over each resample's drawn seeds × drawn problems, [resamples]."""
    total = np.einsum("rs,sp,rp->r", seeds, matrix, problems)
    return total / (matrix.shape[0] * matrix.shape[1])


def paired_difference(
    worlds: list[tuple[np.ndarray, np.ndarray]],
    paired: bool,
    resamples: int = RESAMPLES,
    seed: int = 0,
    level: float = LEVEL,
) -> Difference:
    """θ and its interval from per-world (A [S_A, P], B [S_B, P]) outcome matrices (see the module
    docstring). `paired`: A and B are two metrics of the same runs (row s of A and of B is one run)."""
    if not worlds:
        raise ValueError("no world has both A and B")
    rng = np.random.default_rng(seed)
    estimate, draws = 0.0, np.zeros(resamples)
    for a, b in worlds:
        a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
        if a.shape[1] != b.shape[1] or (paired and a.shape != b.shape):
            raise ValueError(f"A {a.shape} and B {b.shape} do not pair up")
        estimate += a.mean() - b.mean()
        problems = _counts(rng, a.shape[1], resamples)
        if paired:
            draws += _resampled_mean(a - b, _counts(rng, a.shape[0], resamples), problems)
        else:
            seeds_a, seeds_b = _counts(rng, a.shape[0], resamples), _counts(rng, b.shape[0], resamples)
            draws += _resampled_mean(a, seeds_a, problems) - _resampled_mean(b, seeds_b, problems)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(draws / len(worlds), [tail, 100 - tail])
    per_problem = all(a.shape[1] > 1 for a, _ in worlds)
    return Difference(estimate / len(worlds), float(low), float(high), per_problem)
