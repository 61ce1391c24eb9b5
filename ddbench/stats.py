"""The statistics of the leaderboards: confidence intervals, ranks with ties, gains and reproduction verdicts.

Everything works on summaries (mean, sample std, n) of one cell = every run of one (method, dataset, IPC,
protocol, network, config): distillation seeds × evaluation seeds, each run one number.

- `interval`: the 95 % confidence interval of a cell's mean, Student t with n − 1 degrees of freedom.
- `welch`: Welch's unequal-variance t-test of "a's mean is larger than b's" (one-sided) — cells of one row
  differ in spread (selection rules vary less than generators) and in n, so the pooled-variance test is wrong,
  and a bootstrap of 3–6 runs has too few distinct resamples to mean anything.
- `rank_row`: ranks with ties (rule below); `gain`: a difference of two means with its Welch interval;
  `reproduction`: measured vs reported, z = Δ / combined std, and a verdict.
Definitions and the reasons for each choice: docs/leaderboards.md.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping

from scipy import stats as _st

from .errors import ConfigError

LEVEL = 0.95      # confidence level of every interval
ALPHA = 0.05      # one-sided level of "significantly worse" in the tie rule
MIN_RANKED = 3    # cells with fewer runs are marked, not ranked


@dataclass(frozen=True)
class Summary:
    """One cell's runs: mean, sample std (n − 1), n; `family` = its protocol family ("hard" | "soft")."""
    mean: float
    std: float
    n: int
    family: str | None = None

    @property
    def sem(self) -> float:
        return self.std / math.sqrt(self.n)


def t_quantile(df: float, level: float = LEVEL) -> float:
    """Two-sided Student t critical value: P(|T_df| ≤ q) = level."""
    return float(_st.t.ppf(0.5 + level / 2, df))


def interval(s: Summary, level: float = LEVEL) -> float | None:
    """Half-width of the `level` confidence interval of the mean (Student t, n − 1 dof); None when n < 2."""
    if s.n < 2:
        return None
    return t_quantile(s.n - 1, level) * s.sem


def welch_df(a: Summary, b: Summary) -> float:
    """Welch–Satterthwaite degrees of freedom (both n ≥ 2, not both variances 0)."""
    va, vb = a.std ** 2 / a.n, b.std ** 2 / b.n
    return (va + vb) ** 2 / (va ** 2 / (a.n - 1) + vb ** 2 / (b.n - 1))


def welch_p(a: Summary, b: Summary) -> float:
    """One-sided p-value of Welch's test of H1: mean(a) > mean(b). Needs n ≥ 2 on both sides.
    Both stds 0 (every run gave the same number): the difference is exact, p = 0 if a > b else 1."""
    if a.n < 2 or b.n < 2:
        raise ConfigError(f"Welch's test needs at least 2 runs per cell, got n = {a.n} and {b.n}")
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    diff = a.mean - b.mean
    if se == 0.0:
        return 0.0 if diff > 0 else 1.0
    return float(_st.t.sf(diff / se, welch_df(a, b)))


# ---------------------------------------------------------------------------------------------- ranks

def rank_row(cells: Mapping[str, Summary], alpha: float = ALPHA) -> dict[str, int | None]:
    """Ranks of one row with ties; None for a cell with n < MIN_RANKED (marked, never ranked).

    The rule: the cell with the highest mean and every cell not significantly worse than it (Welch, one-sided
    p ≥ alpha) share rank 1; those cells are set aside and the rule repeats on the rest, the next group
    taking rank 1 + the number of cells ranked before it (1, 1, 3, ...). Refuses cells of two protocol
    families: hard- and soft-label numbers are never ranked together.
    """
    families = {s.family for s in cells.values() if s.family is not None}
    if len(families) > 1:
        raise ConfigError(f"refusing to rank cells of protocol families {', '.join(sorted(families))} together: "
                          "hard- and soft-label results belong to separate tables")
    ranks: dict[str, int | None] = {k: None for k, s in cells.items() if s.n < MIN_RANKED}
    left = sorted((k for k, s in cells.items() if s.n >= MIN_RANKED), key=lambda k: (-cells[k].mean, k))
    placed = 0
    while left:
        best = cells[left[0]]
        group = [k for k in left if k == left[0] or welch_p(best, cells[k]) >= alpha]
        for k in group:
            ranks[k] = placed + 1
        placed += len(group)
        left = [k for k in left if k not in group]
    return ranks


# ---------------------------------------------------------------------------------------------- gains

@dataclass(frozen=True)
class Difference:
    value: float               # mean(a) − mean(b)
    half_width: float | None   # of its `LEVEL` Welch interval; None when a side has n < 2


def gain(a: Summary, b: Summary, level: float = LEVEL) -> Difference:
    """mean(a) − mean(b) with its Welch confidence interval (unequal variances, Welch–Satterthwaite dof)."""
    diff = a.mean - b.mean
    if a.n < 2 or b.n < 2:
        return Difference(diff, None)
    se = math.sqrt(a.std ** 2 / a.n + b.std ** 2 / b.n)
    if se == 0.0:
        return Difference(diff, 0.0)
    return Difference(diff, t_quantile(welch_df(a, b), level) * se)


# ---------------------------------------------------------------------------------------------- reproduction

VERDICTS = ("reproduced", "within 2σ", "gap", "no spread", "not run")


@dataclass(frozen=True)
class Reproduction:
    delta: float | None        # measured − reported
    z: float | None            # delta / combined std
    verdict: str               # one of VERDICTS


def reproduction(measured: Summary | None, reported_mean: float, reported_std: float | None) -> Reproduction:
    """Measured vs a paper's number. z = Δ / sqrt(std_measured² + std_reported²) — both stds are spreads of
    single runs (the papers print the std over their runs, not a standard error), so Δ is compared with the
    spread of one run of each. A missing paper std counts as 0 (only the measured spread is used).
    |z| ≤ 1: reproduced; ≤ 2: within 2σ; else: gap. No measured cell: not run; both spreads 0: no spread."""
    if measured is None:
        return Reproduction(None, None, "not run")
    delta = measured.mean - reported_mean
    combined = math.sqrt(measured.std ** 2 + (reported_std or 0.0) ** 2)
    if combined == 0.0:
        return Reproduction(delta, None, "no spread")
    z = delta / combined
    return Reproduction(delta, z, "reproduced" if abs(z) <= 1 else "within 2σ" if abs(z) <= 2 else "gap")
