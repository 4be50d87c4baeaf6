"""Hypothesis strategies for grouped data, hard cases included.

    from hypothesis import given
    from mixbridge.testing.strategies import grouped_data

    @given(grouped_data(family="gaussian"))
    def test_mine_matches_lme4(d):
        fit = my_lmer(d.formula(), d.data)
        ...

Each example is a `GroupedData`: 2-60 groups of 1-200 rows (heavily unbalanced allowed), a
between/within sd ratio from 1e-3 to 1e3 (boundary fits occur), 0-3 covariates, a gaussian,
binomial or poisson response, optional prior weights. Values are drawn from a numpy generator
seeded by hypothesis, so examples shrink (fewer groups, smaller sizes, simpler seeds) and
`describe()` prints everything needed to rebuild the data set.

`mixed_data()` adds the random-effects structure: scalar `(1 | g)`, correlated `(x1 | g)`,
uncorrelated `(x1 || g)` and `(x1 + x2 || g)`, `(1 | g) + (0 + x1 | g)`, crossed
`(1 | g) + (1 | h)`, nested `(1 | g/n)` and three terms `(x1 | g) + (1 | h) + (1 | k)`, each
drawn as a boundary case (the true variance of the slopes, or of the last term, is 0) or not;
`d.formula()` then has that random part.

Profiles: "ci" (derandomized, few examples, no deadline) and "thorough"; `register_profiles()`
registers them, `profile_settings()` returns the one named by HYPOTHESIS_PROFILE (default "ci").
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

FAMILIES = ("gaussian", "binomial", "poisson")

# Random-effects structures `mixed_data` draws (x1, x2: covariates; h crossed with g, k a third
# crossed factor, n nested in g).
STRUCTURES = {
    "scalar": "(1 | g)",
    "corr_slope": "(x1 | g)",
    "diag_slope": "(x1 || g)",
    "diag_two_slopes": "(x1 + x2 || g)",
    "int_plus_slope": "(1 | g) + (0 + x1 | g)",
    "crossed": "(1 | g) + (1 | h)",
    "nested": "(1 | g/n)",
    "three_terms": "(x1 | g) + (1 | h) + (1 | k)",
}
SLOPE_STRUCTURES = ("corr_slope", "diag_slope", "diag_two_slopes", "int_plus_slope", "three_terms")

# Example counts per property: "ci" keeps the whole property suite near 90 s on 2 cores with live
# R calls; "thorough" is for a nightly / local run.
CI_EXAMPLES = 5
THOROUGH_EXAMPLES = 100


def register_profiles() -> None:
    common = dict(
        deadline=None,  # R calls and optimizers vary in time: never fail on timing
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
        print_blob=True,
    )
    # ci: the same examples on every machine, no example database (a failure found locally
    # is pinned as an explicit regression test, not replayed from .hypothesis/)
    settings.register_profile(
        "ci", max_examples=CI_EXAMPLES, derandomize=True, database=None, **common
    )
    settings.register_profile("thorough", max_examples=THOROUGH_EXAMPLES, **common)


def profile_name() -> str:
    return os.environ.get("HYPOTHESIS_PROFILE", "ci")


def profile_settings(max_examples: int | None = None) -> settings:
    """The active profile (HYPOTHESIS_PROFILE, default "ci"), optionally with fewer examples
    for an expensive property in the ci profile."""
    register_profiles()
    base = settings.get_profile(profile_name())
    if max_examples is not None and profile_name() == "ci":
        return settings(base, max_examples=max_examples)
    return base


@dataclass
class GroupedData:
    """One generated data set: `data` has columns y (or s, f), x1..xk, g and maybe w."""

    data: pd.DataFrame
    family: str
    covariates: list[str]
    sizes: list[int]
    sd_ratio: float
    seed: int
    weights: str | None = None
    structure: str = "scalar"  # a key of STRUCTURES
    boundary: bool = False  # drawn with the slopes' (or the last term's) true variance 0
    slope_sd: float = 0.5  # true sd of the slopes (slope structures, not boundary)
    trials: int = 1

    @property
    def response(self) -> str:
        return "cbind(s, f)" if "s" in self.data.columns else "y"

    def formula(self, random: str | None = None, intercept_only: bool = False) -> str:
        """The model formula; `random` defaults to the data's structure (`(1 | g)` for
        `grouped_data`)."""
        fixed = " + ".join(["1"] + ([] if intercept_only else self.covariates))
        return f"{self.response} ~ {fixed} + {random or STRUCTURES[self.structure]}"

    @property
    def n_groups(self) -> int:
        return len(self.sizes)

    def describe(self) -> str:
        return (
            f"GroupedData(family={self.family}, groups={self.n_groups}, sizes={self.sizes}, "
            f"sd_ratio={self.sd_ratio!r}, covariates={self.covariates}, "
            f"weights={self.weights}, seed={self.seed}, n={len(self.data)}, "
            f"structure={self.structure}, boundary={self.boundary}, "
            f"slope_sd={self.slope_sd!r}, trials={self.trials})"
        )


def rebuild(
    family: str,
    sizes: list[int],
    sd_ratio: float,
    covariates: list[str],
    seed: int,
    structure: str = "scalar",
    boundary: bool = False,
    slope_sd: float = 0.5,
    weights: str | None = None,
    trials: int = 1,
) -> GroupedData:
    """The data set a `describe()` line names (its fields as keyword arguments; floats are
    printed exactly), e.g. to pin a failing generated example as a regression test."""
    return _make(
        list(sizes), family, len(covariates), sd_ratio, seed, weights is not None, trials,
        structure, boundary, slope_sd,
    )  # fmt: skip


def _make(
    sizes: list[int],
    family: str,
    n_cov: int,
    sd_ratio: float,
    seed: int,
    weighted: bool,
    trials: int,
    structure: str = "scalar",
    boundary: bool = False,
    slope_sd: float = 0.5,
) -> GroupedData:
    if structure not in STRUCTURES:
        raise ValueError(f"structure must be one of {sorted(STRUCTURES)}, got {structure!r}")
    rng = np.random.default_rng(seed)
    n_groups = len(sizes)
    labels = [f"G{j:02d}" for j in range(n_groups)]
    g = np.repeat(np.arange(n_groups), sizes)
    n = len(g)
    covariates = [f"x{k + 1}" for k in range(n_cov)]
    X = rng.normal(size=(n, n_cov))
    beta = rng.normal(0.0, 0.5, n_cov)
    frame = {c: X[:, k] for k, c in enumerate(covariates)}
    # the linear predictor's random part beyond the intercept of g (all 0 for "scalar")
    extra, extra_columns = _random_part(rng, structure, boundary, g, X, sd_ratio, slope_sd)
    frame.update(extra_columns)
    if family == "gaussian":
        # within sd 1, between sd = sd_ratio
        b = rng.normal(0.0, 0.0 if boundary and structure == "scalar" else sd_ratio, n_groups)
        frame["y"] = 1.0 + X @ beta + b[g] + extra + rng.normal(0.0, 1.0, n)
    elif family == "binomial":
        b = rng.normal(0.0, min(sd_ratio, 3.0), n_groups)  # log-odds sd capped: avoid separation
        p = 1.0 / (1.0 + np.exp(-(-0.3 + X @ beta + b[g] + np.clip(extra, -3, 3))))
        if trials > 1:
            s = rng.binomial(trials, p)
            frame["s"], frame["f"] = s, trials - s
        else:
            frame["y"] = rng.binomial(1, p).astype(float)
    elif family == "poisson":
        b = rng.normal(0.0, min(sd_ratio, 1.5), n_groups)
        eta = 0.5 + 0.5 * (X @ beta) + b[g] + np.clip(extra, -1.5, 1.5)
        frame["y"] = rng.poisson(np.exp(eta)).astype(float)
    else:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    frame["g"] = pd.Categorical(np.asarray(labels)[g], categories=labels)
    weights = None
    if weighted:
        frame["w"] = rng.uniform(0.5, 2.0, n)
        weights = "w"
    return GroupedData(
        pd.DataFrame(frame),
        family,
        covariates,
        list(sizes),
        sd_ratio,
        seed,
        weights,
        structure,
        boundary,
        slope_sd,
        trials,
    )


def _random_part(
    rng: np.random.Generator,
    structure: str,
    boundary: bool,
    g: np.ndarray,
    X: np.ndarray,
    sd_ratio: float,
    slope_sd: float,
) -> tuple[np.ndarray, dict[str, object]]:
    """The structure's random effects beyond g's intercepts, and the factor columns it needs
    (h: 2-6 levels crossed with g; k: 2-4 levels; n: 2-3 levels nested in each group of g).
    A boundary case has slope sd 0 (slope structures) or the last term's sd 0."""
    n, n_groups = g.size, int(g.max()) + 1
    extra = np.zeros(n)
    columns: dict[str, object] = {}
    sd = 0.0 if boundary else slope_sd
    if structure in SLOPE_STRUCTURES:
        extra += rng.normal(0.0, sd, n_groups)[g] * X[:, 0]
        if structure == "diag_two_slopes":
            extra += rng.normal(0.0, sd, n_groups)[g] * X[:, 1]
    if structure in ("crossed", "three_terms"):
        h = rng.integers(0, int(rng.integers(2, 7)), n)
        last = structure == "crossed" and boundary
        extra += rng.normal(0.0, 0.0 if last else sd_ratio, h.max() + 1)[h]
        columns["h"] = pd.Categorical([f"h{i}" for i in h])
    if structure == "three_terms":
        k = rng.integers(0, int(rng.integers(2, 5)), n)
        extra += rng.normal(0.0, sd_ratio, k.max() + 1)[k]
        columns["k"] = pd.Categorical([f"k{i}" for i in k])
    if structure == "nested":
        sub = rng.integers(0, int(rng.integers(2, 4)), n)
        cell = g * 3 + sub
        extra += rng.normal(0.0, 0.0 if boundary else sd_ratio, 3 * n_groups)[cell]
        columns["n"] = pd.Categorical([f"n{i}" for i in sub])
    return extra, columns


@st.composite
def group_sizes(
    draw: st.DrawFn, min_groups: int = 2, max_groups: int = 60, max_size: int = 200,
    max_rows: int = 1500,
) -> list[int]:  # fmt: skip
    """Group sizes: balanced, random, or heavily unbalanced (one or a few big groups)."""
    k = draw(st.integers(min_groups, max_groups))
    pattern = draw(st.sampled_from(["random", "balanced", "unbalanced"]))
    if pattern == "balanced":
        sizes = [draw(st.integers(1, max_size))] * k
    elif pattern == "unbalanced":
        big = draw(st.integers(1, max(1, k // 3)))
        sizes = [draw(st.integers(max(1, max_size // 2), max_size))] * big + [
            draw(st.integers(1, 3))
        ] * (k - big)
    else:
        sizes = draw(st.lists(st.integers(1, max_size), min_size=k, max_size=k))
    total = sum(sizes)
    if total > max_rows:  # keep R and the optimizers quick: scale down, keep the shape
        sizes = [max(1, s * max_rows // total) for s in sizes]
    if all(s == 1 for s in sizes):
        sizes[0] = 2  # lmer needs fewer levels than rows
    return sizes


@st.composite
def grouped_data(
    draw: st.DrawFn,
    family: str | None = None,
    min_groups: int = 2,
    max_groups: int = 60,
    max_size: int = 200,
    max_covariates: int = 3,
    weights: bool | None = False,
    sd_ratio: tuple[float, float] = (1e-3, 1e3),
    trials: int | None = None,
    max_rows: int = 1500,
) -> GroupedData:
    """A grouped data set (see the module docstring). `weights=None` draws whether to weight;
    `trials` (binomial) > 1 gives a cbind(s, f) response."""
    fam = family or draw(st.sampled_from(FAMILIES))
    sizes = draw(group_sizes(min_groups, max_groups, max_size, max_rows))
    n_cov = draw(st.integers(0, max_covariates))
    lo, hi = np.log10(sd_ratio[0]), np.log10(sd_ratio[1])
    ratio = float(10 ** draw(st.floats(lo, hi, allow_nan=False)))
    seed = draw(st.integers(0, 2**31 - 1))
    weighted = draw(st.booleans()) if weights is None else bool(weights)
    n_trials = trials if trials is not None else 1
    d = _make(sizes, fam, n_cov, ratio, seed, weighted and fam == "gaussian", n_trials)
    return d


@st.composite
def one_way_data(
    draw: st.DrawFn, min_groups: int = 3, max_groups: int = 30, max_size: int = 120,
    sd_ratio: tuple[float, float] = (0.1, 3.0), max_rows: int = 400,
) -> GroupedData:  # fmt: skip
    """Gaussian y ~ 1 + (1|g) data with a clearly positive variance component (shrinkage
    identities need tau > 0)."""
    return draw(
        grouped_data(
            family="gaussian",
            min_groups=min_groups,
            max_groups=max_groups,
            max_size=max_size,
            max_covariates=0,
            weights=False,
            sd_ratio=sd_ratio,
            max_rows=max_rows,
        )
    )


@st.composite
def mixed_data(
    draw: st.DrawFn,
    family: str | None = "gaussian",
    structure: str | None = None,
    min_groups: int = 5,
    max_groups: int = 30,
    max_size: int = 30,
    sd_ratio: tuple[float, float] = (0.1, 3.0),
    max_rows: int = 400,
) -> GroupedData:
    """Grouped data with a random-effects structure (`structure`: a key of STRUCTURES, None to
    draw one), drawn as a boundary case or not; `d.formula()` has that random part. Enough
    rows for the structure's random effects (lme4's check.nobs.vs.nRE) are ensured by the
    group sizes (at least 3 rows a group with slopes)."""
    fam = family or draw(st.sampled_from(FAMILIES))
    struct = structure or draw(st.sampled_from(sorted(STRUCTURES)))
    boundary = draw(st.booleans())
    sizes = draw(group_sizes(min_groups, max_groups, max_size, max_rows))
    floor = 4 if struct in SLOPE_STRUCTURES or struct == "nested" else 2
    sizes = [max(s, floor) for s in sizes]
    n_cov = max(draw(st.integers(0, 2)), 2 if struct == "diag_two_slopes" else 1)
    lo, hi = np.log10(sd_ratio[0]), np.log10(sd_ratio[1])
    ratio = float(10 ** draw(st.floats(lo, hi, allow_nan=False)))
    slope_sd = float(draw(st.floats(0.2, 1.0, allow_nan=False)))
    seed = draw(st.integers(0, 2**31 - 1))
    return _make(sizes, fam, n_cov, ratio, seed, False, 1, struct, boundary, slope_sd)
