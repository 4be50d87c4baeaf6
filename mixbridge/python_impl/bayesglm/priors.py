"""bayesglm's prior vectors (bayesglm_spec §2-§3): arm's defaults, recycling, scaling.

PriorSpec (the user's arguments) --make_priors--> mean, scale, df per coefficient
--scale_priors--> Priors (x-scaled scales, the gaussian y-scaling and its after-first quirk)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from mixbridge.errors import ArgumentError, DataError
from mixbridge.python_impl.bayesglm.design import Design
from mixbridge.python_impl.families import Family
from mixbridge.results import Message

# a prior argument: one value (recycled) or one per non-intercept coefficient
PriorValue = float | Sequence[float] | np.ndarray


@dataclass(frozen=True)
class PriorSpec:
    """bayesglm's prior arguments as the user gave them (arm's names, snake_case)."""

    prior_mean: PriorValue = 0.0
    prior_scale: PriorValue | None = None
    prior_df: PriorValue = 1.0
    prior_mean_for_intercept: float = 0.0
    prior_scale_for_intercept: float | None = None
    prior_df_for_intercept: float = 1.0
    min_prior_scale: float = 1e-12
    scaled: bool = True

    def intercept_only(self) -> PriorSpec:
        """The null model's priors (the intercept alone): the non-intercept arguments are not
        used, so vectors there are no error (arm errors on them in its null refit)."""
        return replace(self, prior_mean=0.0, prior_scale=None, prior_df=1.0)


@dataclass
class Priors:
    """Prior vectors over all p coefficients (intercept first when there is one).

    `scale` is the x-scaled scale used from the start; `scale_after_first` is what arm switches
    to after the first solve (the gaussian+scaled quirk: s0 = scale * 2 sd(y)); equal otherwise.
    """

    mean: np.ndarray
    scale: np.ndarray
    df: np.ndarray
    scale_after_first: np.ndarray
    messages: list[Message] = field(default_factory=list)


def _prior_vector(name: str, value: PriorValue, nv: int, has_intercept: bool) -> np.ndarray:
    arr = np.atleast_1d(np.asarray(value, dtype=float)).ravel()
    if arr.size == 1:
        return np.repeat(arr, nv)
    if arr.size != nv:
        what = "non-intercept coefficients" if has_intercept else "coefficients"
        raise ArgumentError(
            f"invalid length for {name}: got {arr.size}, expected {nv} (number of {what})", name
        )
    return arr


def make_priors(
    spec: PriorSpec, p: int, has_intercept: bool, family: Family
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(mean, scale, df) per coefficient: arm's defaults (2.5 and 10, x1.6 for probit),
    recycling and length checks."""
    probit = family.link == "probit"
    prior_scale = spec.prior_scale
    if prior_scale is None:
        prior_scale = 2.5 * (1.6 if probit else 1.0)
    prior_scale_for_intercept = spec.prior_scale_for_intercept
    if prior_scale_for_intercept is None:
        prior_scale_for_intercept = 10.0 * (1.6 if probit else 1.0)
    nv = p - int(has_intercept)
    mean = _prior_vector("prior_mean", spec.prior_mean, nv, has_intercept)
    scale = _prior_vector("prior_scale", prior_scale, nv, has_intercept)
    df = _prior_vector("prior_df", spec.prior_df, nv, has_intercept)
    if has_intercept:
        mean = np.concatenate([[float(spec.prior_mean_for_intercept)], mean])
        scale = np.concatenate([[float(prior_scale_for_intercept)], scale])
        df = np.concatenate([[float(spec.prior_df_for_intercept)], df])
    for name, arr in (("prior_mean", mean), ("prior_scale", scale), ("prior_df", df)):
        if np.any(np.isnan(arr)):
            raise ArgumentError(f"{name} must not contain NaN", name)
    if np.any(~np.isfinite(mean)):
        raise ArgumentError("prior_mean must be finite", "prior_mean")
    if np.any(scale <= 0):
        raise ArgumentError(
            f"prior_scale must be positive (Inf for a flat prior), got {scale[scale <= 0][0]:g}",
            "prior_scale",
        )
    if np.any(df <= 0):
        raise ArgumentError(f"prior_df must be positive, got {df[df <= 0][0]:g}", "prior_df")
    return mean, scale, df


def scale_priors(
    mean: np.ndarray,
    scale: np.ndarray,
    df: np.ndarray,
    *,
    design: Design,
    y_raw: np.ndarray,
    family: Family,
    scaled: bool,
    min_prior_scale: float,
    response: str = "y",
) -> Priors:
    """arm's `scaled=TRUE` rules (spec §3): gaussian y-scaling, per-column x-scaling, floor."""
    if not scaled:
        return Priors(mean, scale.copy(), df, scale.copy())
    scale = scale.copy()
    if family.family == "gaussian":
        sd_y = float(np.std(y_raw, ddof=1)) if len(y_raw) > 1 else float("nan")
        if not np.isfinite(sd_y) or sd_y == 0:
            raise DataError(
                f"the response {response!r} is constant (sd = 0): bayesglm's scaled gaussian prior "
                "(scale x 2 sd(y)) is degenerate; use scaled=False",
                response,
            )
        scale = scale * 2.0 * sd_y
    scale0 = scale.copy()
    scale = scale / design.x_scales()
    messages = []
    for j in np.flatnonzero(scale < min_prior_scale):
        scale[j] = min_prior_scale
        messages.append(
            Message(
                "warning",
                f"prior scale for varible {j + 1} set to min.prior.scale = {min_prior_scale:g}",
                "python",
                code="min_prior_scale",
            )
        )
    after = scale0 if family.family == "gaussian" else scale.copy()
    return Priors(mean, scale, df, after, messages)


def build_priors(
    spec: PriorSpec,
    *,
    design: Design,
    has_intercept: bool,
    family: Family,
    y_raw: np.ndarray,
    response: str,
) -> Priors:
    """make_priors then scale_priors: the priors bayesglm.fit iterates with."""
    mean, scale, df = make_priors(spec, design.p, has_intercept, family)
    return scale_priors(
        mean,
        scale,
        df,
        design=design,
        y_raw=y_raw,
        family=family,
        scaled=spec.scaled,
        min_prior_scale=spec.min_prior_scale,
        response=response,
    )
