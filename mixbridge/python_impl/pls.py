"""The penalized least squares (PLS) core: its interface, the choice of implementation, and Λ_θ's
layout (lme4's `merPredD`; spec §1.3, §4).

A core knows X, Z (through the random-effects terms) and Λ_θ, but no family and no response
distribution: lmer factorizes it at the prior weights, glmer inside PIRLS at working weights.
Three implementations, picked per model by `select_core` (for lmer and glmer alike):

    DiagonalCore     (pls_diagonal)      one scalar term `(1|g)`, `(0 + x|g)`: L diagonal, every
                                         step a sum over groups, O(n) per update; lmer's O(G)
                                         path reads its one-pass group statistics
    ScalarTermsCore  (pls_scalar_terms)  several scalar terms, dense Schur block up to MAX_Q2
                                         columns: Z'WZ by bincounts, cheap to re-weight (glmer)
    BlockedCore      (pls_blocked)       any terms: MixedModels.jl's blocked Cholesky; with the
                                         prior weights also lmer's profiled criterion and its
                                         gradient pieces (`ProfiledCore`, pls_augmented)

θ is in lme4's order: per term (terms by decreasing number of levels) the lower triangle of T_k,
column-major. Run fits inside `blas_single_thread()`.
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms, ReTerm

_BLAS_CONTROLLER: list[Any] = []  # threadpoolctl's controller, created once (see below)


def blas_single_thread() -> contextlib.AbstractContextManager:
    """Limit BLAS to one thread while fitting (uses threadpoolctl when installed).

    The per-θ work is many small or mid-sized factorizations: OpenBLAS threading gains little
    there and, on a shared or busy machine, its spinning threads make a 1000×1000 Cholesky
    5x slower (measured here: 0.33 s vs 1.78 s per InstEval evaluation). The controller is made
    once: building one scans the process's loaded libraries, ~4 ms per call otherwise.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # optional dependency: run with the library's default threading
        return contextlib.nullcontext()
    if not _BLAS_CONTROLLER:
        import scipy.linalg  # noqa: F401  (its BLAS must be loaded before the scan)

        _BLAS_CONTROLLER.append(ThreadpoolController())
    return _BLAS_CONTROLLER[0].limit(limits=1, user_api="blas")


# Dense blocks of at least this order are factored with BLAS on several threads when that is
# faster (`blas_for_order`): a 5000² Cholesky is ~4e10 flops, where threads pay off on a quiet
# machine; below it the single-thread rule of `blas_single_thread` holds.
BIG_BLOCK_ORDER = 2000
# Every this many big-block calls the thread count not in use is timed again (the machine's
# load changes while a fit runs).
BLAS_EXPLORE_EVERY = 10


class _ThreadChooser:
    """Picks the BLAS thread count for big dense blocks by measured speed: every core of the
    process or one. On a quiet 2-core machine two threads factor a 5000² block in 0.55-0.7 s
    against 0.95 s; when other processes hold a core, OpenBLAS's two threads wait on each
    other and take 6-8 s against 2 s for one (measured here). Each count is timed (seconds per
    order³ and unit of work, a running mean), the faster one used, the other re-timed every
    BLAS_EXPLORE_EVERY calls; while the load average says the machine is busy, one thread is
    timed first."""

    def __init__(self) -> None:
        self.rate: dict[int, float] = {}
        self.calls = 0

    def pick(self, cores: int) -> int:
        options = [cores, 1] if cores > 1 else [1]
        if cores > 1 and _busy(cores):
            options = [1, cores]  # another job holds a core: time one thread first
        for t in options:
            if t not in self.rate:
                return t
        self.calls += 1
        ranked = sorted(options, key=lambda t: self.rate[t])
        if len(ranked) > 1 and self.calls % BLAS_EXPLORE_EVERY == 0:
            return ranked[1]
        return ranked[0]

    def record(self, threads: int, seconds: float, order: int, work: float) -> None:
        r = seconds / (float(order) ** 3 * work)
        old = self.rate.get(threads)
        self.rate[threads] = r if old is None else 0.5 * (old + r)


_THREADS = _ThreadChooser()


def _busy(cores: int) -> bool:
    """The 1-minute load average (this process's running thread included) says another job
    holds a core: an untimed thread count starts at one (at q2 = 2e4 a mistimed first
    factorization on every core costs minutes)."""
    import os

    try:
        return os.getloadavg()[0] >= cores - 0.5
    except OSError:
        return False


def _cores() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def _timed_limit(order: int, work: float):  # noqa: ANN202 - a context manager
    import time

    if not _BLAS_CONTROLLER:
        import scipy.linalg  # noqa: F401
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER.append(ThreadpoolController())
    threads = _THREADS.pick(_cores())
    with _BLAS_CONTROLLER[0].limit(limits=threads, user_api="blas"):
        t = time.perf_counter()
        yield
        _THREADS.record(threads, time.perf_counter() - t, order, work)


def blas_for_order(order: int, work: float = 1.0) -> contextlib.AbstractContextManager:
    """BLAS threads for one dense LAPACK call on a block of the given order (`work`: its flops
    in units of order³/3, e.g. 2 for potri): for order ≥ BIG_BLOCK_ORDER the faster of every
    core of the process (os.sched_getaffinity) and one, by measurement (`_ThreadChooser`);
    else no change."""
    if order < BIG_BLOCK_ORDER:
        return contextlib.nullcontext()
    try:
        import threadpoolctl  # noqa: F401
    except ImportError:
        return contextlib.nullcontext()
    return _timed_limit(order, work)


# ---------------------------------------------------------------------------------------------
# Λ_θ's layout


def theta_layout(p: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows and columns of T's lower triangle in θ order (column-major)."""
    rows, cols = [], []
    for c in range(p):
        for r in range(c, p):
            rows.append(r)
            cols.append(c)
    return np.array(rows, dtype=np.int64), np.array(cols, dtype=np.int64)


def lower_bounds(reterms: list[ReTerm]) -> np.ndarray:
    """lme4's lower bounds: 0 on diagonal θ, −∞ off the diagonal."""
    out = []
    for t in reterms:
        r, c = theta_layout(t.p)
        out.append(np.where(r == c, 0.0, -np.inf))
    return np.concatenate(out) if out else np.zeros(0)


def theta_start(reterms: list[ReTerm]) -> np.ndarray:
    """lme4's default start: T_k = I (1 on the diagonal, 0 elsewhere)."""
    out = []
    for t in reterms:
        r, c = theta_layout(t.p)
        out.append((r == c).astype(float))
    return np.concatenate(out) if out else np.zeros(0)


def lambda_blocks(sizes: list[int], theta: np.ndarray) -> list[np.ndarray]:
    """The p_k×p_k lower-triangular T_k of each term (term sizes p_k) from θ."""
    out, pos = [], 0
    for p in sizes:
        r, c = theta_layout(p)
        tk = np.zeros((p, p))
        tk[r, c] = theta[pos : pos + r.size]
        pos += r.size
        out.append(tk)
    return out


# ---------------------------------------------------------------------------------------------
# The interface


class PlsCore(Protocol):
    """What lmer and glmer ask of a PLS core (lme4's merPredD).

    `update(θ, sqrt_w)` factorizes L (L L' = Λ'Z'WZΛ + I), R_ZX and R_X at θ with square-root
    weights √W (None: the prior weights); `solve(y)` is the joint (β̂, ũ) for an offset-free
    response, `solve_u(y)` ũ alone with Xβ already removed (glmer's u-only PIRLS); `ldL2` is
    log|L|² of the last update. `b(u)` = Λu, `Zb(u)` = ZΛu, `Xb(β)` = Xβ; `rx_inverse()` is
    (R_X'R_X)⁻¹; `cond_var_by_factor(σ)` the diagonal blocks of σ²Λ(LL')⁻¹Λ' per grouping
    factor (ranef's condVar)."""

    n: int
    p: int
    n_theta: int
    X: np.ndarray

    def update(self, theta: np.ndarray, sqrt_w: np.ndarray | None = None) -> None: ...

    @property
    def ldL2(self) -> float: ...

    def solve(self, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    def solve_u(self, y: np.ndarray) -> np.ndarray: ...

    def b(self, u: np.ndarray) -> np.ndarray: ...

    def Zb(self, u: np.ndarray) -> np.ndarray: ...  # noqa: N802 - lme4's name

    def Xb(self, beta: np.ndarray) -> np.ndarray: ...  # noqa: N802 - lme4's name

    def rx_inverse(self) -> np.ndarray: ...

    def cond_var_by_factor(self, sigma: float) -> dict[str, np.ndarray]: ...


class ProfiledCore(PlsCore, Protocol):
    """A core that also evaluates lmer's profiled criterion at the prior weights: `ldRX2`,
    `pwrss(y, β, u)`, `profile(θ, y)` -> (log|L|², log|R_X|², PWRSS) from one augmented
    factorization, and `profile_gradient_sums()` for its analytic gradient (None when a term
    is vector-valued)."""

    @property
    def ldRX2(self) -> float: ...

    def pwrss(self, y: np.ndarray, beta: np.ndarray, u: np.ndarray) -> float: ...

    def profile(self, theta: np.ndarray, y: np.ndarray) -> tuple[float, float, float]: ...

    def profile_gradient_sums(self) -> np.ndarray | None: ...


def select_core(terms: MixedTerms, *, weights_vary: bool) -> PlsCore:
    """The PLS core for a model (lmer: `weights_vary=False`; glmer, whose PIRLS re-weights at
    every iteration: True).

    One scalar term: the diagonal core (lmer: only an intercept `(1|g)`, whose O(G) criterion
    needs Z = 1). Several scalar terms with a dense block up to `ScalarTermsCore.MAX_Q2`
    columns, re-weighted: the bincount core. Everything else, and lmer (whose profiled
    criterion and its gradient live in the blocked core): the blocked core."""
    from mixbridge.python_impl.pls_blocked import BlockedCore
    from mixbridge.python_impl.pls_diagonal import DiagonalCore
    from mixbridge.python_impl.pls_scalar_terms import ScalarTermsCore

    rts = terms.reterms
    single = len(rts) == 1 and rts[0].p == 1
    if single and (weights_vary or list(rts[0].cnames) == ["(Intercept)"]):
        return DiagonalCore.from_terms(terms)
    if (
        weights_vary
        and all(t.p == 1 for t in rts)
        and sum(t.n_levels for t in rts[1:]) <= ScalarTermsCore.MAX_Q2
    ):
        return ScalarTermsCore(terms.X, list(rts))
    return BlockedCore(terms)
