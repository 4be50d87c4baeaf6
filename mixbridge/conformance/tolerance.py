"""The one tolerance policy used by every comparison (compare, CLI, property tests, users' CI).

Every number sits beside its reason. A tolerance bounds |a - b| by `rel * max(scale, floor)`,
where `scale` is the quantity's natural size (its value, a coefficient's SE, a random-effect
term's sd; see `compare`) and `floor` stops the bound collapsing to zero at zero values.

Flat optima: parameters are only as well determined as the criterion's curvature allows. Where
both fits expose their objective (`fit.objective(...)`), `compare` (and the tests, through
`optimum_gap`) judges a parameter gap by what it costs in the criterion, with one rule
(`GapCost`, `gap_verdict`): each deviance function is evaluated at a's parameters, b's and their
midpoint, which gives the criterion difference d = f(a) − f(b) and the curvature along the gap
c = ½ΔᵀHΔ = 2(f(a) + f(b) − 2 f(mid)) (exact for a quadratic criterion). Near an optimum x*,
f(x) − f* ≥ ½|x − x*|²_H (also at a bound, by the optimality conditions), so the excesses
e_a, e_b over the optimum satisfy e_a − e_b = d and √e_a + √e_b ≥ √c; the least e_a that allows
is max(c + d, 0)² / 4c. A gap is "flat" (both may be optimal) when that lower bound on a's excess
is within the policy's slack τ = flat_abs + flat_rel·|f| under every deviance function; "a
stopped early" when it exceeds τ under any (even if d ≈ 0: two points symmetric about the optimum
are both off it), and "b stopped early" when b's bound exceeds τ under all. Parameter rows beyond
their tolerance are then "explained" (flat, b early) with the numbers, never silently passed,
and a θ within its tolerance whose gap provably costs a more than τ is a FAIL.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from mixbridge.errors import ArgumentError

# Quantities compared for each result type (the row order of a Comparison).
MIXED_QUANTITIES = (
    "nobs",
    "objective",
    "criterion",
    "loglik",
    "aic",
    "bic",
    "theta",
    "fixef",
    "fixef_se",
    "sigma",
    "varcorr",
    "ranef",
    "cond_var",
)
BAYESGLM_QUANTITIES = ("nobs", "coef", "se", "se_display", "dispersion", "deviance", "aic")
# bayesglm(y ~ 0 + g, prior at the mixed model's estimates) against a mixed fit's fixef + ranef
SHRINKAGE_QUANTITIES = ("prior", "group_means")

# Parameter-like quantities: a difference beyond tolerance may be explained by a flat optimum.
PARAMETER_QUANTITIES = frozenset(
    {"theta", "fixef", "fixef_se", "sigma", "varcorr", "ranef", "cond_var"}
)
# lmer: the objective depends on θ only, so a flat θ explains differences in quantities derived
# from θ (β, σ, ranef, SEs, ...) only up to this multiple of θ's own relative difference: the
# derived quantities' sensitivities to θ are O(1) in scaled units (sleepstudy: θ 9e-6 rel apart
# gave varcorr 8e-6, ranef 6e-6, fixef 6e-15); 10 leaves margin without letting a drifted β hide
# behind a flat θ.
DERIVED_FACTOR = 10.0

# Criterion-like quantities: a difference may be explained by the reference stopping early.
CRITERION_QUANTITIES = frozenset({"criterion", "loglik", "aic", "bic"})


@dataclass(frozen=True)
class Tol:
    """|a - b| <= rel * max(|scale|, floor) + abs. `one_sided`: only a > b + bound fails."""

    reason: str
    rel: float = 0.0
    abs: float = 0.0
    floor: float = 0.0
    one_sided: bool = False

    def bound(self, scale: float) -> float:
        return self.rel * max(abs(scale), self.floor) + self.abs

    def describe(self) -> str:
        parts = []
        if self.rel:
            parts.append(f"{self.rel:.0e} rel")
        if self.abs:
            parts.append(f"{self.abs:.0e} abs")
        text = " + ".join(parts) or "exact"
        return text + (" (a <= b + tol)" if self.one_sided else "")


@dataclass(frozen=True)
class Policy:
    """A named set of tolerances, one per quantity, plus the flat-optimum slack."""

    name: str
    tols: dict[str, Tol]
    flat_abs: float
    flat_rel: float
    flat_reason: str
    description: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, quantity: str) -> Tol:
        return self.tols[quantity]

    def flat_slack(self, criterion: float) -> float:
        """τ: how far above the optimum (criterion units) a fit may be and count as at it."""
        return self.flat_abs + self.flat_rel * abs(criterion)

    def with_overrides(self, **overrides: float | Tol) -> Policy:
        """A copy with some tolerances replaced (a float keeps the reason, marked 'override')."""
        tols = dict(self.tols)
        for q, v in overrides.items():
            if q not in tols:
                raise ArgumentError(
                    f"unknown quantity {q!r} in tolerance override; known: "
                    f"{', '.join(sorted(tols))}",
                    "tolerance",
                )
            if isinstance(v, Tol):
                tols[q] = v
            elif tols[q].rel:  # a float replaces the relative part (or the absolute one)
                tols[q] = replace(tols[q], rel=float(v), reason=f"override ({tols[q].reason})")
            else:
                tols[q] = replace(tols[q], abs=float(v), reason=f"override ({tols[q].reason})")
        return replace(self, tols=tols, name=f"{self.name}+override")


# ---------------------------------------------------------------------------------------------
# The flat-optimum rule (see the module docstring)

FLAT, A_EARLY, B_EARLY = "flat", "a_early", "b_early"


def excess_lower_bound(diff: float, cost: float) -> float:
    """The least criterion excess over the optimum a point can have when it is `diff` above
    another point at a gap whose curvature cost ½ΔᵀHΔ is `cost` (see the module docstring)."""
    if not cost > 0:  # no curvature along the gap (or rounding made it negative)
        return max(diff, 0.0)
    return max(cost + diff, 0.0) ** 2 / (4.0 * cost)


@dataclass(frozen=True)
class GapCost:
    """One deviance function at a's parameters, b's and their midpoint."""

    function: str  # whose deviance function ("a" or "b")
    f_a: float
    f_b: float
    f_mid: float

    @property
    def diff(self) -> float:
        return self.f_a - self.f_b

    @property
    def cost(self) -> float:
        """½ΔᵀHΔ along the gap Δ = a − b, from the second difference over the segment."""
        return max(2.0 * (self.f_a + self.f_b - 2.0 * self.f_mid), 0.0)

    @property
    def excess_a(self) -> float:
        return excess_lower_bound(self.diff, self.cost)

    @property
    def excess_b(self) -> float:
        return excess_lower_bound(-self.diff, self.cost)

    def describe(self) -> str:
        return (
            f"{self.function}'s criterion at a's params {self.f_a:.10g}, at b's {self.f_b:.10g} "
            f"(Δ {self.diff:.2e}, gap cost ½ΔᵀHΔ {self.cost:.2e}; a ≥ {self.excess_a:.2e}, "
            f"b ≥ {self.excess_b:.2e} above the optimum)"
        )


def gap_verdict(costs: list[GapCost], slack: float) -> str:
    """FLAT, A_EARLY (a provably more than `slack` above the optimum under some function) or
    B_EARLY (b provably so under every function, a not)."""
    if not costs:
        raise ValueError("gap_verdict needs at least one deviance function's values")
    if any(c.excess_a > slack for c in costs):
        return A_EARLY
    if all(c.excess_b > slack for c in costs):
        return B_EARLY
    return FLAT


# ---------------------------------------------------------------------------------------------
# Tests and degrees of freedom (mixbridge.inference vs lmerTest / pbkrtest; issue 13)
#
# `INFERENCE_AT_THETA`: both sides evaluated at the same (θ, σ) (lme4's): only the arithmetic of
# the df differs. `INFERENCE_FITTED`: each side at its own fit; the gap in θ (≤ 1e-4 rel under
# the lmer policy, ~1e-6 seen) moves the df through the deviance's Hessian and the Jacobian of
# vcov(β), so the df's tolerance is a multiple of θ's.

INFERENCE_AT_THETA: dict[str, Tol] = {
    "estimate": Tol("β at the same θ: GLS solves agree to rounding", rel=1e-9),
    "std_error": Tol("SE at the same θ, σ: rounding of (R_X'R_X)⁻¹", rel=1e-9),
    "df": Tol(
        "Satterthwaite df: lmerTest differentiates the deviance with numDeriv (Richardson, "
        "steps 1e-4·|x|), ours with an O(h¹⁰) Richardson ladder on the θ-pieces and σ "
        "analytically; numDeriv's error reaches 8.4e-7 rel (sleepstudy with I(Days^2): "
        "143.000120 where the exact df is 143, as pbkrtest's KR gives): 1e-5 rel",
        rel=1e-5,
    ),
    "df_kr": Tol(
        "Kenward–Roger df: pbkrtest's closed form with dense n×n algebra vs ours by Woodbury "
        "identities: rounding only (2e-12 seen); 1e-8 rel",
        rel=1e-8,
    ),
    "statistic": Tol("t = estimate/SE at the same θ: rounding", rel=1e-9),
    "f_value": Tol(
        "F statistics at the same θ: rounding (KR scaling carries the df's 1e-8)", rel=1e-8
    ),
    "p_value": Tol(
        "p from t (or F) and df: its relative change is ≈ |t|·|Δt| + |∂log p/∂df|·Δdf; with "
        "df at 1e-6 rel, 1e-5 rel (floor 1e-300: tiny p-values are compared relatively too)",
        rel=1e-5,
        floor=1e-300,
    ),
}

INFERENCE_FITTED: dict[str, Tol] = {
    "estimate": Tol("fixef within 1e-4 x max(|β|, SE) as the lmer policy", rel=1e-4),
    "std_error": Tol("SEs 1e-4 rel as the lmer policy", rel=1e-4),
    "df": Tol(
        "df at each side's own θ: 10x θ's 1e-4 rel (the df's sensitivity to θ is O(1)–O(10) in "
        "relative terms, like the lmer policy's DERIVED_FACTOR)",
        rel=1e-3,
    ),
    "statistic": Tol("t = estimate/SE: the sum of their 1e-4 rel tolerances", rel=2e-4),
    "f_value": Tol("F = t² (or a sum of them): twice the t tolerance", rel=4e-4),
    "p_value": Tol(
        "p moves by ≈ (|t|·Δt + |∂log p/∂df|·Δdf) rel: with t ≤ 30, Δt 2e-4 rel, Δdf 1e-3 rel "
        "that is up to ~0.2 rel for tiny p; 0.2 rel, floor 1e-12 (below it p decides nothing)",
        rel=0.2,
        floor=1e-12,
    ),
}


# ---------------------------------------------------------------------------------------------
# lmer: lme4_spec §5 ("estimates ~1e-5 relative; deviance function 1e-10") and the task's levels.

_LMER = Policy(
    name="lmer",
    description="lmer, Python vs lme4 or lme4 vs lme4 (two transports)",
    tols={
        "nobs": Tol("row counts after NA omission must be identical"),
        "objective": Tol(
            "deviance function at the same θ: spec measured 1e-12 rel; 1e-9 leaves room for "
            "summation order / BLAS differences, still far below any optimizer effect",
            rel=1e-9,
        ),
        "criterion": Tol(
            "criterion at the optimum may be worse than the reference's by at most 1e-6 rel "
            "(BOBYQA ftol_abs 1e-8 plus θ stopping at xtol 1e-8); lower is better, not a failure",
            rel=1e-6,
            one_sided=True,
        ),
        "loglik": Tol("1e-6 absolute: optima agree to far below one likelihood unit", abs=1e-6),
        "aic": Tol("AIC = -2 logLik + 2 df: 1e-6 absolute like loglik", abs=1e-6),
        "bic": Tol("BIC = -2 logLik + df log n: 1e-6 absolute like loglik", abs=1e-6),
        "theta": Tol(
            "θ within 1e-4 rel (lme4 stops at xtol_abs 1e-8 on a flat surface: ~1e-5 rel seen); "
            "floor 1e-3 so a boundary θ≈0 is judged on an absolute 1e-7",
            rel=1e-4,
            floor=1e-3,
        ),
        "fixef": Tol("fixef within 1e-4 x max(|β|, SE): the SE is the yardstick", rel=1e-4),
        "fixef_se": Tol("SEs are smooth functions of θ: 1e-4 rel like θ", rel=1e-4),
        "sigma": Tol("σ is profiled out of θ: 1e-4 rel like θ", rel=1e-4),
        "varcorr": Tol(
            "variances/sds 1e-4 rel; correlations on scale 1 (floor 1e-3 for ~0 components)",
            rel=1e-4,
            floor=1e-3,
        ),
        "ranef": Tol(
            "ranef within 1e-4 x the term's sd (scale-aware: shrinkage is relative to the sd)",
            rel=1e-4,
            abs=1e-12,
        ),
        "cond_var": Tol("conditional variances 1e-4 rel (smooth in θ, σ)", rel=1e-4),
        # coefficient tests with Satterthwaite df (when both engines compute them)
        "df": INFERENCE_FITTED["df"],
        "statistic": INFERENCE_FITTED["statistic"],
        "p_value": INFERENCE_FITTED["p_value"],
    },
    flat_abs=1e-6,
    flat_rel=1e-10,
    flat_reason=(
        "a θ counts as optimal when its criterion is provably at most 1e-6 above the optimum "
        "(deviance units: within it the loglik cannot leave its 1e-6 tolerance) + 1e-10 rel "
        "(the two deviance functions agree to ~1e-12 relative; rounding of a large deviance)"
    ),
)

# glmer: lme4_spec §3.2/§5: the deviance function matches to 1e-8 only with exact PIRLS emulation,
# ~1e-3 otherwise (stale Cholesky from the start of the last PIRLS iteration: 5.6e-4 on cbpp);
# estimates ~1e-3 rel (two-stage bobyqa + Nelder-Mead with FtolAbs 1e-5).
_GLMER = Policy(
    name="glmer",
    description="glmer, Python vs lme4 or lme4 vs lme4",
    tols={
        "nobs": _LMER["nobs"],
        "objective": Tol(
            "glmer deviance function at the same (θ, β): 1e-3 absolute, the size of lme4's "
            "stale-Cholesky Laplace term (spec §3.2: up to ~1e-3, 5.6e-4 on cbpp)",
            abs=1e-3,
        ),
        "criterion": Tol(
            "-2 logLik may be worse than the reference's by 2e-3 absolute: stale-Cholesky effect "
            "(1e-3) plus Nelder-Mead FtolAbs 1e-5; lower is better, not a failure",
            abs=2e-3,
            one_sided=True,
        ),
        "loglik": Tol("logLik = -d/2: half of the 2e-3 deviance slack", abs=1e-3),
        "aic": Tol("AIC = -2 logLik + 2 df: the 2e-3 deviance slack", abs=2e-3),
        "bic": Tol("BIC = -2 logLik + df log n: the 2e-3 deviance slack", abs=2e-3),
        "theta": Tol(
            "θ within 1e-3 rel (Nelder-Mead FtolAbs 1e-5); floor 1e-2 near the boundary",
            rel=1e-3,
            floor=1e-2,
        ),
        "fixef": Tol("fixef within 1e-3 x max(|β|, SE)", rel=1e-3),
        "fixef_se": Tol(
            "glmer SEs come from a finite-difference Hessian (deriv12, δ=1e-4) over (θ, β) that "
            "agree only to 1e-3: 5e-3 rel",
            rel=5e-3,
        ),
        "sigma": Tol("σ = 1 for binomial/poisson; otherwise 1e-3 rel", rel=1e-3),
        "varcorr": Tol("sds 1e-3 rel like θ; correlations on scale 1", rel=1e-3, floor=1e-2),
        "ranef": Tol("conditional modes within 1e-3 x the term's sd", rel=1e-3, abs=1e-12),
        "cond_var": Tol(
            "condVar from (possibly stale) final PIRLS weights at parameters 1e-3 apart: 2e-3 rel",
            rel=2e-3,
        ),
    },
    flat_abs=1e-3,
    flat_rel=1e-10,
    flat_reason=(
        "glmer optima are flat to Nelder-Mead's FtolAbs (1e-5) and lme4's Laplace value carries "
        "~1e-3 of PIRLS staleness: parameters within 1e-3 deviance are equally optimal"
    ),
)

# bayesglm: a deterministic IRLS/EM path; the spec's transcription matched arm to 4.3e-14, but
# the stopping rule (epsilon 1e-8 on deviance and dispersion) decides the last digits.
_B = "arm's stopping rule (epsilon=1e-8 on relative deviance/dispersion change): 1e-8 rel"
_BAYESGLM = Policy(
    name="bayesglm",
    description="bayesglm, Python vs arm or arm vs arm",
    tols={
        "nobs": _LMER["nobs"],
        "coef": Tol("coef within 1e-8 x max(|b|, SE): " + _B, rel=1e-8),
        "se": Tol("summary SEs: " + _B, rel=1e-8),
        "se_display": Tol("display SEs: " + _B, rel=1e-8),
        "dispersion": Tol("EM dispersion: " + _B, rel=1e-8),
        "deviance": Tol("unpenalised deviance: " + _B + " (floor 1 for ~0)", rel=1e-8, floor=1.0),
        "aic": Tol("aic = family aic + 2 rank: " + _B + " (floor 1)", rel=1e-8, floor=1.0),
    },
    flat_abs=0.0,
    flat_rel=0.0,
    flat_reason="bayesglm follows a fixed iteration path: no flat-optimum allowance",
)

# bayesglm(y ~ 0 + g, prior at the mixed model's estimates) vs fixef + ranef (bayesglm_spec §12).
_SHRINKAGE = Policy(
    name="shrinkage",
    description="bayesglm group coefficients vs a mixed model's fixef + ranef",
    tols={
        "prior": Tol(
            "the prior must be set at the mixed fit's estimates (copied numbers: 1e-12 rel)",
            rel=1e-12,
            floor=1.0,
        ),
        "group_means": Tol(
            "posterior modes vs conditional modes to 1e-7 x max(|value|, 1): bayesglm stops at "
            "epsilon 1e-8 (spec measured 8.2e-11 with ML lmer) and lmer's θ at xtol 1e-8",
            rel=1e-7,
            floor=1.0,
        ),
    },
    flat_abs=0.0,
    flat_rel=0.0,
    flat_reason="closed-form identity: no flat-optimum allowance",
)

# Third-party engines: looser, each number explained by the peer's optimizer.
_THIRD_LMER = Policy(
    name="third_party_lmer",
    description="a third-party LMM (e.g. statsmodels MixedLM) vs lme4 or the Python engine",
    tols={
        **_LMER.tols,
        "objective": Tol("peers evaluate the same likelihood in another order: 1e-6 rel", rel=1e-6),
        "criterion": Tol(
            "MixedLM stops on a gradient norm (BFGS/L-BFGS gtol ~1e-5), not on lme4's xtol/ftol: "
            "criterion may be worse by 1e-3 absolute",
            abs=1e-3,
            one_sided=True,
        ),
        "loglik": Tol("5e-4 absolute: half the criterion slack", abs=5e-4),
        "aic": Tol("1e-3 absolute: the criterion slack", abs=1e-3),
        "bic": Tol("1e-3 absolute: the criterion slack", abs=1e-3),
        "theta": Tol(
            "MixedLM optimizes cov_re/scale in its own Cholesky parametrization with "
            "gradient-based stopping: 1e-2 rel on θ (floor 1e-2)",
            rel=1e-2,
            floor=1e-2,
        ),
        "fixef": Tol("fixef within 1e-3 x max(|β|, SE) (GLS at a slightly different θ)", rel=1e-3),
        "fixef_se": Tol("SEs follow θ: 1e-2 rel", rel=1e-2),
        "sigma": Tol("σ 1e-3 rel (profiled scale at a slightly different θ)", rel=1e-3),
        "varcorr": Tol("variance components 1e-2 rel like θ", rel=1e-2, floor=1e-2),
        "ranef": Tol("BLUPs within 1e-2 x the term's sd", rel=1e-2, abs=1e-12),
        "cond_var": Tol("conditional variances 1e-2 rel like θ", rel=1e-2),
    },
    flat_abs=1e-3,
    flat_rel=1e-8,
    flat_reason="peer optimizers stop on the gradient: parameters within 1e-3 deviance are equal",
)

POLICIES: dict[str, Policy] = {
    p.name: p for p in (_LMER, _GLMER, _BAYESGLM, _SHRINKAGE, _THIRD_LMER)
}

FIRST_PARTY_ENGINES = ("python", "r")


def is_first_party(engine: str) -> bool:
    """Engines built here: "python", "r" and transport-qualified names like "r/subprocess"."""
    base = str(engine).split("/")[0].split(":")[0].split("-")[0].lower()
    return base in FIRST_PARTY_ENGINES


def policy_for(a: Any, b: Any, tolerance: Any = None) -> Policy:
    """The policy for comparing fits a and b.

    `tolerance` may be None (chosen from the model and engines), a policy name, a Policy, or a
    dict {quantity: rel} of overrides applied to the automatic choice.
    """
    if isinstance(tolerance, Policy):
        return tolerance
    if isinstance(tolerance, str):
        if tolerance not in POLICIES:
            raise ArgumentError(
                f"unknown tolerance policy {tolerance!r}; known: {', '.join(sorted(POLICIES))}",
                "tolerance",
            )
        return POLICIES[tolerance]
    base = _auto_policy(a, b)
    if tolerance is None:
        return base
    if isinstance(tolerance, dict):
        return base.with_overrides(**tolerance)
    raise ArgumentError(
        f"tolerance must be None, a policy name, a Policy or a dict, not {tolerance!r}",
        "tolerance",
    )


def _auto_policy(a: Any, b: Any) -> Policy:
    kinds = {type(a).__name__, type(b).__name__}
    if kinds == {"BayesGLMFit"}:
        return _BAYESGLM
    if kinds == {"BayesGLMFit", "MixedFit"}:
        return _SHRINKAGE
    model = getattr(a, "model", "lmer")
    if model == "glmer":
        return _GLMER
    if not (is_first_party(a.engine) and is_first_party(b.engine)):
        return _THIRD_LMER
    return _LMER


# ---------------------------------------------------------------------------------------------
# Inference: interval bounds and likelihood-ratio tests (mixbridge.inference), per model.
# Scales: a Wald bound's is |β| + its half-width z·SE; a profile bound's is the reference
# interval's half-width; chisq/deviance are absolute (deviance units); p-values relative.

INFERENCE_TOLS: dict[str, dict[str, Tol]] = {
    "lmer": {
        "wald": Tol(
            "β̂ ± z·SE inherits the fits' agreement: fixef 1e-4 x max(|β|, SE) and SE 1e-4 rel",
            rel=1e-4,
        ),
        "profile": Tol(
            "lme4 inverts an interpolation spline through ~10-20 ζ points per side; we solve "
            "for the crossing: lme4's spline error measured up to 2.3e-4 of the half-width "
            "(Pastes), plus the ML refits' 1e-5: 1e-3 of the half-width",
            rel=1e-3,
        ),
        "lrt_chisq": Tol(
            "chisq = 2 Δ logLik of two ML fits, each logLik within 1e-6: 4e-6 absolute",
            abs=4e-6,
        ),
        "lrt_p": Tol(
            "p = P(χ²_df > chisq): its derivative (the χ² density, < 0.5 away from 0) times "
            "chisq's 4e-6, relative 1e-4 for tiny p",
            rel=1e-4,
            abs=2e-6,
        ),
    },
    "glmer": {
        "wald": Tol(
            "β̂ ± z·SE inherits the fits' agreement: fixef 1e-3 x max(|β|, SE), SE 5e-3 rel "
            "(lme4's finite-difference Hessian)",
            rel=5e-3,
        ),
        "profile": Tol(
            "lme4's spline (1e-3 of the half-width, as lmer) plus lme4's Laplace deviance "
            "carrying ~1e-3 of PIRLS staleness at each profiled point (ζ ≈ √(2Δ) moves "
            "~1e-3/(2ζ)): 5e-3 of the half-width",
            rel=5e-3,
        ),
        "lrt_chisq": Tol("chisq = 2 Δ logLik, each logLik within 1e-3: 4e-3 absolute", abs=4e-3),
        "lrt_p": Tol("p from chisq within 4e-3: 2e-3 absolute, 1e-2 relative", rel=1e-2, abs=2e-3),
    },
}

# Parametric bootstrap bounds cannot match R's random numbers: they are judged within their
# Monte Carlo error. The percentile bound is a sample quantile q_α of nsim replicates, whose
# standard error is sqrt(α(1 − α)/nsim)/f(q_α); with f estimated as a normal density with the
# replicates' sd, SE ≈ sd·sqrt(α(1 − α)/nsim)/φ(z_α). Two independent runs differ by ≤
# BOOT_MC_K·sqrt(SE_a² + SE_b²) with probability ~1 − 6e-5 per bound (normal tails, K = 4).
BOOT_MC_K = 4.0
