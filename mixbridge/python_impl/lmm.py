"""lme4's lmer in pure Python (lme4_spec.md §1, §2, §4).

The pipeline, as in lme4's modular functions:

    formula, data --build_mixed_terms--> MixedTerms           (lFormula)
                  --LmerDevfun---------> d(θ) / d_R(θ)         (mkLmerDevfun: a pure function of θ)
                  --optimize_theta-----> θ̂ + diagnostics       (optimizeLmer, checkConv)
                  --_build_fit---------> MixedFit              (mkMerMod)

A model whose only random term is a scalar `(1|g)` takes the O(G) path of `lmm_scalar` (§2);
everything else goes through the blocked PLS core in `predictor`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from mixbridge.errors import ArgumentError, DataError
from mixbridge.python_impl import output
from mixbridge.python_impl.optimize import OptResult, check_scale_x, optimize_theta
from mixbridge.python_impl.predictor import (
    Predictor,
    blas_single_thread,
    lower_bounds,
    theta_start,
)
from mixbridge.results import Message, MixedFit, emit_warnings

_CONTROL_KEYS = {"restart_edge", "boundary_tol", "calc_derivs", "maxeval", "start"}


# ---------------------------------------------------------------------------------------------
# Entry points (engine protocol)


def lmer(
    formula: str,
    data: pd.DataFrame,
    *,
    reml: bool = True,
    weights: Any = None,
    offset: Any = None,
    control: Mapping[str, Any] | None = None,
    frame: Any = None,
    **_: Any,
) -> MixedFit:
    """Fit `lmer(formula, data, REML = reml)`; see the module docstring for the pipeline.
    `frame`: the evaluated model frame from the input checks (None: evaluate here)."""
    terms = build_terms(formula, data, weights, offset, frame)
    fit = fit_terms(terms, formula=formula, reml=reml, control=control, offset_arg=offset)
    emit_warnings(fit.messages)  # as the R engine re-emits R's warnings
    return fit


def lmer_objective(
    formula: str,
    data: pd.DataFrame,
    *,
    theta: Any,
    reml: bool = True,
    weights: Any = None,
    offset: Any = None,
    frame: Any = None,
    **_: Any,
) -> float:
    """lme4's deviance function (devFunOnly=TRUE) at θ: the REML criterion or ML deviance."""
    terms = build_terms(formula, data, weights, offset, frame)
    check_terms(terms)
    terms.ensure_x()
    with blas_single_thread():
        devfun = LmerDevfun(terms, reml)
        return devfun(devfun.check_theta(theta))


def build_terms(
    formula: str, data: pd.DataFrame, weights: Any, offset: Any, frame: Any = None
) -> Any:
    from mixbridge.formula import build_mixed_terms

    # lazy_x: the O(G) path reads X's columns; any other path calls terms.ensure_x()
    return build_mixed_terms(
        formula, data, weights=weights, offset=offset, frame=frame, lazy_x=True
    )


# ---------------------------------------------------------------------------------------------
# Checks (lme4's checkNlevels, checkZdims and our own guards when called directly)


def check_terms(terms: Any) -> None:
    """Raise DataError for models lme4 refuses (or that would give meaningless numbers)."""
    n = int(terms.n)
    if n == 0:
        raise DataError("no observations left to fit (all rows were dropped as missing)")
    y = np.asarray(terms.y)
    if not np.issubdtype(y.dtype, np.number) or y.dtype == bool:
        raise DataError("the response must be numeric for lmer", "response")
    lo, hi = float(np.min(y)), float(np.max(y))  # NaN propagates: two passes check it all
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError("the response has non-finite values (Inf or NaN)", "response")
    if n > 1 and lo == hi:
        name = getattr(terms, "response_name", "response")
        raise DataError(
            f"the response {name!r} is constant: a linear mixed model cannot be fitted", name
        )
    if not terms.reterms:
        raise DataError(
            "no random effects terms specified in formula: use an ordinary linear model "
            "(e.g. statsmodels OLS) instead of lmer"
        )
    if terms.weights is not None:
        w = np.asarray(terms.weights, dtype=float)
        if w.shape != (n,):
            raise DataError(f"weights must have one value per row ({n}), got {w.shape}", "weights")
        wv = w[:1] if w.strides == (0,) else w  # broadcast unit weights: one value to check
        lo, hi = float(np.min(wv)), float(np.max(wv))
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise DataError("weights must be finite (found NaN or Inf)", "weights")
        if lo < 0:
            raise DataError(
                f"weights must be non-negative ({int(np.sum(w < 0))} negative)", "weights"
            )
        if lo == 0:
            # lme4 returns a degenerate fit (criterion +Inf: log 0 in Σ log w) for these
            zero = np.flatnonzero(w == 0)
            raise DataError(
                f"lmer weights must be positive: {zero.size} zero weight(s) (rows "
                f"{', '.join(str(int(i)) for i in zero[:5])}{', ...' if zero.size > 5 else ''}); "
                "lme4's criterion is infinite then. Drop those rows instead",
                "weights",
            )
    if terms.offset is not None:
        o = np.asarray(terms.offset, dtype=float)
        # a finite sum means finite values (an overflowing sum gets the exact check)
        finite = math.isfinite(float(np.sum(o))) or bool(np.isfinite(o).all())
        if o.shape != (n,) or not finite:
            raise DataError(f"offset must be {n} finite values", "offset")
    for t in terms.reterms:
        if t.n_levels < 2:
            raise DataError(f"grouping factor '{t.group}' must have > 1 sampled level", t.group)
        if t.n_levels >= n:
            raise DataError(
                f"number of levels of each grouping factor must be < number of observations "
                f"(problems: {t.group}: {t.n_levels} levels, {n} observations)",
                t.group,
            )
        if t.n_levels * t.p >= n:
            raise DataError(
                f"number of observations (={n}) <= number of random effects "
                f"(={t.n_levels * t.p}) for term ({' + '.join(t.cnames)} | {t.group}); the "
                "random-effects parameters and the residual variance are probably unidentifiable",
                t.group,
            )


# ---------------------------------------------------------------------------------------------
# The profiled criterion


def profiled_criteria(
    ldL2: float, ldRX2: float, ldW: float, pwrss: float, n: int, p: int
) -> tuple[float, float]:
    """(ML deviance d, REML criterion d_R) from the PLS pieces (spec §1.4, lmerResp::Laplace)."""
    two_pi = 2.0 * math.pi
    ml = ldL2 - ldW + n * (1.0 + math.log(two_pi * pwrss / n))
    nmp = n - p
    rc = ldL2 + ldRX2 - ldW + nmp * (1.0 + math.log(two_pi * pwrss / nmp))
    return ml, rc


@dataclass
class PLSState:
    """Everything the outputs need at one θ (cf. lme4's devcomp)."""

    theta: np.ndarray
    beta: np.ndarray
    u: np.ndarray
    pwrss: float
    ldL2: float
    ldRX2: float
    ml_deviance: float
    reml_criterion: float


_GRAD_THETA_MIN = 1e-6  # see LmerDevfun.profiled_grad


class LmerDevfun:
    """d(θ) or d_R(θ) for fixed model terms: lme4's `devfun` (setTheta → updateDecomp → solve →
    Laplace). Calling it is a pure function of θ; `state(θ)` returns the full PLS solution."""

    def __init__(self, terms: Any, reml: bool) -> None:
        self.terms = terms
        self.reml = bool(reml)
        self.pred = Predictor(terms)
        off = np.zeros(terms.n) if terms.offset is None else np.asarray(terms.offset, float)
        self.offset = off
        self.y = np.asarray(terms.y, dtype=float) - off
        w = self.pred.prior_w
        self.ldW = float(np.sum(np.log(w[w > 0])))
        self.lower = lower_bounds(self.pred.reterms)

    def check_theta(self, theta: Any) -> np.ndarray:
        th = np.atleast_1d(np.asarray(theta, dtype=float)).ravel()
        if th.size != self.pred.n_theta:
            raise ArgumentError(
                f"theta must have length {self.pred.n_theta} for this model, got {th.size}", "theta"
            )
        if not np.all(np.isfinite(th)):
            raise ArgumentError("theta must be finite", "theta")
        return th

    def state(self, theta: np.ndarray) -> PLSState:
        pred = self.pred
        pred.update(theta)
        beta, u = pred.solve(self.y)
        r2 = pred.pwrss(self.y, beta, u)
        ml, rc = profiled_criteria(pred.ldL2, pred.ldRX2, self.ldW, r2, pred.n, pred.p)
        return PLSState(np.array(theta, float), beta, u, r2, pred.ldL2, pred.ldRX2, ml, rc)

    def __call__(self, theta: np.ndarray) -> float:
        st = self.state(theta)
        return st.reml_criterion if self.reml else st.ml_deviance

    def profiled(self, theta: np.ndarray) -> float:
        """The same criterion for the optimizer loop: from `Predictor.profile` (one Cholesky of
        the augmented [Z X y] system, PWRSS as its last pivot; no solve, no n-vectors). Agrees
        with `__call__` to rounding; the reported values come from `state`."""
        ld, ldrx, r2 = self.pred.profile(theta, self.y)
        ml, rc = profiled_criteria(ld, ldrx, self.ldW, r2, self.pred.n, self.pred.p)
        return rc if self.reml else ml

    def profiled_grad(self, theta: np.ndarray) -> tuple[float, np.ndarray]:
        """`profiled` and its analytic gradient (NaN when the model has vector-valued terms).

        Every θ_k of a scalar term scales its ℓ_k columns, so with S_s,k the sums of the
        leading blocks' inverse diagonals (`Predictor.profile_gradient_sums`):
            d_R = log|Ω_[ZX]| + (n − p) log r²   ->  ∂_k = (2(ℓ_k − S2_k) − 2(n − p) Sy_k) / θ_k
            d   = log|Ω_[Z]|  + n log r²         ->  ∂_k = (2(ℓ_k − S1_k) − 2n Sy_k) / θ_k
        (log r² = log|Ω_[ZXy]| − log|Ω_[ZX]|). Components with θ_k ≤ _GRAD_THETA_MIN are NaN
        (the optimizer takes a finite difference): the criterion is even in θ_k, so θ_k = 0 is
        always stationary and only a one-sided difference tells whether to leave the bound;
        below that the ratio also loses its precision (ℓ_k − S is O(θ_k²)).
        """
        theta = np.asarray(theta, dtype=float)
        f = self.profiled(theta)
        sums = self.pred.profile_gradient_sums()
        if sums is None:
            return f, np.full(theta.size, np.nan)
        n, p = self.pred.n, self.pred.p
        lev, s1, s2, sy = sums.T
        if self.reml:
            num = 2.0 * (lev - s2) - 2.0 * (n - p) * sy
        else:
            num = 2.0 * (lev - s1) - 2.0 * n * sy
        with np.errstate(divide="ignore", invalid="ignore"):
            g = np.where(theta > _GRAD_THETA_MIN, num / theta, np.nan)
        return f, g


def scalar_start(terms: Any) -> np.ndarray | None:
    """lme4's special start when every term is a scalar (1|f) on its own factor (§1.6)."""
    rts = terms.reterms
    groups = [t.group for t in rts]
    if not all(t.p == 1 and list(t.cnames) == ["(Intercept)"] for t in rts):
        return None
    if len(set(groups)) != len(groups):
        return None
    y = np.asarray(terms.y, dtype=float)
    vk = []
    for t in rts:
        codes = np.asarray(t.codes)
        means = np.bincount(codes, weights=y, minlength=t.n_levels) / np.maximum(
            np.bincount(codes, minlength=t.n_levels), 1
        )
        vk.append(float(np.var(means[codes], ddof=1)))
    ve = float(np.var(y, ddof=1)) - sum(vk)
    if ve <= 0:
        return None
    return np.sqrt(np.array(vk) / ve)


# ---------------------------------------------------------------------------------------------
# Fitting


def _control(control: Mapping[str, Any] | None) -> dict[str, Any]:
    ctrl = dict(control or {})
    unknown = set(ctrl) - _CONTROL_KEYS
    if unknown:
        raise ArgumentError(
            f"unknown lmer control setting(s) {sorted(unknown)}; known: {sorted(_CONTROL_KEYS)}",
            sorted(unknown)[0],
        )
    return ctrl


def _is_scalar_ri(terms: Any) -> bool:
    rts = terms.reterms
    return len(rts) == 1 and rts[0].p == 1 and list(rts[0].cnames) == ["(Intercept)"]


def fit_terms(
    terms: Any,
    *,
    formula: str,
    reml: bool,
    control: Mapping[str, Any] | None = None,
    offset_arg: Any = None,
) -> MixedFit:
    """Fit lmer on already-built model terms. `offset_arg` is the offset= argument as given
    (a column name can be re-evaluated on newdata by predict)."""
    ctrl = _control(control)
    check_terms(terms)
    with blas_single_thread():
        fit = _fit_terms(terms, formula=formula, reml=reml, ctrl=ctrl)
    return fit.attach(
        predict=_make_predict(terms, fit.fixef.to_numpy(), fit.extra.pop("b"), offset_arg)
    )


def _fit_terms(terms: Any, *, formula: str, reml: bool, ctrl: dict[str, Any]) -> MixedFit:
    if _is_scalar_ri(terms) and not ctrl and _scalar_path_available():
        # O(G) path; control settings belong to the general optimizer and route fits there
        return _fit_scalar(terms, formula=formula, reml=reml)
    terms.ensure_x()
    devfun = LmerDevfun(terms, reml)
    start = ctrl.get("start")
    if start is None:
        start = scalar_start(terms)
    theta0 = theta_start(devfun.pred.reterms) if start is None else devfun.check_theta(start)
    settings = {
        "restart_edge": bool(ctrl.get("restart_edge", True)),
        "boundary_tol": float(ctrl.get("boundary_tol", 1e-5)),
        "calc_derivs": bool(ctrl.get("calc_derivs", True)),
        "maxeval": int(ctrl.get("maxeval", 100_000)),
    }
    opt = optimize_theta(
        devfun.profiled, theta0, devfun.lower, value_grad=devfun.profiled_grad, **settings
    )
    opt = _try_mirrored_start(devfun, opt, settings)
    st = devfun.state(opt.theta)  # leave the model state at the final θ (lme4's last step)
    pred = devfun.pred
    sigma = math.sqrt(st.pwrss / (pred.n - pred.p if reml else pred.n))
    b = pred.b(st.u)
    return _build_fit(
        terms,
        formula=formula,
        reml=reml,
        theta=st.theta,
        beta=st.beta,
        b=b,
        sigma=sigma,
        vcov_unscaled=pred.rx_inverse(),
        cond_var=pred.cond_var_by_factor(sigma),
        ml_deviance=st.ml_deviance,
        reml_criterion=st.reml_criterion,
        fitted=devfun.offset + pred.Xb(st.beta) + pred.Zb(st.u),
        opt=opt,
        objective=devfun,
    )


def _try_mirrored_start(devfun: LmerDevfun, opt: OptResult, settings: dict[str, Any]) -> OptResult:
    """A singular fit with correlated terms can be a local optimum: a rank-deficient T_k with
    correlation +1 and one with -1 are separate basins (seen on very unbalanced random-slope
    data, where lme4's BOBYQA happened to land in the better one). Restart once from the default
    start with every off-diagonal set to the opposite sign of the solution's; keep the better."""
    off = ~np.isfinite(devfun.lower)  # off-diagonal θ have no lower bound
    if not opt.singular or not np.any(off & (opt.theta != 0)):
        return opt
    start = theta_start(devfun.pred.reterms)
    start[off] = -np.sign(opt.theta[off])
    alt = optimize_theta(
        devfun.profiled, start, devfun.lower, value_grad=devfun.profiled_grad, **settings
    )
    best = alt if alt.fval < opt.fval else opt
    best.n_evals = opt.n_evals + alt.n_evals
    best.status = f"{best.status} (best of the default and a mirrored-correlation start)"
    return best


def _scalar_path_available() -> bool:
    try:
        from mixbridge.python_impl import lmm_scalar  # noqa: F401
    except ImportError:
        return False
    return True


def _fit_scalar(terms: Any, *, formula: str, reml: bool) -> MixedFit:
    """The O(G) path for a single (1|g) (spec §2), built into the same MixedFit (no Z, no
    Predictor: one pass over the rows for the statistics, one for the fitted values)."""
    from mixbridge.python_impl import lmm_scalar as ls

    t = terms.reterms[0]
    offset = _nonzero_or_none(terms.offset)
    y = np.asarray(terms.y, dtype=float)
    if offset is not None:
        y = y - offset
    w = None if terms.weights is None else np.asarray(terms.weights, dtype=float)
    if w is not None and (w[:1] == 1.0).all() and (w.strides == (0,) or np.ptp(w) == 0.0):
        w = None  # unit weights: the unweighted sums (the frame gives ones when none were set)
    columns = terms.x_columns
    codes = np.asarray(t.codes)
    if terms.X is None and columns and columns[0] is None:
        # [1, x...] as columns: one pass over the columns themselves, X never built
        stats = ls.group_stats_columns(columns[1:], y, w, codes, t.n_levels, x_gram=terms.x_gram)
    else:
        stats = ls.group_stats(terms.ensure_x(), y, w, codes, t.n_levels)
    res = ls.scalar_ri_fit(stats, reml)
    theta = np.array([res.theta])
    fitted = terms.x_times(res.beta)
    for a in range(0, terms.n, _ROW_BLOCK):  # in blocks: no n-vector temporary for b[codes]
        fitted[a : a + _ROW_BLOCK] += res.b[codes[a : a + _ROW_BLOCK]]
    if offset is not None:
        fitted += offset
    opt = OptResult(
        theta=theta,
        fval=float(res.criterion),
        n_evals=int(res.n_evals),
        status="scalar random-intercept path (1-D search)",
        converged=bool(res.converged),
        singular=bool(res.singular),
        gradient=np.zeros(0),
        hessian=np.zeros((0, 0)),
        messages=list(res.messages),
    )

    def objective(th: Any) -> float:
        th = np.atleast_1d(np.asarray(th, dtype=float)).ravel()
        if th.size != 1 or not np.isfinite(th[0]):
            raise ArgumentError(f"theta must be one finite value for this model, got {th}", "theta")
        return ls.scalar_ri_criterion(float(th[0]), stats, reml)

    return _build_fit(
        terms,
        formula=formula,
        reml=reml,
        theta=theta,
        beta=np.asarray(res.beta, float),
        b=np.asarray(res.b, float),
        sigma=float(res.sigma),
        vcov_unscaled=np.asarray(res.vcov_unscaled, float),
        cond_var={t.group: np.asarray(res.cond_var, float).reshape(-1, 1, 1)},
        ml_deviance=float(res.ml_deviance),
        reml_criterion=float(res.reml_criterion),
        fitted=fitted,
        opt=opt,
        objective=objective,
        optimizer_name="scalar-ri-brent",
        x_variances=None if w is not None else ls.column_variances(stats),  # unweighted sds
    )


_ROW_BLOCK = 1 << 16


def _nonzero_or_none(v: Any) -> np.ndarray | None:
    """An optional offset, None when absent or all zero."""
    if v is None:
        return None
    v = np.asarray(v, dtype=float)
    if v.strides == (0,):  # a broadcast constant (the formula module's "no offset")
        return v.copy() if v.size and v[0] != 0 else None
    return v if np.any(v) else None


def _build_fit(
    terms: Any,
    *,
    formula: str,
    reml: bool,
    theta: np.ndarray,
    beta: np.ndarray,
    b: np.ndarray,
    sigma: float,
    vcov_unscaled: np.ndarray,
    cond_var: dict[str, np.ndarray],
    ml_deviance: float,
    reml_criterion: float,
    fitted: np.ndarray,
    opt: OptResult,
    objective: Any,
    optimizer_name: str = "L-BFGS-B",
    x_variances: np.ndarray | None = None,
) -> MixedFit:
    reterms = list(terms.reterms)
    n, p = int(terms.n), len(terms.x_names)
    names = list(terms.x_names)
    gp = np.concatenate([[0], np.cumsum([t.n_levels * t.p for t in reterms])])
    tks = _lambda_blocks(reterms, theta)
    df = p + theta.size + 1
    crit = reml_criterion if reml else ml_deviance
    lik = output.likelihood_summary(crit, n, df)
    y = np.asarray(terms.y, dtype=float)
    vcov = sigma**2 * vcov_unscaled
    vcov = (vcov + vcov.T) / 2.0
    messages = [m for m in getattr(terms, "messages", []) if isinstance(m, Message)]
    x = terms.X if terms.X is not None else terms.x_columns
    scale_msg = check_scale_x(x, variances=x_variances)
    if scale_msg is not None:
        messages.append(scale_msg)
    messages += opt.messages
    fit = MixedFit(
        model="lmer",
        formula=formula,
        family="gaussian",
        link="identity",
        reml=bool(reml),
        fixef=pd.Series(beta, index=names, dtype=float),
        vcov=pd.DataFrame(vcov, index=names, columns=names),
        theta=np.asarray(theta, float),
        theta_names=output.theta_names(reterms),
        varcorr=output.varcorr_frame(reterms, tks, sigma),
        sigma=float(sigma),
        ranef=output.ranef_frames(reterms, b, gp),
        cond_var=cond_var,
        loglik=lik["loglik"],
        df=int(df),
        deviance=float(ml_deviance),
        reml_criterion=float(reml_criterion) if reml else None,
        aic=lik["aic"],
        bic=lik["bic"],
        nobs=n,
        ngroups=output.ngroups(reterms),
        fitted=fitted,
        residuals=y - fitted,
        singular=bool(opt.singular),
        converged=bool(opt.converged),
        messages=messages,
        engine="python",
        versions=output.versions(),
        # fval: the criterion at the returned θ (the optimizer's own value there agrees to
        # rounding; this one is the fit's criterion itself)
        optimizer={**opt.as_dict(optimizer_name), "fval": float(crit)},
        dropped_columns=list(getattr(terms, "dropped_columns", []) or []),
    )

    def objective_single_thread(th: Any) -> float:
        with blas_single_thread():
            return float(objective(th))

    fit.attach(
        objective=objective_single_thread, simulate=_make_simulate(terms, beta, tks, sigma, fitted)
    )
    fit.extra["b"] = b
    return fit


def _lambda_blocks(reterms: list[Any], theta: np.ndarray) -> list[np.ndarray]:
    from mixbridge.python_impl.predictor import theta_layout

    out, pos = [], 0
    for t in reterms:
        r, c = theta_layout(t.p)
        tk = np.zeros((t.p, t.p))
        tk[r, c] = theta[pos : pos + r.size]
        pos += r.size
        out.append(tk)
    return out


# ---------------------------------------------------------------------------------------------
# predict and simulate (predict.merMod, simulate.merMod)


def _group_values(t: Any, newdata: pd.DataFrame) -> np.ndarray:
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


def _make_predict(terms: Any, beta: np.ndarray, b: np.ndarray, offset_arg: Any) -> Any:
    reterms = list(terms.reterms)
    gp = np.concatenate([[0], np.cumsum([t.n_levels * t.p for t in reterms])])

    def predict(
        newdata: pd.DataFrame | None = None,
        re_form: Any = None,
        allow_new_levels: bool = False,
        type: str = "link",  # noqa: A002 - lme4's argument name
    ) -> np.ndarray:
        if type not in ("link", "response"):  # identical for the gaussian identity link
            raise ArgumentError(f"type must be 'link' or 'response', got {type!r}", "type")
        use = _parse_re_form(re_form, reterms)
        if newdata is None:  # computed on demand: a fit keeps no extra n-vectors
            eta = terms.x_times(beta)
            if terms.offset is not None:
                eta += np.asarray(terms.offset, float)
        else:
            x_new = np.asarray(terms.fixed_matrix(newdata), dtype=float)
            eta = x_new @ beta + _newdata_offset(terms, newdata, offset_arg)
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
            bk = b[gp[k] : gp[k + 1]].reshape(t.n_levels, t.p)[:, cols]
            ok = c >= 0  # unseen or missing levels contribute 0 (allow_new_levels)
            eta[ok] += np.einsum("ic,ic->i", z[ok][:, cols], bk[c[ok]])
        return eta

    return predict


def _newdata_offset(terms: Any, newdata: pd.DataFrame, offset_arg: Any) -> np.ndarray:
    """Formula offset() terms plus the offset= argument, evaluated on newdata."""
    off = np.zeros(len(newdata))
    if hasattr(terms, "offset_for"):
        off = off + np.asarray(terms.offset_for(newdata), dtype=float)
    if offset_arg is None:
        return off
    if isinstance(offset_arg, str):
        if offset_arg not in newdata.columns:
            raise DataError(
                f"newdata has no column {offset_arg!r}, needed for the offset", offset_arg
            )
        return off + pd.to_numeric(newdata[offset_arg]).to_numpy(dtype=float)
    raise DataError(
        "the fit's offset was given as an array, which cannot be evaluated on newdata; pass "
        "it as a column name or as offset(...) in the formula to predict on new data",
        "offset",
    )


def _parse_re_form(re_form: Any, reterms: list[Any]) -> dict[int, np.ndarray]:
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
    wanted: list[tuple[str, list[str]]], reterms: list[Any]
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


def _labels(t: Any) -> list[str] | None:
    """A model term's left side as re_form spells it: "(Intercept)" and its term labels."""
    lhs = getattr(t, "_lhs", None)
    if lhs is None:
        return None
    return ["(Intercept)"] * bool(lhs.info.intercept) + lhs.info.labels


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


def _make_simulate(
    terms: Any, beta: np.ndarray, tks: list[np.ndarray], sigma: float, fitted: np.ndarray
) -> Any:
    reterms = list(terms.reterms)
    n = int(terms.n)

    def simulate(nsim: int = 1, seed: int | None = None) -> np.ndarray:
        if not isinstance(nsim, (int, np.integer)) or nsim < 1:
            raise ArgumentError(f"nsim must be a positive integer, got {nsim!r}", "nsim")
        eta_fixed = terms.x_times(beta)
        if terms.offset is not None:
            eta_fixed += np.asarray(terms.offset, float)
        w = np.ones(n) if terms.weights is None else np.asarray(terms.weights, float)
        rng = np.random.default_rng(seed)
        out = np.repeat(eta_fixed[:, None], nsim, axis=1)
        for t, tk in zip(reterms, tks, strict=True):
            # b ~ N(0, σ²T T') per level: b = σ T u with u ~ N(0, I)
            u = rng.standard_normal((nsim, t.n_levels, t.p))
            bnew = sigma * np.einsum("ab,slb->sla", tk, u)
            z = np.asarray(t.Z, float).reshape(n, -1)
            codes = np.asarray(t.codes)
            out += np.einsum("ic,sic->is", z, bnew[:, codes, :])
        with np.errstate(divide="ignore"):
            scale = sigma / np.sqrt(w)
        out += rng.standard_normal((n, nsim)) * scale[:, None]
        return out

    return simulate
