"""Result types shared by every engine (Python, R through the bridge, third-party adapters).

Field names keep lme4's and arm's meanings in snake_case. Every engine fills the same fields, so
fits from different engines can be compared field by field (`mixbridge.compare`).

Deferred fields (`mixbridge.deferred`): a result type declares which of its fields may be
computed when first read (`DeferredField`; MixedFit: ranef, cond_var, fitted, residuals;
BayesGLMFit: fitted). Readers never see the difference (`compare`, `to_dict`, `tidy`, `to_r`,
`==`, copies and pickling all read the values). `fit.deferred_fields()` names the fields not
fetched yet, `fit.fetch_deferred()` fetches them now. MixedFit's tests, intervals and allfit
methods come from `mixbridge.inference.fit_methods.InferenceMethods`.
"""

from __future__ import annotations

import inspect
import math
import os
import sys
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from mixbridge.checks import check_flag, named_arguments
from mixbridge.deferred import Deferred, DeferredField, DeferredFields
from mixbridge.errors import ArgumentError, MixbridgeWarning, RWarning
from mixbridge.inference.fit_methods import InferenceMethods

__all__ = [
    "ALLFIT_POINTER",
    "BayesGLMFit",
    "Deferred",
    "DeferredField",
    "DeferredFields",
    "FitCall",
    "FitMethods",
    "Message",
    "MixedFit",
    "emit_warnings",
    "format_bayesglm_summary",
    "format_mixed_summary",
]

MessageKind = Literal["warning", "message", "error", "note"]


@dataclass(frozen=True)
class Message:
    """One diagnostic: a warning, an informational message or an error.

    `origin` says who produced it: "R" (text and `call` straight from R), "python" (our engine),
    or "mixbridge" (the bridge or a data check). `code` is a short machine-readable key
    (e.g. "singular", "convergence", "rank_deficient", "na_omit") when one applies.
    """

    kind: MessageKind
    text: str
    origin: str
    call: str = ""
    code: str = ""

    def to_dict(self) -> dict[str, str]:
        return {
            "kind": self.kind,
            "text": self.text,
            "origin": self.origin,
            "call": self.call,
            "code": self.code,
        }


def emit_warnings(messages: list[Message], stacklevel: int | None = None) -> None:
    """Re-emit the warnings among `messages` as Python warnings (RWarning for R's own).

    They point at the first caller outside the mixbridge package (the user's fitting call),
    however many of our frames lie between; `stacklevel` overrides that."""
    level = _outside_caller_level() if stacklevel is None else stacklevel
    for m in messages:
        if m.kind != "warning":
            continue
        category = RWarning if m.origin == "R" else MixbridgeWarning
        warnings.warn(m.text, category, stacklevel=level)


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _outside_caller_level() -> int:
    """warnings.warn's stacklevel, from emit_warnings, of the first frame not in mixbridge."""
    frame = sys._getframe(2)  # emit_warnings' caller (stacklevel 2 from emit_warnings)
    level = 2
    while frame is not None and frame.f_code.co_filename.startswith(_PACKAGE_DIR):
        frame = frame.f_back
        level += 1
    return level


@dataclass(frozen=True, eq=False)
class FitCall:
    """What `mixbridge.lmer`/`glmer` were called with: formula, options and the data itself (a
    reference, never a copy), so the fit can be rebuilt elsewhere (`MixedFit.to_r`). Compared
    by identity: the data and array arguments have no single truth value."""

    model: Literal["lmer", "glmer"]
    formula: str
    data: Any
    reml: bool = True
    family: str = "gaussian"
    link: str | None = None
    nagq: int = 1
    weights: Any = None
    offset: Any = None
    nb_theta: float | None = None  # negative.binomial: θ given (glmer) or estimated (glmer_nb)


@dataclass(frozen=True)
class FitMethods:
    """What an engine computes from a fit beyond its fields, attached with `MixedFit.attach`:

    - `objective(*params, control=None) -> float`: the criterion the fit minimized (lmer: θ;
      glmer: θ, β); `control` only if the engine can evaluate it with other settings.
    - `predict(newdata, re_form=, allow_new_levels=, type=) -> ndarray`: predict.merMod.
    - `simulate(nsim, seed) -> ndarray` (n x nsim): simulate.merMod.
    - `confint(method=, level=, parm=, nsim=, seed=) -> DataFrame`: the engine's own
      confint.merMod (None: mixbridge.inference computes it from the fit's call).

    - `tests(fit, kind, ddf, type) -> DataFrame`: lmer's t and F tests with Satterthwaite or
      Kenward-Roger df (kind "coef_table" or "anova"; `mixbridge.inference`).

    None: the engine does not offer it (the MixedFit method then says so)."""

    objective: Callable[..., float] | None = None
    predict: Callable[..., np.ndarray] | None = None
    simulate: Callable[..., np.ndarray] | None = None
    tests: Callable[..., pd.DataFrame] | None = None
    confint: Callable[..., pd.DataFrame] | None = None

    def __bool__(self) -> bool:
        """True when the engine attached any function."""
        return any(
            fn is not None
            for fn in (self.objective, self.predict, self.simulate, self.tests, self.confint)
        )


@dataclass(repr=False)
class MixedFit(InferenceMethods, DeferredFields):
    """A fitted linear or generalized linear mixed model, as lme4 reports it.

    Conventions (all engines):
    - `fixef`: pd.Series indexed by R's coefficient names; `vcov`: DataFrame over the same names;
      `fixef_se` = sqrt(diag(vcov)).
    - `theta`: ndarray in lme4's order (terms sorted by decreasing number of levels, lower
      triangles column-major); `theta_names` like getME(fit, "theta").
    - `varcorr`: DataFrame with columns grp, var1, var2, vcov, sdcor, exactly like
      `as.data.frame(VarCorr(fit))` (var2 is None/NaN on variance rows; a "Residual" row for
      families with a scale).
    - `ranef`: dict grouping factor -> DataFrame indexed by level (str), columns the terms'
      coefficient names. `cond_var`: dict grouping factor -> ndarray (levels x nc x nc), the
      diagonal blocks of lme4's condVar (postVar), in the same level order.
    - `loglik`, `deviance` with lme4's meanings (lmer REML: `deviance` is the ML deviance at the
      REML estimates, as `deviance(fit, REML=FALSE)`; glmer: the conditional deviance),
      `reml_criterion` (None for ML fits), `aic`, `bic`, `df` (logLik's df), `nobs`, `ngroups`
      (dict factor -> number of levels).
    - `fitted`, `residuals`: ndarrays over the rows used (after NA omission); response residuals
      for lmer, deviance residuals for glmer (lme4's defaults).
    - `singular`, `converged`, `messages` (list of Message), `engine`, `versions`.
    - glmer: `vcov_rx`, vcov from R_X at the final PIRLS weights (lme4's `use.hessian=FALSE`);
      `loglik_constant`, the saturated constant Σ log p(y_i | μ_i = y_i) that lme4 1.1 leaves
      out of its nAGQ > 1 deviance (0 where the engine reports lme4's own scale): lme4's
      deviance function at the estimates is `criterion + 2·loglik_constant`.
    - `methods` (`FitMethods`): objective, predict and simulate, attached by the engine
      (`attach`); `extra`: engine-specific information, not compared across engines.

    `ranef`, `cond_var`, `fitted` and `residuals` may be deferred by the engine (computed when
    first read; see the module docstring): the R engine's embedded transport fetches cond_var,
    fitted and residuals from the live merMod on first read.
    """

    _HOOKS: ClassVar[tuple[str, ...]] = ("methods",)

    model: Literal["lmer", "glmer"]
    formula: str
    family: str
    link: str
    reml: bool
    fixef: pd.Series
    vcov: pd.DataFrame
    theta: np.ndarray
    theta_names: list[str]
    varcorr: pd.DataFrame
    sigma: float
    ranef: dict[str, pd.DataFrame] = DeferredField()  # type: ignore[assignment]
    cond_var: dict[str, np.ndarray] = DeferredField()  # type: ignore[assignment]
    loglik: float
    df: int
    deviance: float
    reml_criterion: float | None
    aic: float
    bic: float
    nobs: int
    ngroups: dict[str, int]
    fitted: np.ndarray = DeferredField()  # type: ignore[assignment]
    residuals: np.ndarray = DeferredField()  # type: ignore[assignment]
    singular: bool
    converged: bool
    messages: list[Message]
    engine: str
    versions: dict[str, str]
    nagq: int = 1
    optimizer: dict[str, Any] = field(default_factory=dict)
    dropped_columns: list[str] = field(default_factory=list)
    vcov_rx: pd.DataFrame | None = field(default=None, repr=False, compare=False)
    loglik_constant: float = 0.0
    nb_theta: float | None = None  # negative binomial θ (getME(fit, "glmer.nb.theta"))
    methods: FitMethods = field(default_factory=FitMethods, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    # Set by the public calls (mixbridge.lmer/glmer); None for fits made another way.
    call: FitCall | None = field(default=None, repr=False, compare=False)

    @property
    def fixef_se(self) -> pd.Series:
        return pd.Series(np.sqrt(np.diag(self.vcov.to_numpy())), index=self.vcov.index)

    @property
    def criterion(self) -> float:
        """The value the optimizer minimized: REML criterion, ML deviance, or glmer's -2 logLik.

        It is `objective(...)` at the fit's own estimates (glmer nAGQ > 1 on the Python engine:
        minus 2·loglik_constant, the saturated constant lme4 1.1 leaves out), and
        `lmer_objective`/`glmer_objective` with the fit's arguments give the same value. glmer:
        the deviance function's PIRLS tolerance is `optimizer["tol_pwrss"]`.
        """
        if self.model == "lmer":
            return self.reml_criterion if self.reml else -2.0 * self.loglik
        return -2.0 * self.loglik

    def attach(
        self,
        *,
        objective: Callable[..., float] | None = None,
        predict: Callable[..., np.ndarray] | None = None,
        simulate: Callable[..., np.ndarray] | None = None,
        tests: Callable[..., pd.DataFrame] | None = None,
        confint: Callable[..., pd.DataFrame] | None = None,
    ) -> MixedFit:
        """Attach the engine's objective, predict, simulate, tests and/or confint (see
        `FitMethods`); the ones not given stay as they are. Returns the fit."""
        given = {
            "objective": objective,
            "predict": predict,
            "simulate": simulate,
            "tests": tests,
            "confint": confint,
        }
        self.methods = replace(self.methods, **{k: v for k, v in given.items() if v is not None})
        return self

    def objective(self, *params: Any, control: Mapping[str, Any] | None = None) -> float:
        """The engine's criterion at given parameters: lmer theta; glmer (theta, beta).

        It is the function the fit minimized: at the fit's own estimates it is `criterion`
        (glmer nAGQ > 1: plus 2·loglik_constant, lme4's unnormalized scale), and
        `glmer_objective`/`lmer_objective` with the fit's arguments give the same values.
        glmer `control` (e.g. {"tol_pwrss": 1e-12}) evaluates the same model's deviance function
        with other PIRLS controls instead, as `glmer_objective(..., control=...)` does.
        """
        fn = self.methods.objective
        if fn is None:
            raise self.missing_engine_function("objective()")
        if control is None:
            return float(fn(*params))
        if self.model != "glmer":
            raise ArgumentError("control= applies to glmer deviance functions only", "control")
        if "control" not in inspect.signature(fn).parameters:
            raise NotImplementedError(
                f"engine {self.engine!r} cannot evaluate its objective with another control"
            )
        return float(fn(*params, control=dict(control)))

    @named_arguments
    def predict(
        self,
        newdata: Any = None,
        re_form: Any = None,
        allow_new_levels: bool = False,
        type: str = "link",  # noqa: A002 - lme4's argument name
    ) -> np.ndarray:
        """Predictions like lme4's predict.merMod (re_form, allow_new_levels, type).
        `newdata`: any frame the fitting calls take (pandas, polars, pyarrow, narwhals).

        On new data, as lme4, the formula's offset() terms are evaluated and an offset= argument
        of the fit is not applied (a MixbridgeWarning says so): put the offset in the formula,
        or add it to the result, to include it."""
        from mixbridge.data_input import as_pandas

        allow = check_flag(allow_new_levels, "allow_new_levels")
        if self.methods.predict is None:
            raise self.missing_engine_function("predict()")
        newdata = as_pandas(newdata, argument="newdata")
        if newdata is not None and self.call is not None and self.call.offset is not None:
            warnings.warn(
                "predict(newdata): as lme4's predict.merMod, the fit's offset= argument is not "
                "applied to new data (only offset() terms of the formula are); use "
                "offset(...) in the formula, or add the offset to the result",
                MixbridgeWarning,
                stacklevel=2,
            )
        return self.methods.predict(newdata, re_form=re_form, allow_new_levels=allow, type=type)

    def simulate(self, nsim: int = 1, seed: int | None = None) -> np.ndarray:
        """New responses drawn from the fitted model (n x nsim), like simulate.merMod."""
        if self.methods.simulate is None:
            raise self.missing_engine_function("simulate()")
        return self.methods.simulate(nsim, seed)

    def summary(self) -> str:
        """A text summary in lme4's print layout (lmer: lmerTest's, with Satterthwaite df and
        p-values, when the engine computes them)."""
        return format_mixed_summary(self)

    def tidy(
        self,
        effects: str | tuple[str, ...] | list[str] = ("fixed", "ran_pars"),
        conf_int: bool = False,
        conf_level: float = 0.95,
    ) -> pd.DataFrame:
        """broom.mixed's `tidy(fit, effects, conf.int, conf.level)` table, snake_case columns."""
        from mixbridge.tidy import tidy_mixed

        return tidy_mixed(self, effects=effects, conf_int=conf_int, conf_level=conf_level)

    def glance(self) -> pd.DataFrame:
        """broom.mixed's `glance(fit)`: one row of fit statistics, snake_case columns."""
        from mixbridge.tidy import glance_mixed

        return glance_mixed(self)

    def to_r(self, name: str | None = None) -> Any:
        """This fit as a real lme4 merMod in the embedded R session (rpy2 object), built by
        lme4's modular functions at this fit's θ (and β for glmer), without refitting.
        `name`: also bind it under that name in R's global environment."""
        from mixbridge.bridge.to_r import to_mermod

        return to_mermod(self, name=name)

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        """The fit as JSON-ready data (schema "mixbridge.fit/1"; see `mixbridge.serialize`).
        `rows=True` adds the per-row fitted values and residuals."""
        from mixbridge.serialize import mixed_fit_dict

        return mixed_fit_dict(self, rows=rows)

    def _repr_html_(self) -> str:
        from mixbridge.display import mixed_fit_html

        return mixed_fit_html(self)

    def __str__(self) -> str:
        return self.summary()


@dataclass(repr=False)
class BayesGLMFit(DeferredFields):
    """A fitted arm::bayesglm model.

    `coef`, `se` (summary.glm SEs, Pearson dispersion), `se_display` (display() SEs, the fit's
    internal dispersion), `vcov` (summary's cov.scaled); `dispersion` is arm's final EM value
    (`fit$dispersion`), `dispersion_pearson` the summary one. `deviance` is unpenalized.
    `fitted` may be deferred by the engine (computed when first read).
    """

    formula: str
    family: str
    link: str
    coef: pd.Series
    se: pd.Series
    se_display: pd.Series
    vcov: pd.DataFrame
    dispersion: float
    dispersion_pearson: float
    deviance: float
    null_deviance: float
    aic: float
    df_residual: int
    iterations: int
    converged: bool
    prior_mean: np.ndarray
    prior_scale: np.ndarray
    prior_df: np.ndarray
    prior_sd: np.ndarray
    fitted: np.ndarray = DeferredField()  # type: ignore[assignment]
    nobs: int
    messages: list[Message]
    engine: str
    versions: dict[str, str]
    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    def summary(self) -> str:
        return format_bayesglm_summary(self)

    def to_dict(self, rows: bool = False) -> dict[str, Any]:
        """The fit as JSON-ready data (schema "mixbridge.fit/1"; see `mixbridge.serialize`).
        `rows=True` adds the per-row fitted values."""
        from mixbridge.serialize import bayesglm_fit_dict

        return bayesglm_fit_dict(self, rows=rows)

    def _repr_html_(self) -> str:
        from mixbridge.display import bayesglm_fit_html

        return bayesglm_fit_html(self)

    def __str__(self) -> str:
        return self.summary()


# ---------------------------------------------------------------------------------------------
# Printing in R's layout


def _fmt(x: float, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "NA"
    return f"{x:.{digits}g}" if abs(x) < 1e-3 or abs(x) >= 1e5 else f"{x:.{digits}f}"


def format_mixed_summary(fit: MixedFit) -> str:
    lines: list[str] = []
    if fit.model == "lmer":
        method = "REML" if fit.reml else "maximum likelihood"
        lines.append(f"Linear mixed model fit by {method}  ['lmerMod']")
    else:
        approx = (
            "Laplace Approximation"
            if fit.nagq <= 1
            else f"Adaptive Gauss-Hermite Quadrature (nAGQ = {fit.nagq})"
        )
        lines.append(
            f"Generalized linear mixed model fit by maximum likelihood ({approx}) ['glmerMod']"
        )
        family = fit.family
        if fit.nb_theta is not None:  # lme4 prints MASS's family name
            family = f"Negative Binomial({fit.nb_theta:.4g})"
        lines.append(f" Family: {family}  ( {fit.link} )")
    lines.append(f"Formula: {fit.formula}")
    lines.append(f"Engine: {fit.engine}")
    lines.append("")
    if fit.model == "lmer" and fit.reml:
        lines.append(f"REML criterion at convergence: {fit.reml_criterion:.4f}")
    else:
        lines.append(
            f"{'AIC':>9} {'BIC':>9} {'logLik':>9} {'deviance':>9} {'df.resid':>9}\n"
            f"{fit.aic:9.1f} {fit.bic:9.1f} {fit.loglik:9.1f} {-2 * fit.loglik:9.1f} "
            f"{fit.nobs - fit.df:9d}"
        )
    lines.append("")
    lines.append("Random effects:")
    vc = fit.varcorr
    lines.append(f" {'Groups':<10} {'Name':<14} {'Variance':>10} {'Std.Dev.':>9} {'Corr':>6}")
    var_rows = vc[vc["var2"].isna()] if "var2" in vc else vc
    previous = None
    for _, row in var_rows.iterrows():
        grp = row["grp"]
        name = "" if row["var1"] is None or (isinstance(row["var1"], float)) else row["var1"]
        corr = vc[(vc["grp"] == grp) & (vc["var2"].notna()) & (vc["var2"] == name)]
        corr_txt = " ".join(f"{c:6.2f}" for c in corr["sdcor"]) if len(corr) else ""
        shown = "" if grp == previous else grp  # as lme4: a group's name on its first row only
        previous = grp
        lines.append(f" {shown:<10} {name:<14} {row['vcov']:10.4f} {row['sdcor']:9.4f} {corr_txt}")
    groups = ", ".join(f"{g}, {n}" for g, n in fit.ngroups.items())
    lines.append(f"Number of obs: {fit.nobs}, groups:  {groups}")
    lines.append("")
    lines.append("Fixed effects:")
    table = _satterthwaite_table(fit)
    if table is not None:  # lmerTest's summary: df and p-values (Satterthwaite)
        width = max([len(str(k)) for k in table.index] + [11])
        lines.append(
            f"{'':<{width}} {'Estimate':>10} {'Std. Error':>10} {'df':>9} {'t value':>8} "
            f"{'Pr(>|t|)':>10}"
        )
        for name, row in table.iterrows():
            lines.append(
                f"{name:<{width}} {row['estimate']:10.5g} {row['std_error']:10.5g} "
                f"{row['df']:9.3f} {row['statistic']:8.3f} {row['p_value']:10.3g}"
            )
        lines.append("(df: Satterthwaite's method, as lmerTest)")
    se = fit.fixef_se
    stat_name = "t value" if fit.model == "lmer" else "z value"
    width = max([len(str(k)) for k in fit.fixef.index] + [11])
    if table is None:
        lines.append(f"{'':<{width}} {'Estimate':>10} {'Std. Error':>10} {stat_name:>8}")
    for name, est in fit.fixef.items() if table is None else ():
        lines.append(f"{name:<{width}} {est:10.5g} {se[name]:10.5g} {est / se[name]:8.3f}")
    if fit.singular:
        lines.append("optimizer: boundary (singular) fit: see help('isSingular')")
    for m in fit.messages:
        if m.kind in ("warning", "message"):
            lines.append(f"{m.kind}: {m.text}")
    if any(m.kind == "warning" and m.code == "convergence" for m in fit.messages):
        lines.append(ALLFIT_POINTER)
    return "\n".join(lines)


def _satterthwaite_table(fit: MixedFit) -> pd.DataFrame | None:
    """lmer's coefficient table with Satterthwaite df for the summary, when the engine offers
    it (None otherwise, or when it cannot be computed: the summary then shows lme4's table)."""
    if fit.model != "lmer" or fit.methods.tests is None:
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return fit.coef_table("satterthwaite")
    except Exception:  # noqa: BLE001 - the summary must print whatever the tests do
        return None


# summary()/print of a fit with a convergence warning (mixbridge.allfit, issue 16)
ALLFIT_POINTER = (
    "Does this convergence warning matter? fit.allfit() refits with several optimizers "
    "(both engines) and gives a verdict"
)


def format_bayesglm_summary(fit: BayesGLMFit) -> str:
    lines = [
        f"bayesglm(formula = {fit.formula}, family = {fit.family}(link = {fit.link}))",
        f"Engine: {fit.engine}",
        "",
        "Coefficients:",
    ]
    width = max([len(str(k)) for k in fit.coef.index] + [11])
    lines.append(f"{'':<{width}} {'coef.est':>10} {'coef.se':>10}")
    for name, est in fit.coef.items():
        lines.append(f"{name:<{width}} {est:10.5g} {fit.se_display[name]:10.5g}")
    lines.append("---")
    lines.append(f"n = {fit.nobs}, k = {len(fit.coef)}")
    lines.append(f"residual deviance = {fit.deviance:.1f}, null deviance = {fit.null_deviance:.1f}")
    if fit.family not in ("binomial", "poisson"):
        lines.append(f"overdispersion parameter = {fit.dispersion:.1f}")
    lines.append(f"iterations = {fit.iterations}, converged = {fit.converged}")
    return "\n".join(lines)
