"""The diagonal PLS core: one scalar random-effects term (`(1|g)`, `(0 + x|g)`), spec §2.

Λ = θI and L = diag(√(1 + θ²s_j)) with s_j = Σ_{i∈j} W_i z_i² (z_i = 1 for an intercept), so
every step of lme4's PLS is a per-group sum (np.bincount): O(n·p + G·p) memory and time, no q×q
matrix, no per-group Python loop. Same interface as the other cores (`pls.PlsCore`), plus what
the fast paths build on:

    core.group_stats(y, w)        lmer's one data pass: `GroupStats` for the O(G) criterion
                                  (`lmm_scalar`), from X's columns when X was never built
    core.ordered_by_group()       the core on rows sorted by group, and that order (glmer's
                                  big-data path: per-group sums become segment sums)
    core.group_weights, l_diag, cond_var_scalar(), rx_matrix(), Zb_many(u)
    core.set_factorization(...)   install a factorization computed elsewhere from this core's
                                  group sums (the fused canonical-link PIRLS steps)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from mixbridge.python_impl.group_stats import GroupStats, group_stats, group_stats_columns

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms


class DiagonalCore:
    """PLS for one scalar term: Λ = θI, L = diag(√(1 + θ²s_j)). See the module docstring.

    `X` (n×p), the term's level `codes` (n,), its number of levels and its values `zvals`
    (None: all 1); `group` names its grouping factor. `from_terms` builds it from model terms
    without building X (X is read from the terms when first needed)."""

    n_theta = 1

    def __init__(
        self,
        X: np.ndarray | None,
        codes: np.ndarray,
        n_levels: int,
        zvals: np.ndarray | None,
        *,
        group: str = "",
        terms: MixedTerms | None = None,
    ) -> None:
        self._x = None if X is None else np.asarray(X, dtype=float)
        self.terms = terms
        self._codes_given = np.asarray(codes)
        self._codes: np.ndarray | None = None
        self.n_levels = int(n_levels)
        self.zvals = None if zvals is None else np.asarray(zvals, dtype=float)
        self.group = group
        self.n = int(self._codes_given.size)
        self.q = self.n_levels
        self.theta = 1.0
        self._w: np.ndarray | None = None
        self._d = np.ones(self.n_levels)
        self._s = np.zeros(self.n_levels)
        self._rx: np.ndarray | None = None
        self._sx: np.ndarray | None = None
        self.counts: np.ndarray | None = None  # rows per level when already counted

    @classmethod
    def from_terms(cls, terms: MixedTerms) -> DiagonalCore:
        t = terms.reterms[0]
        zvals = None
        if list(t.cnames) != ["(Intercept)"]:  # an intercept's Z is 1 by construction
            zcol = np.asarray(t.Z, dtype=float)[:, 0]
            zvals = None if np.all(zcol == 1.0) else zcol
        core = cls(None, np.asarray(t.codes), t.n_levels, zvals, group=t.group, terms=terms)
        counts = getattr(t, "counts", None)
        if counts is not None and len(counts) == t.n_levels:
            core.counts = counts  # rows per level, counted by the id coding
        return core

    @property
    def codes(self) -> np.ndarray:
        """The term's level of every row (intp: bincount and take use it without a copy)."""
        if self._codes is None:
            self._codes = self._codes_given.astype(np.intp, copy=False)
        return self._codes

    @property
    def X(self) -> np.ndarray:  # noqa: N802 - the model matrix's name
        if self._x is None:
            assert self.terms is not None
            self._x = np.asarray(self.terms.X, dtype=float)
        return self._x

    @property
    def p(self) -> int:
        return self.X.shape[1]

    def ordered_by_group(self) -> tuple[DiagonalCore, np.ndarray | None]:
        """This core on its rows ordered by group (stable), and that order: every group's rows
        contiguous, so per-group sums can be segment sums and ZΛu a repeat. (self, None) when
        the rows already are in that order or some level has no rows."""
        codes, n_levels = self.codes, self.n_levels
        if np.all(codes[1:] >= codes[:-1]):
            return self, None
        if np.any(np.bincount(codes, minlength=n_levels) == 0):
            return self, None
        # small integer keys sort by radix sort, ~3x faster than the generic stable sort
        keys = codes.astype(np.uint16) if n_levels <= 65536 else codes
        rows = np.argsort(keys, kind="stable")
        X = self.X
        x_rows = np.empty(X.shape, order="F")
        for k in range(X.shape[1]):
            np.take(X[:, k], rows, out=x_rows[:, k])
        counts = np.bincount(codes, minlength=n_levels)
        ordered = np.repeat(np.arange(n_levels), counts)  # = codes[rows], without a gather
        zvals = None if self.zvals is None else self.zvals[rows]
        return DiagonalCore(x_rows, ordered, n_levels, zvals, group=self.group), rows

    # -- one data pass (lmer's O(G) path) --------------------------------------------------

    def group_stats(self, y: np.ndarray, w: np.ndarray | None) -> GroupStats:
        """The sufficient statistics of `y ~ X + (1|g)` (y offset-free; w None: unit weights)
        in one pass: from X's columns when the model terms never built X ([1, x...] plain
        numeric columns), else from X."""
        terms = self.terms
        if (
            terms is not None
            and not terms.x_built
            and terms.x_columns
            and (terms.x_columns[0] is None)
        ):
            return group_stats_columns(
                terms.x_columns[1:], y, w, self._codes_given, self.n_levels, x_gram=terms.x_gram,
                counts=self.counts,
            )  # fmt: skip
        return group_stats(self.X, y, w, self._codes_given, self.n_levels)

    # -- factorization -----------------------------------------------------------------------

    def group_sums(self, v: np.ndarray) -> np.ndarray:
        """Σ_{i∈j} v_i for every group j (bincount)."""
        return np.bincount(self.codes, weights=v, minlength=self.n_levels)

    def update(self, theta: np.ndarray | float, sqrt_w: np.ndarray | None = None) -> None:
        self.theta = float(np.asarray(theta, dtype=float).reshape(-1)[0])
        w = np.ones(self.n) if sqrt_w is None else sqrt_w * sqrt_w
        self._w = w if self.zvals is None else w * self.zvals
        wz2 = w if self.zvals is None else w * self.zvals**2
        self._s = self.group_sums(wz2)
        self._d = 1.0 + self.theta**2 * self._s
        self._rx = None  # R_X and SX are built lazily: the u-only stage never needs them
        self._sx = None
        self._wfull = w

    def set_factorization(
        self,
        theta: float,
        s: np.ndarray,
        d: np.ndarray,
        w: np.ndarray,
        sx: np.ndarray | None = None,
        rx: np.ndarray | None = None,
    ) -> None:
        """Install the factorization at θ for working weights `w` (z = 1): s_j = Σ_{i∈j} w_i,
        d_j = 1 + θ²s_j, and optionally SX = per-group Σ w x and R_X'R_X, as computed by a
        fused PIRLS step from the same sums."""
        self.theta = float(theta)
        self._s, self._d = s, d
        self._w = self._wfull = w
        self._sx, self._rx = sx, rx

    @property
    def ldL2(self) -> float:
        return float(np.sum(np.log1p(self.theta**2 * self._s)))

    @property
    def l_diag(self) -> np.ndarray:
        """The diagonal of L (one entry per level)."""
        return np.sqrt(self._d)

    @property
    def group_weights(self) -> np.ndarray:
        """s_j = Σ_{i∈j} W_i z_i² at the current weights."""
        return self._s

    def _group_x(self) -> np.ndarray:
        if self._sx is None:
            wx = self.X * self._w[:, None]
            self._sx = np.column_stack([self.group_sums(wx[:, k]) for k in range(self.X.shape[1])])
        return self._sx

    def rx_matrix(self) -> np.ndarray:
        """R_X'R_X = X'WX − Σ_j ω_j SX_j SX_j' with ω_j = θ²/d_j (spec §2.2)."""
        if self._rx is None:
            sx = self._group_x()
            omega = self.theta**2 / self._d
            xtwx = (self.X * self._wfull[:, None]).T @ self.X
            self._rx = xtwx - sx.T @ (sx * omega[:, None])
        return self._rx

    # -- solutions ---------------------------------------------------------------------------

    def solve_u(self, z: np.ndarray) -> np.ndarray:
        return self.theta * self.group_sums(self._w * z) / self._d

    def solve(self, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sz = self.group_sums(self._w * z)
        sx = self._group_x()
        omega = self.theta**2 / self._d
        rhs = (self.X * self._wfull[:, None]).T @ z - sx.T @ (omega * sz)
        beta = np.linalg.solve(self.rx_matrix(), rhs)
        u = self.theta * (sz - sx @ beta) / self._d
        return beta, u

    def rx_inverse(self) -> np.ndarray:
        return np.linalg.inv(self.rx_matrix())

    def b(self, u: np.ndarray) -> np.ndarray:
        return self.theta * u

    def Zb(self, u: np.ndarray) -> np.ndarray:  # noqa: N802 - lme4's name
        bb = (self.theta * u)[self.codes]
        return bb if self.zvals is None else bb * self.zvals

    def Zb_many(self, u: np.ndarray) -> np.ndarray:  # noqa: N802 - lme4's name
        """ZΛu for several u at once: u is (K, G), the result (K, n)."""
        bb = (self.theta * u)[:, self.codes]
        return bb if self.zvals is None else bb * self.zvals[None, :]

    def Xb(self, beta: np.ndarray) -> np.ndarray:  # noqa: N802 - lme4's name
        return self.X @ beta

    def lambda_blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        return [np.array([[float(np.asarray(theta, dtype=float).reshape(-1)[0])]])]

    def cond_var_scalar(self) -> np.ndarray:
        """Diagonal of Λ(LL')⁻¹Λ' (σ = 1): θ²/d_j, one per level."""
        return self.theta**2 / self._d

    def cond_var_by_factor(self, sigma: float) -> dict[str, np.ndarray]:
        return {self.group: (sigma**2 * self.cond_var_scalar()).reshape(-1, 1, 1)}
