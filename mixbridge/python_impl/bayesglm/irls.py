"""arm's iteration (bayesglm_spec §4-§6): glm.fit's IRLS with p prior pseudo-observations.

`fit_bayesglm_core` reproduces `arm::bayesglm.fit` step by step: the prior rows (e_j, or
colMeans(X) for a centred intercept) weighted sqrt(dispersion)/prior_sd_j, arm's *approximate-EM*
t-prior update (not the exact MAP), the EM dispersion update started at var(y)/1e4, and arm's
stopping rule on the unpenalised deviance and the dispersion with iter > 1. Matching R to 1e-8
requires this exact path. Each iteration is one `Design.solve` (design.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from mixbridge.errors import ArgumentError, ConvergenceError, DataError
from mixbridge.python_impl.bayesglm.design import Design, Solution
from mixbridge.python_impl.bayesglm.priors import Priors, PriorSpec, build_priors
from mixbridge.python_impl.families import Family
from mixbridge.results import Message


@dataclass(frozen=True)
class ResponseData:
    """The response as glm.fit sees it after the model frame, with its prior weights, offset and
    binomial trials (cbind(s, f): y = s/(s+f), weights already times the trials, n_trials =
    s+f). None: weights 1, no offset, no trials."""

    y: np.ndarray
    weights: np.ndarray | None = None
    offset: np.ndarray | None = None
    n_trials: np.ndarray | None = None
    name: str = "y"  # the response's name, for error messages


@dataclass(frozen=True)
class IterationControl:
    """bayesglm.fit's control (maxit, epsilon) and `dispersion`, an extension that holds the
    dispersion fixed at this value instead of estimating it."""

    maxit: int = 100
    epsilon: float = 1e-8
    dispersion: float | None = None


@dataclass
class CoreFit:
    """Everything bayesglm.fit returns that the result needs."""

    coef: np.ndarray
    v: Solution
    dispersion: float
    dispersion_fixed: bool  # held at the user's value (extension), not estimated
    deviance: float
    iterations: int
    converged: bool
    boundary: bool
    mu: np.ndarray
    eta: np.ndarray
    working_weights: np.ndarray  # w^2 (0 where not used), from the start of the last iteration
    working_residuals: np.ndarray  # NaN where not used
    prior_weights: np.ndarray
    y: np.ndarray
    n_trials: np.ndarray
    priors: Priors
    prior_sd: np.ndarray
    prior_scale_final: np.ndarray
    messages: list[Message]
    design: Design
    path: list[tuple[float, float]] = field(default_factory=list)


def _warn(text: str, code: str = "") -> Message:
    return Message("warning", text, "python", code=code)


def _irls_step(
    family: Family,
    design: Design,
    y: np.ndarray,
    eta: np.ndarray,
    mu: np.ndarray,
    offset: np.ndarray,
    weights: np.ndarray,
    pos: np.ndarray,
    all_pos: bool,
    phi: float,
    prior_sd: np.ndarray,
    prior_mean: np.ndarray,
    prior_row0: np.ndarray | None,
    it: int,
) -> tuple[Solution, np.ndarray, bool, np.ndarray, np.ndarray]:
    """One weighted least-squares step of glm.fit's loop: (solution, good, all good, w, z)."""
    var_mu = family.variance(mu)
    mu_eta = family.mu_eta(eta)
    # (the row subsets are skipped when every row is used: same values, no copies)
    varmu = var_mu if all_pos else var_mu[pos]
    if not varmu.min() > 0:  # one pass when all is well; NaN fails the comparison
        if np.any(np.isnan(varmu)):
            raise ConvergenceError("NAs in V(mu)")
        if np.any(varmu == 0):
            raise ConvergenceError("0s in V(mu)")
    if np.isnan(np.sum(mu_eta if all_pos else mu_eta[pos])):
        if np.any(np.isnan(mu_eta[pos])):
            raise ConvergenceError("NAs in d(mu)/d(eta)")
    nonzero = mu_eta != 0
    all_good = all_pos and bool(nonzero.all())
    good = pos if all_good else pos & nonzero
    if all_good:
        z = (eta - offset) + (y - mu) / mu_eta
        w = np.sqrt(weights * mu_eta**2 / var_mu)
    else:
        if not good.any():
            raise ConvergenceError(f"no observations informative at iteration {it}")
        z = (eta - offset)[good] + (y - mu)[good] / mu_eta[good]
        w = np.sqrt(weights[good] * mu_eta[good] ** 2 / var_mu[good])
    a = np.sqrt(phi) / prior_sd
    sol = design.solve(good, w, z, a, prior_mean, prior_row0)
    return sol, good, all_good, w, z


def _checked_weights_offset(
    weights: np.ndarray | None, offset: np.ndarray | None, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Prior weights and offset as float arrays (defaults 1 and 0), checked as glm.fit does."""
    weights = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    offset = np.zeros(n) if offset is None else np.asarray(offset, dtype=float)
    if np.any(~np.isfinite(weights)):
        raise DataError("weights must be finite", "weights")
    if np.any(weights < 0):
        i = int(np.flatnonzero(weights < 0)[0])
        raise DataError(
            f"negative weights not allowed ({int((weights < 0).sum())} rows; first: row {i}, "
            f"value {weights[i]:g})",
            "weights",
        )
    if np.any(~np.isfinite(offset)):
        raise DataError("offset must be finite", "offset")
    if not np.any(weights > 0):
        raise DataError("all weights are zero: no observations to fit", "weights")
    return weights, offset


def _halve_step(
    start: np.ndarray,
    coefold: np.ndarray | None,
    acceptable: Callable[[np.ndarray, np.ndarray], bool],
    *,
    design: Design,
    family: Family,
    offset: np.ndarray,
    maxit: int,
    loop: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """glm.fit's step halving: move the coefficients halfway back to the previous iterate until
    (eta, mu) is acceptable, at most maxit times. Returns (coefficients, eta, mu)."""
    if coefold is None:
        raise ConvergenceError(
            "no valid set of coefficients has been found: please supply starting values"
        )
    for _ in range(maxit):
        start = (start + coefold) / 2.0
        eta = design.matvec(start) + offset
        mu = family.linkinv(eta)
        if acceptable(eta, mu):
            return start, eta, mu
    raise ConvergenceError(f"inner loop {loop}; cannot correct step size")


def fit_bayesglm_core(
    design: Design,
    data: ResponseData,
    *,
    family: Family,
    has_intercept: bool,
    prior: PriorSpec,
    control: IterationControl,
) -> CoreFit:
    """arm::bayesglm.fit on a design (intercept, if any, in column 0)."""
    maxit, epsilon, dispersion = control.maxit, control.epsilon, control.dispersion
    response, n_trials = data.name, data.n_trials
    y = np.asarray(data.y, dtype=float)
    n = len(y)
    p = design.p
    if p == 0:
        raise ArgumentError("the model has no coefficients; bayesglm needs at least one", "formula")
    weights, offset = _checked_weights_offset(data.weights, data.offset, n)
    priors = build_priors(
        prior,
        design=design,
        has_intercept=has_intercept,
        family=family,
        y_raw=y,
        response=response,
    )
    messages = list(priors.messages)

    init = family.initialize(y, weights, n_trials, response=response)
    messages += [_warn(t, "non_integer") for t in init.warnings]
    y, weights = init.y, init.weights
    design.set_leverage_rows(weights > 0)

    eta = family.linkfun(init.mustart)
    mu = family.linkinv(eta)
    if not (family.validmu(mu) and family.valideta(eta)):
        raise DataError("cannot find valid starting values for the response", response)
    devold = float(np.sum(family.dev_resids(y, mu, weights)))
    prior_row0 = design.colmeans() if (has_intercept and prior.scaled) else None

    scale_now = priors.scale.copy()
    prior_sd = priors.scale.copy()
    fixed = dispersion is not None
    if fixed:
        phi = float(dispersion)
    elif family.has_dispersion:
        phi = float(np.var(y, ddof=1)) / 10000.0
    else:
        phi = 1.0
    phi_old = phi
    coefold: np.ndarray | None = None
    start = np.zeros(p)
    conv = boundary = False
    sol: Solution | None = None
    z = w = good = None
    it = 0
    path: list[tuple[float, float]] = []  # (deviance, dispersion) per iteration, like trace=TRUE
    pos = weights > 0
    all_pos = bool(pos.all())
    # gaussian with the identity link: V(mu) = 1 and dmu/deta = 1, so w = sqrt(prior weights)
    # throughout and z = (eta - offset) + (y - mu); the general formulas give exactly these
    # values (x * 1 and x / 1 are exact), so this only skips work.
    plain = family.family == "gaussian" and family.link == "identity"
    w_plain = np.sqrt(weights if all_pos else weights[pos])
    unit_w = plain and bool(np.all(weights == 1.0))
    df_inf = np.isinf(priors.df)
    for it in range(1, maxit + 1):
        if plain:
            good, all_good, w = pos, all_pos, w_plain
            z = (eta - offset) + (y - mu) if all_pos else (eta - offset)[pos] + (y - mu)[pos]
            a = np.sqrt(phi) / prior_sd
            sol = design.solve(good, w, z, a, priors.mean, prior_row0)
        else:
            sol, good, all_good, w, z = _irls_step(
                family,
                design,
                y,
                eta,
                mu,
                offset,
                weights,
                pos,
                all_pos,
                phi,
                prior_sd,
                priors.mean,
                prior_row0,
                it,
            )
        b = sol.b
        if not np.isfinite(b).all():
            raise ConvergenceError(f"non-finite coefficients at iteration {it}")
        scale_now = priors.scale_after_first  # arm: gaussian & scaled -> s0 (else unchanged)
        with np.errstate(invalid="ignore"):
            t_sd = np.sqrt(
                ((b - priors.mean) ** 2 + sol.diag_v * phi + priors.df * scale_now**2)
                / (1.0 + priors.df)
            )
        prior_sd = np.where(df_inf, scale_now, t_sd)
        start = b.copy()
        xb = design.matvec(b)
        eta = xb + offset
        mu = family.linkinv(eta)
        dev = float(family.dev_resids(y, mu, weights).sum())
        if family.has_dispersion and not fixed:
            r = z - (xb if all_good else xb[good])
            rw = r if unit_w else w * r
            mse_resid = float((rw * rw).sum()) / rw.size  # = np.mean(rw**2), without its overhead
            phi = mse_resid + sol.mean_leverage * phi
        boundary = False
        if not np.isfinite(dev):
            messages.append(_warn("step size truncated due to divergence", "step_halving"))
            start, eta, mu = _halve_step(
                start,
                coefold,
                lambda _eta, mu: bool(np.isfinite(np.sum(family.dev_resids(y, mu, weights)))),
                design=design,
                family=family,
                offset=offset,
                maxit=maxit,
                loop=1,
            )
            dev = float(np.sum(family.dev_resids(y, mu, weights)))
            boundary = True
        if not (family.valideta(eta) and family.validmu(mu)):
            messages.append(_warn("step size truncated: out of bounds", "step_halving"))
            start, eta, mu = _halve_step(
                start,
                coefold,
                lambda eta, mu: family.valideta(eta) and family.validmu(mu),
                design=design,
                family=family,
                offset=offset,
                maxit=maxit,
                loop=2,
            )
            dev = float(np.sum(family.dev_resids(y, mu, weights)))
            boundary = True
        path.append((dev, phi))
        # With a fixed dispersion the criterion is on the scaled deviance dev/phi, which is what
        # arm computes when the fixed phi is passed as prior weights w/phi (the R engine's way).
        crit, crit_old = (dev / phi, devold / phi) if fixed else (dev, devold)
        if (
            it > 1
            and abs(crit - crit_old) / (0.1 + abs(crit)) < epsilon
            and abs(phi - phi_old) / (0.1 + abs(phi)) < epsilon
        ):
            conv = True
            break
        devold, phi_old = dev, phi
        coefold = start.copy()

    if not conv:
        messages.append(_warn("algorithm did not converge", "convergence"))
    if boundary:
        messages.append(_warn("algorithm stopped at boundary value", "boundary"))
    tiny = 10 * np.finfo(float).eps
    if family.family == "binomial" and (np.any(mu > 1 - tiny) or np.any(mu < tiny)):
        messages.append(_warn("fitted probabilities numerically 0 or 1 occurred", "separation"))
    if family.family == "poisson" and np.any(mu < tiny):
        messages.append(_warn("fitted rates numerically 0 occurred", "boundary"))

    assert sol is not None and good is not None and z is not None and w is not None
    resid = np.full(n, np.nan)
    resid[good] = z - (eta - offset)[good]
    wt = np.zeros(n)
    wt[good] = w * w
    return CoreFit(
        coef=start,
        v=sol,
        dispersion=phi,
        dispersion_fixed=fixed,
        deviance=dev,
        iterations=it,
        converged=conv,
        boundary=boundary,
        mu=mu,
        eta=eta,
        working_weights=wt,
        working_residuals=resid,
        prior_weights=weights,
        y=y,
        n_trials=init.n,
        priors=priors,
        prior_sd=prior_sd,
        prior_scale_final=scale_now if it >= 1 else priors.scale,
        messages=messages,
        design=design,
        path=path,
    )
