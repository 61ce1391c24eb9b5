"""The statistics of the leaderboards: two-level cell summaries, confidence intervals, monotone ranks with ties,
gains, DD-Ranking's scores and the reproduction verdict (an equivalence test).

The unit of evidence about a method is the distilled set; evaluation seeds measure the evaluator. So a cell
(method, dataset, IPC, protocol, network, config) is summarised on two levels (`two_level`): the evaluations
of each set are averaged first, and the set means are the n of the interval, the ranks and Δ vs random.

- `interval`: the 95 % confidence interval of a cell's mean over its sets, Student t with n − 1 dof.
- `welch`: Welch's unequal-variance t-test of "a's mean is larger than b's" (one-sided) — cells differ in
  spread (selection rules vary less than generators) and in n, so the pooled-variance test is wrong, and a
  bootstrap of 3–6 sets has too few distinct resamples to mean anything.
- `rank_row`: ranks sorted by mean, ties chained to the cell above (monotone in the mean, by construction).
- `gain`: a difference of two means with its Welch interval; `ddranking_scores`: HLR / IOR / LRS.
- `reproduction`: measured vs reported, an equivalence test of the measured interval against ± a margin.
Definitions and the reasons for each choice: docs/leaderboards.md.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Hashable, Iterable, Mapping

from scipy import stats as _st

from .errors import ConfigError

LEVEL = 0.95      # confidence level of every interval
ALPHA = 0.05      # one-sided level of "significantly below the cell above" in the tie rule
MIN_RANKED = 3    # cells of fewer sets are shown, never ranked
MIN_GAIN = 2      # Δ needs an interval: at least 2 sets on both sides
MIN_VERDICT = 3   # a reproduction verdict needs at least 3 sets
MARGIN = 1.0      # default equivalence margin of the reproduction verdict (accuracy points)


@dataclass(frozen=True)
class Summary:
    """One cell: mean and sample std (n − 1) over its n distilled sets (each set = the mean of its evaluations);
    `evaluations` = all evaluations of all sets, `eval_std` = the sample std of the evaluations within a set
    (pooled over sets; what a 1-set cell shows as its spread); `family` = its protocol family."""
    mean: float
    std: float
    n: int
    family: str | None = None
    evaluations: int | None = None
    eval_std: float | None = None
    deterministic: bool = False   # several seeds gave one set: its evaluations are the units (`deterministic`)

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n)

    @property
    def shape(self) -> str:
        """"sets × evaluations per set" ("3 × 1"); "1 set × 3" for a single set."""
        if self.deterministic:
            return f"1 set (deterministic) × {self.n}"
        per = (self.evaluations or self.n) / self.n
        each = f"{per:.0f}" if per == int(per) else f"{per:.1f}"
        return f"1 set × {each}" if self.n == 1 else f"{self.n} × {each}"


def two_level(values: Iterable[tuple[Hashable, float]], family: str | None = None) -> Summary:
    """Summary of (set id, accuracy) pairs: evaluations averaged within each set, then over sets."""
    per_set: dict[Hashable, list[float]] = {}
    for set_id, v in values:
        per_set.setdefault(set_id, []).append(float(v))
    if not per_set:
        raise ConfigError("a cell needs at least one evaluation; got none")
    means = [statistics.fmean(v) for v in per_set.values()]
    std = statistics.stdev(means) if len(means) > 1 else 0.0
    within = [(len(v) - 1, statistics.variance(v)) for v in per_set.values() if len(v) > 1]
    dof = sum(d for d, _ in within)
    eval_std = math.sqrt(sum(d * var for d, var in within) / dof) if dof else None
    return Summary(statistics.fmean(means), std, len(means), family, sum(map(len, per_set.values())), eval_std)


def deterministic(values: Iterable[tuple[Hashable, Hashable, float]], family: str | None = None,
                  seeds: Iterable[Hashable] | None = None) -> Summary:
    """Summary of (seed, set id, accuracy) triples. When two or more distillation seeds gave one and the same set,
    the method is deterministic (a greedy selection rule, the whole split): that set is all the method can
    produce, so its evaluations are the units of the interval, the ranks and Δ. Otherwise `two_level`.
    `seeds`: every distillation seed behind the values, where a value stands for several (default: theirs)."""
    values = list(values)
    sets = {v[1] for v in values}
    seeds = set(seeds) if seeds is not None else {v[0] for v in values}
    if len(sets) == 1 and len(seeds) >= 2:
        s = two_level(((i, v[2]) for i, v in enumerate(values)), family)
        return Summary(s.mean, s.std, s.n, family, s.n, s.std, deterministic=True)
    return two_level(((v[1], v[2]) for v in values), family)


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided Student t critical value: P(|T_df| ≤ q) = level."""
    return float(_st.t.ppf(0.5 + level / 2, df))


def interval(s: Summary, level: float = LEVEL) -> float | None:
    """Half-width of the `level` confidence interval of the mean over sets (Student t, n − 1 dof); None for
    n < 2 (one set: its evaluation spread says nothing about other sets of the method)."""
    if s.n < 2:
        return None
    return t_quantile(s.n - 1, level) * s.sem


def welch_df(a: Summary, b: Summary) -> float:
    """Welch–Satterthwaite degrees of freedom (both n ≥ 2, not both variances 0)."""
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    return (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))


def welch_p(a: Summary, b: Summary) -> float:
    """One-sided p-value of Welch's test of H1: mean(a) > mean(b). Needs n ≥ 2 on both sides.
    Both stds 0 (every set gave the same number): the difference is exact, p = 0 if a > b else 1."""
    if a.n < 2 or b.n < 2:
        raise ConfigError(f"Welch's test needs at least 2 sets per cell, got n = {a.n} and {b.n}")
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    diff = a.mean - b.mean
    if se == 0.0:
        return 0.0 if diff > 0 else 1.0
    return float(_st.t.sf(diff / se, welch_df(a, b)))


# ---------------------------------------------------------------------------------------------- ranks

def rank_row(cells: Mapping[str, Summary], alpha: float = ALPHA) -> dict[str, int | None]:
    """Ranks of one table, monotone in the mean; None for a cell of fewer than MIN_RANKED sets.

    The rule: sort the ranked cells by mean (highest first); the first takes rank 1; each next cell shares the
    rank of the cell above it unless it is significantly below that cell (Welch, one-sided p < alpha), and
    then takes its position (1, 2, 2, 4, ...). A rank never decreases down the sorted list, so a higher mean
    never ranks below a lower one, and two equal means always tie (p ≥ 0.5). A rank therefore says "not
    significantly below the cell above"; a chain of ties may join cells that differ significantly from end to
    end. Refuses cells of two protocol families: hard- and soft-label numbers are never ranked together.
    """
    families = {s.family for s in cells.values() if s.family is not None}
    if len(families) > 1:
        raise ConfigError(f"refusing to rank cells of protocol families {', '.join(sorted(families))} together: "
                          "hard- and soft-label results belong to separate tables")
    ranks: dict[str, int | None] = {k: None for k, s in cells.items() if s.n < MIN_RANKED}
    order = sorted((k for k, s in cells.items() if s.n >= MIN_RANKED), key=lambda k: (-cells[k].mean, k))
    for position, k in enumerate(order, start=1):
        above = order[position - 2] if position > 1 else None
        tie = above is not None and welch_p(cells[above], cells[k]) >= alpha
        ranks[k] = ranks[above] if tie else position
    return ranks


# ---------------------------------------------------------------------------------------------- gains

@dataclass(frozen=True)
class Difference:
    value: float               # mean(a) − mean(b)
    half_width: float | None   # of its `LEVEL` Welch interval; None when a side has n < 2 sets


def gain(a: Summary, b: Summary, level: float = LEVEL) -> Difference:
    """mean(a) − mean(b) with its Welch confidence interval (unequal variances, Welch–Satterthwaite dof)."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(diff, None)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    if se == 0.0:
        return Difference(diff, 0.0)
    return Difference(diff, t_quantile(welch_df(a, b), level) * se)


# ---------------------------------------------------------------------------------------------- DD-Ranking

LRS_LAMBDA = 0.5  # DD-Ranking's default `lrs_lambda`


@dataclass(frozen=True)
class DDRankingScores:
    hlr: float | None   # hard-label recovery: full − set (hard labels), accuracy points; lower is better
    ior: float | None   # improvement over random: set − random (same label type), points; higher is better
    lrs: float | None   # label-robust score, the package's number (a plain number, not a %); higher is better


def ddranking_scores(full_hard: float | None, syn_hard: float | None, syn: float | None, random: float | None,
                     lam: float = LRS_LAMBDA) -> DDRankingScores:
    """DD-Ranking 0.2.0's scores from mean accuracies in %, exactly as `LabelRobustScoreHard/Soft.compute_metrics`
    (ddranking/metrics/hard_label.py and soft_label.py) compute them:

        hlr = full_hard − syn_hard;  ior = syn − random;  alpha = lam·ior − (1 − lam)·hlr
        lrs = (exp(alpha) − exp(−1)) / (exp(1) − exp(−1))

    `syn` and `random` are the set's and the random subset's accuracies under the table's own labels (hard in
    the hard-label class, soft in the soft-label one), `syn_hard` the set's hard-label accuracy. Percentages,
    because the package's own accuracies are (its `validate` returns top-1 × 100, its cached full-data
    accuracies are 56.5 and 46.4), so alpha is in points: LRS is ≈ −0.157 once HLR exceeds IOR by a few points
    and grows as exp(alpha) above. None where an input is missing; an LRS beyond a float is None (overflow)."""
    hlr = None if full_hard is None or syn_hard is None else full_hard - syn_hard
    ior = None if syn is None or random is None else syn - random
    if hlr is None or ior is None:
        return DDRankingScores(hlr, ior, None)
    alpha = lam * ior - (1 - lam) * hlr
    try:
        lrs = (math.exp(alpha) - math.exp(-1)) / (math.exp(1) - math.exp(-1))
    except OverflowError:
        lrs = None
    return DDRankingScores(hlr, ior, lrs)


# ---------------------------------------------------------------------------------------------- reproduction

VERDICTS = ("reproduced", "gap", "inconclusive", "too few sets", "not run")


@dataclass(frozen=True)
class Reproduction:
    delta: float | None        # measured − reported
    low: float | None          # the measured mean's interval, minus the reported number
    high: float | None
    verdict: str               # one of VERDICTS


def reproduction(measured: Summary | None, reported_mean: float, margin: float = MARGIN,
                 level: float = LEVEL) -> Reproduction:
    """Measured vs a paper's number, an equivalence test: the `level` interval of the measured mean over sets,
    minus the reported number, against ± `margin` points. Inside ± margin: reproduced; entirely outside:
    gap; overlapping an edge: inconclusive (more sets narrow it). The reported number is taken as fixed (a
    paper prints a mean; its std measures its own runs). Fewer than MIN_VERDICT sets: too few sets."""
    if margin <= 0:
        raise ConfigError(f"the reproduction margin must be a positive number of accuracy points, got {margin}")
    if measured is None:
        return Reproduction(None, None, None, "not run")
    delta = measured.mean - reported_mean
    half = interval(measured, level)
    if measured.n < MIN_VERDICT or half is None:
        return Reproduction(delta, None, None, "too few sets")
    low, high = delta - half, delta + half
    if -margin <= low and high <= margin:
        verdict = "reproduced"
    elif high < -margin or low > margin:
        verdict = "gap"
    else:
        verdict = "inconclusive"
    return Reproduction(delta, low, high, verdict)
