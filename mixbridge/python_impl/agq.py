"""Adaptive Gauss–Hermite quadrature for a single scalar random-effects term (lme4's glmerAGQ).

After u-only PIRLS at (θ, β) the integrand of each group is centred at its mode ũ_j and scaled by
sd_j = 1/L_jj; the nodes are those of `hermegauss` normalized to N(0, 1) (lme4's GHrule). Spec
§3.3; src/external.cpp `glmerAGQ`. Like lme4 1.1 the result is built from deviance residuals, so
it omits the saturated-model constant −2 Σ log p(y_i | μ_i = y_i) (the engine adds it back when it
reports the log-likelihood).
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

import numpy as np

from mixbridge.python_impl.diagonal_canonical import CanonicalKernel
from mixbridge.python_impl.pirls import PirlsState
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.response import GlmResponse

MAX_NAGQ = 100
# the node formulas of `agq_nodes` are lme4's values while every node's |η| stays below where
# lme4's clamps (μ in [ε, 1 − ε], or μ ≥ ε for the log link: |η| ≈ 36.04) begin
AGQ_ETA_BOUND = 35.0


@cache
def gh_rule(nagq: int) -> tuple[np.ndarray, np.ndarray]:
    """Nodes and weights for ∫ f(z) φ(z) dz (weights sum to 1), like lme4's GHrule."""
    if not 1 <= nagq <= MAX_NAGQ:
        raise ValueError(f"nagq must be between 1 and {MAX_NAGQ}")
    z, w = np.polynomial.hermite_e.hermegauss(nagq)
    return z, w / np.sqrt(2.0 * np.pi)


def agq_deviance(
    pred: DiagonalCore,
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


# ---------------------------------------------------------------------------------------------
# (1|g) with a canonical link: the node sums from the modes, value and gradient


@dataclass
class _SortedRows:
    """Rows ordered by group, cut into chunks of whole groups that fit in cache: the node loop
    then works on (K, rows-in-chunk) blocks with np.repeat / np.add.reduceat instead of
    G-sized gathers and bincounts over all n rows per node."""

    order: np.ndarray | None  # None: the rows already are in group order
    counts: np.ndarray
    starts: np.ndarray
    chunks: list[tuple[int, int, int, int]]  # rows [r0, r1), groups [g0, g1)
    w: np.ndarray | None


CHUNK_ROWS = 8192


# per kernel (a model's rows): built on the first AGQ evaluation, kept while the kernel lives
_ROWS: weakref.WeakKeyDictionary[CanonicalKernel, _SortedRows | None] = weakref.WeakKeyDictionary()


def sorted_rows(kernel: CanonicalKernel) -> _SortedRows | None:
    """The kernel's rows in group order, in chunks of whole groups (None when some level has no
    rows: the node loop then runs over all rows per node)."""
    if kernel in _ROWS:
        return _ROWS[kernel]
    codes = kernel.codes
    counts = np.bincount(codes, minlength=kernel.G)
    out = None
    if np.all(counts > 0):  # reduceat needs non-empty segments
        order: np.ndarray | None = None  # None: the rows already are in group order
        if not kernel.segmented:
            # small integer keys sort by radix sort: ~3x faster than the generic stable sort
            keys = codes.astype(np.uint16) if kernel.G <= 65536 else codes
            order = np.argsort(keys, kind="stable")
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
        ends = starts + counts
        chunks, g0 = [], 0
        while g0 < kernel.G:
            # as many whole groups as fit in CHUNK_ROWS rows (at least one)
            g1 = int(np.searchsorted(ends, starts[g0] + CHUNK_ROWS, side="right"))
            g1 = max(g1, g0 + 1)
            chunks.append((int(starts[g0]), int(ends[g1 - 1]), g0, g1))
            g0 = g1
        w = None if kernel.unit else (kernel.w if order is None else kernel.w[order])
        out = _SortedRows(order, counts, starts, chunks, w)
    _ROWS[kernel] = out
    return out


@dataclass
class _NodeSums:
    log_mult: np.ndarray  # (G,) log Σ_k w_k exp(z_k²/2 − dh_jk/2)
    z: np.ndarray  # (K,) nodes ≠ 0
    v: np.ndarray  # (K, G) ũ_j + z_k sd_j
    p: np.ndarray | None = None  # (K, G) normalized node terms; the centre's is 1 − Σ_k p_jk
    M: np.ndarray | None = None  # (K, G) Σ_{i∈j} w μ_ik
    q: np.ndarray | None = None  # (n,) Σ_k p_jk μ_ik, centre included


def agq_node_sums(
    kernel: CanonicalKernel,
    state: PirlsState,
    theta: float,
    sd: np.ndarray,
    nagq: int,
    grad: bool = False,
) -> _NodeSums | None:
    """The AGQ node sums at the modes of `state` for one scalar intercept term, with the work
    independent of the node hoisted out of the node loop.

    At node k, η moves by the group constant s_jk = θ z_k sd_j, so with e_i = exp(−η̃_i):
        logit: μ_ik = 1/(1 + e_i c_jk), c_jk = exp(−s_jk), and
               dh_jk = v_jk² − ũ_j² + 2 Σ_{i∈j} w_i log((1 + e_i c_jk)/(1 + e_i)) + 2 s_jk N_j
               (N_j = Σ_{i∈j} w_i (1 − y_i)): one multiply, one log (and for the gradient one
               reciprocal) per row and node;
        log:   μ_ik = μ_i exp(s_jk): everything is a group sum, no per-row work per node.
    None if a node's η can reach lme4's clamps (|η| > 36): `agq_deviance` handles those.
    """
    z, w = gh_rule(nagq)
    reach = float(np.max(np.abs(state.eta))) + abs(theta) * float(np.max(np.abs(z))) * float(
        np.max(sd, initial=0.0)
    )
    if reach > AGQ_ETA_BOUND:
        return None
    keep = z != 0.0
    z0w = float(np.sum(w[~keep]))
    zk, wk = z[keep], w[keep]
    u = state.u
    s = theta * zk[:, None] * sd[None, :]  # (K, G) shifts of η
    v = u[None, :] + zk[:, None] * sd[None, :]
    base = v * v - (u * u)[None, :]
    lw = np.log(wk)[:, None] + 0.5 * zk[:, None] ** 2

    def weights(dh: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        terms = np.exp(lw - 0.5 * dh)
        mult = z0w + np.sum(terms, axis=0)
        return np.log(mult), terms / mult[None, :]

    out = _NodeSums(np.empty(0), zk, v)
    if not kernel.logit:
        wts = None if kernel.unit else kernel.w
        m0 = kernel.gsum(state.mu if wts is None else wts * state.mu)
        es = np.exp(s)
        dh = base + 2.0 * (es - 1.0) * m0[None, :] - 2.0 * s * kernel.sy[None, :]
        out.log_mult, p = weights(dh)
        if grad:
            out.p, out.M = p, es * m0[None, :]
            out.q = state.mu * kernel.expand(1.0 - p.sum(axis=0) + np.sum(p * es, axis=0))
        return out
    rows = sorted_rows(kernel)
    if rows is None:
        return _logit_unsorted(kernel, state, out, s, base, weights, grad)
    if rows.order is None:
        e = np.exp(-state.eta)
        mu_s = state.mu
    else:
        e = np.exp(-state.eta[rows.order])
        mu_s = state.mu[rows.order] if grad else None
    G, K = kernel.G, zk.size
    log_mult = np.empty(G)
    P = np.empty((K, G)) if grad else None
    M = np.empty((K, G)) if grad else None
    q_s = np.empty(e.size) if grad else None
    c_all = np.exp(-s)
    n1 = kernel.n1
    for r0, r1, g0, g1 in rows.chunks:
        cnt = rows.counts[g0:g1]
        seg = rows.starts[g0:g1] - r0
        ec = e[r0:r1]
        wc = None if rows.w is None else rows.w[r0:r1]
        t = np.repeat(c_all[:, g0:g1], cnt, axis=1)  # (K, B)
        t *= ec[None, :]
        t += 1.0
        lsum = lsum0 = None
        if wc is None:
            # Σ_{i∈j} log t_i = log Π_{i∈j} t_i: one log per group and node instead of per row
            # (t ≥ 1, so the product can only overflow: then the per-row logs below)
            with np.errstate(over="ignore"):
                lsum = np.log(np.multiply.reduceat(t, seg, axis=1))
                lsum0 = np.log(np.multiply.reduceat(1.0 + ec, seg))
            if not (np.all(np.isfinite(lsum)) and np.all(np.isfinite(lsum0))):
                lsum = None
        if lsum is None:
            lg = np.log(t)
            lg0 = np.log(1.0 + ec)
            if wc is not None:
                lg *= wc[None, :]
                lg0 *= wc
            lsum, lsum0 = np.add.reduceat(lg, seg, axis=1), np.add.reduceat(lg0, seg)
        dh = base[:, g0:g1] + 2.0 * (lsum - lsum0[None, :])
        dh += 2.0 * s[:, g0:g1] * n1[None, g0:g1]
        lm, p = weights(dh)
        log_mult[g0:g1] = lm
        if grad:
            np.reciprocal(t, out=t)  # μ_ik
            P[:, g0:g1] = p
            tw = t if wc is None else t * wc[None, :]
            M[:, g0:g1] = np.add.reduceat(tw, seg, axis=1)
            pr = np.repeat(p, cnt, axis=1)
            q_s[r0:r1] = np.repeat(1.0 - p.sum(axis=0), cnt) * mu_s[r0:r1] + np.sum(pr * t, axis=0)
    out.log_mult = log_mult
    if grad:
        q = q_s
        if rows.order is not None:
            q = np.empty_like(q_s)
            q[rows.order] = q_s
        out.p, out.M, out.q = P, M, q
    return out


def _logit_unsorted(
    kernel: CanonicalKernel,
    state: PirlsState,
    out: _NodeSums,
    s: np.ndarray,
    base: np.ndarray,
    weights: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]],
    grad: bool,
) -> _NodeSums:
    """`agq_node_sums` for logit when some level has no rows: per node over all rows."""
    codes = kernel.codes
    wts = None if kernel.unit else kernel.w
    e = np.exp(-state.eta)
    lg0 = kernel.gsum(np.log(1.0 + e) * (1.0 if wts is None else wts))
    dh = base.copy()
    mus = []
    M = np.empty_like(s)
    for k in range(s.shape[0]):
        t = np.take(np.exp(-s[k]), codes)
        t *= e
        t += 1.0
        lg = np.log(t)
        dh[k] += 2.0 * (kernel.gsum(lg if wts is None else wts * lg) - lg0) + 2.0 * s[k] * kernel.n1
        if grad:
            np.reciprocal(t, out=t)
            M[k] = kernel.gsum(t if wts is None else wts * t)
            mus.append(t)
    out.log_mult, p = weights(dh)
    if grad:
        q = np.take(1.0 - p.sum(axis=0), codes) * state.mu
        for k, mk in enumerate(mus):
            q += np.take(p[k], codes) * mk
        out.p, out.M, out.q = p, M, q
    return out


def agq_deviance_fast(
    kernel: CanonicalKernel, state: PirlsState, theta: float, nagq: int
) -> float | None:
    """`agq_deviance` for (1|g) with a canonical link (same value up to rounding): sd and
    log|L|² from the core's factorization (lme4's: the weights at the start of the last
    PIRLS iteration)."""
    core = kernel.core
    nodes = agq_node_sums(kernel, state, float(theta), 1.0 / core.l_diag, nagq)
    if nodes is None:
        return None
    return float(state.pdev + core.ldL2 - 2.0 * np.sum(nodes.log_mult))


def agq_value_gradient(
    kernel: CanonicalKernel,
    state: PirlsState,
    theta: float,
    W: np.ndarray,
    S: np.ndarray,
    swmu: np.ndarray,
    nagq: int,
) -> tuple[float, float, np.ndarray, np.ndarray] | None:
    """The AGQ deviance at fully converged modes (sd_j = d_j^{-1/2} from the weights at the
    modes) and its exact gradient in (θ, β).

    AGQ_j = log d_j − 2 log Σ_k w_k e^{z_k²/2} exp(−h_j(v_jk)/2) + const, v_jk = ũ_j + z_k sd_j,
    h_j(v) = v² + Σ_{i∈j} dev_i(o_i + x_i'β + θv). With p_jk the normalized node terms,
        dAGQ_j = (1 − ½ sd_j P2_j) d log d_j + Σ_k p_jk ∂h_j(v_jk) + P1_j dũ_j,
    P1_j = Σ_k p_jk h'_j(v_jk), P2_j = Σ_k p_jk z_k h'_j(v_jk), ∂h at fixed v (β: Σ dev'_i x_i,
    θ: v Σ dev'_i), and d log d_j, dũ_j the Laplace gradient's pieces (`scalar_laplace_gradient`).
    Returns (value, ∂/∂θ, ∂/∂β, dũ/d(θ, β)), the last for the next warm start.
    """
    th = float(theta)
    X, u, mu, y = kernel.core.X, state.u, state.mu, kernel.resp.y
    wts = 1.0 if kernel.unit else kernel.w
    d = 1.0 + th * th * S
    sd = 1.0 / np.sqrt(d)
    nodes = agq_node_sums(kernel, state, th, sd, nagq, grad=True)
    if nodes is None:
        return None
    value = float(state.pdev + np.sum(np.log(d)) - 2.0 * np.sum(nodes.log_mult))
    zk, v, M, p, q = nodes.z, nodes.v, nodes.M, nodes.p, nodes.q
    p0 = 1.0 - np.sum(p, axis=0)  # the centre node's weight (z = 0, v = ũ)
    # h'(v) = 2v + θ D, D = Σ_{i∈j} dev'_i = −2(Σ w y − Σ w μ)
    D0 = -2.0 * (kernel.sy - swmu)
    D = -2.0 * (kernel.sy[None, :] - M)
    hp = 2.0 * v + th * D
    P1 = np.sum(p * hp, axis=0)  # centre: h'(ũ) = 0 at the mode (up to the PIRLS tolerance)
    P1 += p0 * (2.0 * u + th * D0)
    P2 = np.sum(p * hp * zk[:, None], axis=0)
    T = np.sum(p * v * D, axis=0) + p0 * u * D0  # Σ_k p_jk v_jk D_jk
    # the Laplace pieces at the modes
    dW = W * (1.0 - 2.0 * mu) if kernel.logit else W
    sdw = kernel.gsum(dW)
    sx = np.column_stack(
        [S if one else kernel.gsum(W * X[:, k]) for k, one in enumerate(kernel.ones_cols)]
    )
    du_db = -th * sx / d[:, None]
    du_dt = -(D0 + 2.0 * th * S * u) / (2.0 * d)
    f = 1.0 - 0.5 * sd * P2  # factor on d log d_j
    row = kernel.expand(th * th * f / d)
    row *= dW
    row -= 2.0 * wts * (y - q)
    coef_u = P1 + f * th**3 * sdw / d  # coefficient of dũ_j
    g_beta = X.T @ row + du_db.T @ coef_u
    g_theta = float(np.sum(T) + np.sum(f * (2.0 * th * S + th * th * sdw * u) / d) + coef_u @ du_dt)
    return value, g_theta, g_beta, np.column_stack([du_dt, du_db])
