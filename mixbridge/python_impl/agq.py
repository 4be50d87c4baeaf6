"""Adaptive Gauss–Hermite quadrature for a single scalar random-effects term (lme4's glmerAGQ).

After u-only PIRLS at (θ, β) the integrand of each group is centred at its mode ũ_j and scaled by
sd_j = 1/L_jj; the nodes are those of `hermegauss` normalized to N(0, 1) (lme4's GHrule). Spec
§3.3; src/external.cpp `glmerAGQ`. Like lme4 1.1 the result is built from deviance residuals, so
it omits the saturated-model constant −2 Σ log p(y_i | μ_i = y_i) (the engine adds it back when it
reports the log-likelihood).
"""

from __future__ import annotations

from functools import cache

import numpy as np

from mixbridge.python_impl.pirls import GlmResponse, PirlsState, ScalarPredictor

MAX_NAGQ = 100


@cache
def gh_rule(nagq: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ∫ f(z) φ(z) dz (weights sum to 1), like lme4's GHrule."""
    if not 1 <= nagq <= MAX_NAGQ:
        raise ValueError(f"nagq must be between 1 and {MAX_NAGQ}")
    z, w = np.polynomial.hermite_e.hermegauss(nagq)
    return z, w / np.sqrt(2.0 * np.pi)


def agq_deviance(
    pred: ScalarPredictor,
    resp: GlmResponse,
    state: PirlsState,
    offset: np.ndarray,
    nagq: int,
) -> float:
    """lme4's AGQ deviance at the PIRLS state (`pred` still holds that state's factorization).

    devc0_j = ũ_j² + Σ_{i∈j} devResid_i(μ̃)
    mult_j  = Σ_k w_k exp(z_k²/2 − (devc_j(ũ + z_k sd) − devc0_j)/2)
    d_AGQ   = Σ_j devc0_j + log|L|² − 2 Σ_j log mult_j
    """
    z, w = gh_rule(nagq)
    codes, n_levels = pred.codes, pred.n_levels

    def devc(u: np.ndarray, mu: np.ndarray) -> np.ndarray:
        return u * u + np.bincount(codes, weights=resp.dev_resids(mu), minlength=n_levels)

    devc0 = devc(state.u, state.mu)
    sd = 1.0 / pred.l_diag
    keep = z != 0.0  # the centre node contributes its weight exactly
    zk, wk = z[keep], w[keep]
    # all nodes at once (K × n), in row chunks so that K·n stays moderate for big data
    chunk = max(1, int(2_000_000 // max(1, codes.size)))
    mult = np.full(n_levels, float(np.sum(w[~keep])))
    for s in range(0, zk.size, chunk):
        zc, wc = zk[s : s + chunk], wk[s : s + chunk]
        uk = state.u[None, :] + zc[:, None] * sd[None, :]  # (K, G)
        mu_k = resp.linkinv(offset[None, :] + pred.Zb_many(uk))
        dr = resp.dev_resids(mu_k)  # (K, n)
        flat = (np.arange(zc.size)[:, None] * n_levels + codes[None, :]).ravel()
        dsum = np.bincount(flat, weights=dr.ravel(), minlength=zc.size * n_levels)
        devc_k = uk * uk + dsum.reshape(zc.size, n_levels)
        mult += np.sum(
            wc[:, None] * np.exp(0.5 * zc[:, None] ** 2 - 0.5 * (devc_k - devc0[None, :])), axis=0
        )
    return float(np.sum(devc0) + pred.ldL2 - 2.0 * np.sum(np.log(mult)))
