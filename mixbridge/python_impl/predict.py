"""predict.merMod and simulate.merMod for the Python engine's fits, lmer and glmer alike.

    FitPredictions(...).predict(newdata, re_form, allow_new_levels, type)
    FitPredictions(...).simulate(nsim, seed)

`re_form` selects random-effects terms as lme4's mkNewReTrms: None (all), "~0"/NA (none), or a
one-sided formula of terms, which pick the model's columns by grouping factor and column name
after `||` and `/` expansion. New data get X from the fit's levels, contrasts and transforms,
the formula's offset() terms; as lme4's predict.merMod, an offset= argument of the fit is not
applied to new data (MixedFit.predict warns). type="response" applies lme4's inverse link
(identity for lmer).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixbridge.errors import ArgumentError, DataError

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms, ReTerm


@dataclass
class FitPredictions:
    """The fit's predict and simulate (attached to the MixedFit by the engine).

    `beta`, `b` (Λũ, level-major per term), `tks` (T_k per term), `sigma` (None: no residual
    scale). `population` gives Xβ + offset on the fitted rows (in the data's order);
    `fitted_link`: η at the fit itself, returned for predict() with all random effects (glmer's
    PIRLS η, and `fitted_response` its μ; None: recomputed, lmer). `linkinv`: lme4's inverse
    link (None: identity). `family`: "gaussian", "binomial", "poisson" or "negative.binomial"
    (simulate's response; `nb_theta` its θ); `weights`: the prior weights; `trials`: binomial
    trials per row (simulate)."""

    terms: MixedTerms
    beta: np.ndarray
    b: np.ndarray
    tks: list[np.ndarray]
    sigma: float | None
    population: Callable[[], np.ndarray]
    family: str = "gaussian"
    linkinv: Callable[[np.ndarray], np.ndarray] | None = None
    fitted_link: np.ndarray | None = None
    fitted_response: np.ndarray | None = None
    weights: np.ndarray | None = None
    trials: np.ndarray | None = None
    nb_theta: float | None = None

    def predict(
        self,
        newdata: pd.DataFrame | None = None,
        re_form: Any = None,
        allow_new_levels: bool = False,
        type: str = "link",  # noqa: A002 - lme4's argument name
    ) -> np.ndarray:
        if type not in ("link", "response"):
            raise ArgumentError(f"type must be 'link' or 'response', got {type!r}", "type")
        terms = self.terms
        reterms = list(terms.reterms)
        use = parse_re_form(re_form, reterms)
        if newdata is None and re_form is None and self.fitted_link is not None:
            fitted = self.fitted_link if type == "link" else self.fitted_response
            if fitted is not None:
                return fitted.copy()
        gp = np.concatenate([[0], np.cumsum([t.n_levels * t.p for t in reterms])])
        if newdata is None:  # computed on demand: a fit keeps no extra n-vectors
            eta = self.population()
        else:
            x_new = np.asarray(terms.fixed_matrix(newdata), dtype=float)
            eta = x_new @ self.beta + _newdata_offset(terms, newdata)
        for k, cols in use.items():
            t = reterms[k]
            if newdata is None:
                c = np.asarray(t.codes)
                z = np.asarray(t.Z, float).reshape(len(eta), -1)
            else:
                c = np.asarray(t.codes_for(newdata))
                bad = c < 0
                if bad.any() and not allow_new_levels:
                    vals = _group_values(t, newdata)[bad]
                    raise DataError(
                        f"new level(s) {sorted(set(vals.tolist()))[:5]} in grouping factor "
                        f"'{t.group}' not in the fitted data; use allow_new_levels=True for "
                        "population-level predictions on those rows",
                        t.group,
                    )
                z = np.asarray(t.Z_for(newdata), float).reshape(len(eta), -1)
            bk = self.b[gp[k] : gp[k + 1]].reshape(t.n_levels, t.p)[:, cols]
            ok = c >= 0  # unseen or missing levels contribute 0 (allow_new_levels)
            eta[ok] += np.einsum("ic,ic->i", z[ok][:, cols], bk[c[ok]])
        return self._scale(eta, type)

    def _scale(self, eta: np.ndarray, type: str) -> np.ndarray:  # noqa: A002
        return eta if type == "link" or self.linkinv is None else self.linkinv(eta)

    def simulate(self, nsim: int = 1, seed: int | None = None) -> np.ndarray:
        """simulate.merMod's default (use.u = FALSE): new random effects b ~ N(0, σ²ΛΛ'),
        then y | b: gaussian with variance σ²/w; binomial successes out of each row's trials
        (0/1 for a Bernoulli response); poisson or negative-binomial counts. Returns (n, nsim)."""
        if not isinstance(nsim, (int, np.integer)) or nsim < 1:
            raise ArgumentError(f"nsim must be a positive integer, got {nsim!r}", "nsim")
        terms = self.terms
        n = int(terms.n)
        scale = 1.0 if self.sigma is None else self.sigma
        rng = np.random.default_rng(seed)
        out = np.repeat(self.population()[:, None], nsim, axis=1)
        for t, tk in zip(terms.reterms, self.tks, strict=True):
            # b ~ N(0, σ²T T') per level: b = σ T u with u ~ N(0, I)
            u = rng.standard_normal((nsim, t.n_levels, t.p))
            bnew = scale * np.einsum("ab,slb->sla", tk, u)
            z = np.asarray(t.Z, float).reshape(n, -1)
            codes = np.asarray(t.codes)
            out += np.einsum("ic,sic->is", z, bnew[:, codes, :])
        w = np.ones(n) if self.weights is None else np.asarray(self.weights, float)
        if self.family == "gaussian":
            with np.errstate(divide="ignore"):
                sd = scale / np.sqrt(w)
            out += rng.standard_normal((n, nsim)) * sd[:, None]
            return out
        assert self.linkinv is not None
        mu = self.linkinv(out)
        if self.family == "binomial":
            trials = np.round(w if self.trials is None else self.trials).astype(np.int64)
            return rng.binomial(trials[:, None], mu).astype(float)
        if self.family == "negative.binomial":
            # MASS's rnegbin(μ, θ), which lme4's simulate uses: a gamma-poisson mixture with
            # mean μ and variance μ + μ²/θ
            if self.nb_theta is None:
                raise ArgumentError("a negative.binomial fit without its theta", "nb_theta")
            th = float(self.nb_theta)
            return rng.negative_binomial(th, th / (th + mu)).astype(float)
        return rng.poisson(mu).astype(float)


def _group_values(t: ReTerm, newdata: pd.DataFrame) -> np.ndarray:
    """The grouping values of newdata as strings, for naming unseen levels."""
    if t.group in newdata.columns:
        return newdata[t.group].astype(str).to_numpy()
    parts = t.group.split(":")
    if all(pc in newdata.columns for pc in parts):
        vals = newdata[parts[0]].astype(str)
        for pc in parts[1:]:
            vals = vals + ":" + newdata[pc].astype(str)
        return vals.to_numpy()
    return np.array(["?"] * len(newdata))


def _newdata_offset(terms: MixedTerms, newdata: pd.DataFrame) -> np.ndarray:
    """The formula's offset() terms evaluated on newdata. lme4's predict.merMod adds only these:
    an offset= argument of the fit is left out on new data (its source: "FIXME: is this
    redundant??"), and so it is here."""
    if hasattr(terms, "offset_for"):
        return np.asarray(terms.offset_for(newdata), dtype=float)
    return np.zeros(len(newdata))


def parse_re_form(re_form: Any, reterms: list[ReTerm]) -> dict[int, np.ndarray]:
    """The random effects to include, as {term index: its columns}: all (None), none ("~0",
    NA), or those named in a one-sided formula such as "~ (1 | plate)".

    As lme4's predict (mkNewReTrms), re_form's terms pick columns of the model's random effects
    by grouping factor and column name, after `||` and `/` expansion: `~ (1 | Subject)` keeps
    only the intercepts of Subject, in a `(Days | Subject)` or a `(Days || Subject)` model.
    """
    everything = {k: np.arange(t.p) for k, t in enumerate(reterms)}
    if re_form is None:
        return everything
    if isinstance(re_form, float) and math.isnan(re_form):
        return {}
    if isinstance(re_form, str):
        text = re_form.replace(" ", "")
        if text in ("~0", "NA", "~-1"):
            return {}
        wanted = _re_form_terms(re_form)
        if wanted:
            return _select_columns(wanted, reterms)
    raise ArgumentError(
        f"re_form must be None (all random effects), '~0' (none) or a formula of random-effects "
        f"terms such as '~ (1 | g)', got {re_form!r}",
        "re_form",
    )


def _select_columns(
    wanted: list[tuple[str, list[str]]], reterms: list[ReTerm]
) -> dict[int, np.ndarray]:
    known = sorted({t.group for t in reterms})
    picked: dict[int, set[int]] = {}
    for group, names in wanted:
        if group not in known:
            raise ArgumentError(
                f"re_form names grouping factor(s) {[group]} that are not in the model "
                f"(model factors: {known})",
                "re_form",
            )
        whole = [k for k, t in enumerate(reterms) if t.group == group and _labels(t) == names]
        for k in whole:  # the same term as the model's (factor columns included)
            picked.setdefault(k, set()).update(range(reterms[k].p))
        for name in [] if whole else names:
            hits = [
                (k, j)
                for k, t in enumerate(reterms)
                if t.group == group
                for j, c in enumerate(t.cnames)
                if c == name
            ]
            if not hits:
                have = [c for t in reterms if t.group == group for c in t.cnames]
                raise ArgumentError(
                    f"re_form term on {group!r} names {name!r}, which is not a random effect of "
                    f"{group!r} in the model (its columns: {have})",
                    "re_form",
                )
            for k, j in hits:
                picked.setdefault(k, set()).add(j)
    return {k: np.array(sorted(js)) for k, js in sorted(picked.items())}


def _labels(t: ReTerm) -> list[str] | None:
    """A model term's left side as re_form spells it: "(Intercept)" and its term labels."""
    return t.lhs_labels


def _re_form_terms(re_form: str) -> list[tuple[str, list[str]]]:
    """(grouping factor, column names of the left side) of each term of a one-sided re_form
    formula ([] when it is not one)."""
    from mixbridge.errors import FormulaError
    from mixbridge.formula.parse import Num, parse_formula
    from mixbridge.formula.terms import expand_bars, expand_terms, split_bars

    try:
        tree = parse_formula(re_form)
    except FormulaError:
        return []
    if tree.lhs is not None or tree.rhs is None:
        return []
    fixed, bars = split_bars(tree.rhs)
    if fixed is not None and not (isinstance(fixed, Num) and fixed.value in (0, 1)):
        return []  # fixed-effect terms in re_form: not a random-effects formula
    out = []
    for bar in expand_bars(bars):
        info = expand_terms(bar.lhs)
        out.append((bar.group_name, ["(Intercept)"] * bool(info.intercept) + info.labels))
    return out
