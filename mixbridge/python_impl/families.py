"""GLM families and links with R's exact numerics (stats::family, R 4.2).

Shared by the bayesglm and glmer engines. Usage:

    fam = get_family("binomial", "logit")
    start = fam.initialize(y, weights)            # R's family$initialize: y, n, weights, mustart
    eta = fam.linkfun(start.mustart)
    mu = fam.linkinv(eta)
    w2 = start.weights * fam.mu_eta(eta) ** 2 / fam.variance(mu)
    dev = fam.dev_resids(start.y, mu, start.weights).sum()
    aic = fam.aic(start.y, start.n, mu, start.weights, dev)

Every function reproduces R's, including its clamps (logit |eta| > 30, probit/cauchit at the
quantile of DBL_EPSILON, log/cloglog floors at DBL_EPSILON), because IRLS paths, iteration counts
and separated fits depend on them. Names follow R (`family` is R's `family$family`).

The one table of links (`LINKS`) also holds, where glmer needs them, lme4's own inverse link and
μ'(η) (`lme4_linkinv`, `lme4_mu_eta`: src/glmFamily.cpp evaluates the common links in C++ with
other clamps than stats::family's, e.g. logit: μ in [ε, 1−ε] instead of |η| ≤ 30; PIRLS paths on
separated data depend on them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import special

from mixbridge.checks import FAMILY_LINKS
from mixbridge.errors import DataError

DBL_EPSILON = float(np.finfo(float).eps)
_LOGIT_THRESH = 30.0  # R's family.c THRESH / MTHRESH
_INVEPS = 1.0 / DBL_EPSILON
# -qnorm(.Machine$double.eps) as R's qnorm (AS241) computes it; scipy's ndtri gives ...908, and
# the clamp's pnorm value would then differ from R's in the 14th digit.
_PROBIT_THRESH = 8.125890664701906
_CAUCHIT_THRESH = 1433540284805664.8  # -scipy.stats.cauchy.ppf(DBL_EPSILON) (tests check it)

Array = np.ndarray


def _stats():  # noqa: ANN202
    """scipy.stats, imported on first use: it costs ~1 s, and only some links and the
    log-likelihoods need it."""
    import scipy.stats

    return scipy.stats


# ---------------------------------------------------------------------------------------------
# Links (stats::make.link)


@dataclass(frozen=True)
class Link:
    """A link function: `linkfun` (mu -> eta), `linkinv` (eta -> mu), `mu_eta` (dmu/deta), as
    stats::make.link; `lme4_linkinv`, `lme4_mu_eta`: lme4's C++ versions (None where glmer does
    not use the link)."""

    name: str
    linkfun: Callable[[Array], Array]
    linkinv: Callable[[Array], Array]
    mu_eta: Callable[[Array], Array]
    valideta: Callable[[Array], bool]
    lme4_linkinv: Callable[[Array], Array] | None = None
    lme4_mu_eta: Callable[[Array], Array] | None = None


def _always_valid(_: Array) -> bool:
    return True


def _logit_linkfun(mu: Array) -> Array:
    mu = np.asarray(mu, dtype=float)
    if np.any((mu < 0) | (mu > 1)):
        bad = mu[(mu < 0) | (mu > 1)][0]
        raise DataError(f"Value {bad:g} out of range (0, 1) for the logit link", "mu")
    with np.errstate(divide="ignore"):
        return np.log(mu / (1.0 - mu))


def _logit_linkinv(eta: Array) -> Array:
    eta = np.asarray(eta, dtype=float)
    with np.errstate(over="ignore"):
        tmp = np.where(
            eta < -_LOGIT_THRESH, DBL_EPSILON, np.where(eta > _LOGIT_THRESH, _INVEPS, np.exp(eta))
        )
    return tmp / (1.0 + tmp)


def _logit_mu_eta(eta: Array) -> Array:
    eta = np.asarray(eta, dtype=float)
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(eta)
        opexp = 1.0 + e
        val = e / (opexp * opexp)
    return np.where((eta > _LOGIT_THRESH) | (eta < -_LOGIT_THRESH), DBL_EPSILON, val)


def _probit_linkinv(eta: Array) -> Array:
    eta = np.clip(np.asarray(eta, dtype=float), -_PROBIT_THRESH, _PROBIT_THRESH)
    return special.ndtr(eta)


def _probit_mu_eta(eta: Array) -> Array:
    return np.maximum(_stats().norm.pdf(np.asarray(eta, dtype=float)), DBL_EPSILON)


def _cauchit_linkinv(eta: Array) -> Array:
    eta = np.clip(np.asarray(eta, dtype=float), -_CAUCHIT_THRESH, _CAUCHIT_THRESH)
    return _stats().cauchy.cdf(eta)


def _cauchit_mu_eta(eta: Array) -> Array:
    return np.maximum(_stats().cauchy.pdf(np.asarray(eta, dtype=float)), DBL_EPSILON)


def _cloglog_linkfun(mu: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(-np.log(1.0 - np.asarray(mu, dtype=float)))


def _cloglog_linkinv(eta: Array) -> Array:
    with np.errstate(over="ignore"):
        val = -np.expm1(-np.exp(np.asarray(eta, dtype=float)))
    return np.maximum(np.minimum(val, 1.0 - DBL_EPSILON), DBL_EPSILON)


def _cloglog_mu_eta(eta: Array) -> Array:
    eta = np.minimum(np.asarray(eta, dtype=float), 700.0)
    with np.errstate(over="ignore"):
        return np.maximum(np.exp(eta) * np.exp(-np.exp(eta)), DBL_EPSILON)


def _log_linkfun(mu: Array) -> Array:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log(np.asarray(mu, dtype=float))


def _log_linkinv(eta: Array) -> Array:
    with np.errstate(over="ignore"):
        return np.maximum(np.exp(np.asarray(eta, dtype=float)), DBL_EPSILON)


def _inverse_valideta(eta: Array) -> bool:
    return bool(np.all(np.isfinite(eta)) and np.all(eta != 0))


def _sqrt_valideta(eta: Array) -> bool:
    return bool(np.all(np.isfinite(eta)) and np.all(eta > 0))


def _recip(x: Array) -> Array:
    with np.errstate(divide="ignore"):
        return 1.0 / np.asarray(x, dtype=float)


# lme4's C++ links (src/glmFamily.cpp): μ clamped to [ε, 1 − ε] (logit, cloglog) or ≥ ε (log)
def _clamp01(p: Array) -> Array:
    return np.clip(p, DBL_EPSILON, 1.0 - DBL_EPSILON)


def _lme4_logit_linkinv(eta: Array) -> Array:
    return _clamp01(special.expit(eta))


def _lme4_logit_mu_eta(eta: Array) -> Array:
    return np.maximum(DBL_EPSILON, special.expit(eta) * special.expit(-eta))


def _lme4_probit_linkinv(eta: Array) -> Array:
    return np.minimum(1.0 - DBL_EPSILON, special.ndtr(eta))


def _lme4_probit_mu_eta(eta: Array) -> Array:
    return np.exp(-0.5 * eta * eta) / np.sqrt(2.0 * np.pi)


def _lme4_cloglog_linkinv(eta: Array) -> Array:
    return _clamp01(-np.expm1(-np.exp(eta)))


def _lme4_cloglog_mu_eta(eta: Array) -> Array:
    return np.maximum(DBL_EPSILON, np.exp(eta - np.exp(eta)))


def _lme4_log_linkinv(eta: Array) -> Array:
    return np.maximum(DBL_EPSILON, np.exp(eta))


LINKS: dict[str, Link] = {
    "logit": Link(
        "logit",
        _logit_linkfun,
        _logit_linkinv,
        _logit_mu_eta,
        _always_valid,
        _lme4_logit_linkinv,
        _lme4_logit_mu_eta,
    ),
    "probit": Link(
        "probit",
        lambda mu: special.ndtri(np.asarray(mu, dtype=float)),
        _probit_linkinv,
        _probit_mu_eta,
        _always_valid,
        _lme4_probit_linkinv,
        _lme4_probit_mu_eta,
    ),
    "cauchit": Link(
        "cauchit",
        lambda mu: _stats().cauchy.ppf(np.asarray(mu, dtype=float)),
        _cauchit_linkinv,
        _cauchit_mu_eta,
        _always_valid,
    ),
    "cloglog": Link(
        "cloglog",
        _cloglog_linkfun,
        _cloglog_linkinv,
        _cloglog_mu_eta,
        _always_valid,
        _lme4_cloglog_linkinv,
        _lme4_cloglog_mu_eta,
    ),
    "identity": Link(
        "identity",
        lambda mu: np.asarray(mu, dtype=float),
        lambda eta: np.asarray(eta, dtype=float),
        lambda eta: np.ones_like(np.asarray(eta, dtype=float)),
        _always_valid,
    ),
    "log": Link(
        "log",
        _log_linkfun,
        _log_linkinv,
        _log_linkinv,
        _always_valid,
        _lme4_log_linkinv,
        _lme4_log_linkinv,
    ),
    "inverse": Link(
        "inverse",
        _recip,
        _recip,
        lambda eta: -_recip(np.asarray(eta, dtype=float) ** 2),
        _inverse_valideta,
    ),
    "sqrt": Link(
        "sqrt",
        lambda mu: np.sqrt(np.asarray(mu, dtype=float)),
        lambda eta: np.asarray(eta, dtype=float) ** 2,
        lambda eta: 2.0 * np.asarray(eta, dtype=float),
        _sqrt_valideta,
    ),
    "1/mu^2": Link(
        "1/mu^2",
        lambda mu: 1.0 / np.asarray(mu, dtype=float) ** 2,
        lambda eta: 1.0 / np.sqrt(np.asarray(eta, dtype=float)),
        lambda eta: -1.0 / (2.0 * np.asarray(eta, dtype=float) ** 1.5),
        _sqrt_valideta,  # all finite and > 0, as R's
    ),
}


# ---------------------------------------------------------------------------------------------
# Families


@dataclass(frozen=True)
class Initialized:
    """What R's `family$initialize` leaves behind: response, trials `n`, weights, mustart."""

    y: Array
    n: Array
    weights: Array
    mustart: Array
    warnings: tuple[str, ...] = ()


def y_log_y(y: Array, mu: Array) -> Array:
    # R's family.c y_log_y: 0 when y == 0 (whatever mu is)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(y != 0.0, y * np.log(np.where(y != 0.0, y, 1.0) / mu), 0.0)


class Family:
    """A GLM family with a link, mirroring R's family object (`family`, `link` are R's names).

    Methods: linkfun, linkinv, mu_eta, valideta (from the link); variance, validmu, dev_resids,
    aic, initialize (the family's). `has_dispersion` is False for binomial and poisson (the
    dispersion is fixed at 1; decided on the family name, as glm and arm do).
    """

    def __init__(self, family: str, link: Link) -> None:
        self.family = family
        self.link = link.name
        self._link = link
        self.linkfun = link.linkfun
        self.linkinv = link.linkinv
        self.mu_eta = link.mu_eta
        self.lme4_linkinv = link.lme4_linkinv
        self.lme4_mu_eta = link.lme4_mu_eta

    def __repr__(self) -> str:
        return f"Family({self.family!r}, link={self.link!r})"

    @property
    def has_dispersion(self) -> bool:
        return self.family not in ("binomial", "poisson")

    def valideta(self, eta: Array) -> bool:
        return self._link.valideta(np.asarray(eta, dtype=float))

    # -- family-specific pieces (overridden below) --
    def variance(self, mu: Array) -> Array:
        raise NotImplementedError

    def validmu(self, mu: Array) -> bool:
        return True

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        raise NotImplementedError

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        raise NotImplementedError

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        """R's `family$initialize`. `n_trials` is given only for a two-column cbind(s, f)
        response already turned into a proportion `y` with `weights` = prior weights x trials
        (binomial); `response` names the response in error messages."""
        raise NotImplementedError


class Gaussian(Family):
    def variance(self, mu: Array) -> Array:
        return np.ones_like(np.asarray(mu, dtype=float))

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        return wt * (y - mu) ** 2

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        nobs = len(y)
        with np.errstate(divide="ignore"):
            return float(nobs * (np.log(dev / nobs * 2 * np.pi) + 1) + 2 - np.sum(np.log(wt)))

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        y = np.asarray(y, dtype=float)
        if (self.link == "inverse" and np.any(y == 0)) or (self.link == "log" and np.any(y <= 0)):
            bad = "zero" if self.link == "inverse" else "non-positive"
            raise DataError(
                f"cannot find valid starting values: response {response!r} has {bad} values, "
                f"which the gaussian family with the {self.link} link cannot start from",
                response,
            )
        return Initialized(y, np.ones_like(y), np.asarray(weights, dtype=float), y.copy())


class Binomial(Family):
    def variance(self, mu: Array) -> Array:
        return mu * (1.0 - mu)

    def validmu(self, mu: Array) -> bool:
        return bool(np.all(np.isfinite(mu)) and np.all((mu > 0) & (mu < 1)))

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        return 2.0 * wt * (y_log_y(y, mu) + y_log_y(1.0 - y, 1.0 - mu))

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        # glm's definition (per-observation trials n); arm passes a scalar n.ok instead, which is
        # wrong for cbind/proportion responses -- we deliberately follow glm.
        n = np.broadcast_to(np.asarray(n, dtype=float), np.shape(y))
        m = n if np.any(n > 1) else np.asarray(wt, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore"):
            coef = np.where(m > 0, wt / np.where(m > 0, m, 1.0), 0.0)
            ll = _stats().binom.logpmf(np.round(m * y), np.round(m), mu)
        ll = np.where(coef == 0, 0.0, ll)  # R: 0 * finite; -Inf only where it counts
        return float(-2.0 * np.sum(coef * ll))

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        y = np.asarray(y, dtype=float).copy()
        weights = np.asarray(weights, dtype=float)
        if n_trials is not None:
            n = np.asarray(n_trials, dtype=float)
            successes = n * y
            msgs: tuple[str, ...] = ()
            if np.any(np.abs(successes - np.round(successes)) > 0.001) or np.any(
                np.abs(n - successes - np.round(n - successes)) > 0.001
            ):
                msgs = ("non-integer counts in a binomial glm!",)
            if np.any(y < 0) or np.any(y > 1):
                raise DataError(
                    f"binomial response {response!r}: successes must lie between 0 and the "
                    "number of trials",
                    response,
                )
            return Initialized(y, n, weights, (n * y + 0.5) / (n + 1.0), msgs)
        y[weights == 0] = 0.0
        bad = (y < 0) | (y > 1)
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            raise DataError(
                f"binomial response {response!r}: y values must be 0 <= y <= 1 "
                f"({int(bad.sum())} rows outside, first: row {i}, value {y[i]:g})",
                response,
            )
        msgs = ()
        m = weights * y
        if np.any(np.abs(m - np.round(m)) > 0.001):
            msgs = ("non-integer #successes in a binomial glm!",)
        mustart = (weights * y + 0.5) / (weights + 1.0)
        return Initialized(y, np.ones_like(y), weights, mustart, msgs)


class Poisson(Family):
    def variance(self, mu: Array) -> Array:
        return np.asarray(mu, dtype=float).copy()

    def validmu(self, mu: Array) -> bool:
        return bool(np.all(np.isfinite(mu)) and np.all(mu > 0))

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            pos = y > 0
            r = np.where(pos, wt * (y * np.log(np.where(pos, y, 1.0) / mu) - (y - mu)), mu * wt)
        return 2.0 * r

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        # dpois of a non-integer count is 0 in R (log = -Inf), so the aic is Inf there.
        with np.errstate(divide="ignore", invalid="ignore"):
            integer = np.abs(y - np.round(y)) <= 1e-7 * np.maximum(1.0, np.abs(y))
            ll = np.where(integer, _stats().poisson.logpmf(np.round(y), mu), -np.inf)
            terms = np.where(wt == 0, 0.0, ll * wt)
        return float(-2.0 * np.sum(terms))

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        y = nonnegative(y, "negative values not allowed for the 'Poisson' family", response)
        msgs: tuple[str, ...] = ()
        nonint = np.abs(y - np.round(y)) > 1e-7 * np.maximum(1.0, np.abs(y))
        if np.any(nonint):
            # R warns from dpois() when the aic is computed: "non-integer x = 1.500000"
            msgs = tuple(f"non-integer x = {v:f}" for v in y[nonint][:5])
        return Initialized(y, np.ones_like(y), np.asarray(weights, dtype=float), y + 0.1, msgs)


class GammaFamily(Family):
    def variance(self, mu: Array) -> Array:
        return np.asarray(mu, dtype=float) ** 2

    def validmu(self, mu: Array) -> bool:
        return bool(np.all(np.isfinite(mu)) and np.all(mu > 0))

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = np.where(y == 0, 1.0, y / mu)
            return -2.0 * wt * (np.log(ratio) - (y - mu) / mu)

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        nw = np.sum(wt)
        disp = dev / nw
        with np.errstate(divide="ignore", invalid="ignore"):
            ll = _stats().gamma.logpdf(y, 1.0 / disp, scale=mu * disp)
            terms = np.where(wt == 0, 0.0, ll * wt)
        return float(-2.0 * np.sum(terms) + 2.0)

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        # R's message for Gamma
        y = _positive(y, "non-positive values not allowed for the 'Gamma' family", response)
        return Initialized(y, np.ones_like(y), np.asarray(weights, dtype=float), y.copy())


def nonnegative(y: Array, what: str, response: str) -> Array:
    """y as floats, or DataError naming the first negative row (the count families: R's
    messages, `what`, with the response column and row added)."""
    y = np.asarray(y, dtype=float)
    if np.any(y < 0):
        i = int(np.flatnonzero(y < 0)[0])
        raise DataError(f"{what}: response {response!r} row {i} is {y[i]:g}", response)
    return y


def _positive(y: Array, what: str, response: str) -> Array:
    """y as floats, or DataError naming the first row that is not positive."""
    y = np.asarray(y, dtype=float)
    if np.any(y <= 0):
        i = int(np.flatnonzero(y <= 0)[0])
        raise DataError(f"{what}: response {response!r} row {i} is {y[i]:g}", response)
    return y


class InverseGaussian(Family):
    def variance(self, mu: Array) -> Array:
        return np.asarray(mu, dtype=float) ** 3

    def dev_resids(self, y: Array, mu: Array, wt: Array) -> Array:
        return wt * ((y - mu) ** 2) / (y * mu**2)

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        sw = float(np.sum(wt))
        with np.errstate(divide="ignore"):
            logy = np.where(wt == 0, 0.0, np.log(y) * wt)
        return float(sw * (1 + np.log(dev / sw * 2 * np.pi)) + 3 * np.sum(logy) + 2)

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        # R's message for inverse.gaussian
        what = "positive values only are allowed for the 'inverse.gaussian' family"
        y = _positive(y, what, response)
        return Initialized(y, np.ones_like(y), np.asarray(weights, dtype=float), y.copy())


class QuasiBinomial(Binomial):
    """binomial's variance and deviance, a free dispersion, no likelihood (aic NA)."""

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        return float("nan")

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        init = super().initialize(y, weights, n_trials, response)
        return Initialized(init.y, init.n, init.weights, init.mustart)  # R: no count warning


class QuasiPoisson(Poisson):
    """poisson's variance and deviance, a free dispersion, no likelihood (aic NA)."""

    def aic(self, y: Array, n: Array, mu: Array, wt: Array, dev: float) -> float:
        return float("nan")

    def initialize(
        self, y: Array, weights: Array, n_trials: Array | None = None, response: str = "y"
    ) -> Initialized:
        what = "negative values not allowed for the 'quasiPoisson' family"
        y = nonnegative(y, what, response)
        return Initialized(y, np.ones_like(y), np.asarray(weights, dtype=float), y + 0.1)


_FAMILY_CLASSES: dict[str, type[Family]] = {
    "inverse.gaussian": InverseGaussian,
    "quasibinomial": QuasiBinomial,
    "quasipoisson": QuasiPoisson,
    "gaussian": Gaussian,
    "binomial": Binomial,
    "poisson": Poisson,
    "Gamma": GammaFamily,
}


def get_family(name: str, link: str | None = None) -> Family:
    """The family `name` ("gaussian", "binomial", "poisson", "Gamma" ("gamma" accepted),
    "inverse.gaussian", "quasibinomial", "quasipoisson") with
    `link` (None = R's default link). Raises DataError for an unknown family or a link that
    R's family constructor rejects."""
    key = "Gamma" if name in ("Gamma", "gamma") else name
    if key not in FAMILY_LINKS:
        raise DataError(
            f"unsupported family {name!r}; supported: {', '.join(FAMILY_LINKS)}", "family"
        )
    allowed = FAMILY_LINKS[key]
    link_name = allowed[0] if link is None else link
    if link_name not in allowed:
        raise DataError(
            f"link {link_name!r} not available for the {key} family; available links: "
            f"{', '.join(allowed)}",
            "link",
        )
    return _FAMILY_CLASSES[key](key, LINKS[link_name])


def __getattr__(name: str) -> object:
    """`NegativeBinomial`, MASS's negative.binomial(θ), lives in `family_nb` (it needs θ, so it
    is not in get_family's table); importable from here too, resolved on first use (family_nb
    imports this module)."""
    if name == "NegativeBinomial":
        from mixbridge.python_impl.family_nb import NegativeBinomial

        return NegativeBinomial
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
