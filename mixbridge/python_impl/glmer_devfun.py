"""glmer's deviance functions (lme4's `mkGlmerDevfun`, `updateGlmerDevfun`; spec §3.4): the
model assembled from its spec, and the stage-1 and stage-2 functions, pure functions of their
parameters (every evaluation restarts PIRLS from the stored linear predictor lp0, as lme4 does,
so the objective is deterministic and reproduces lme4's devfun including its PIRLS stopping
quirk).

    model = GlmerModel.build(spec)     response, PLS core (`pls.select_core`), θ layout,
                                       PIRLS controls; big (1|g) models on rows sorted by group
    dev = Devfun(model)                the initial joint PIRLS at θ0 from mustart gives lp0
    dev.stage1(theta)                  joint (u, β) PIRLS, Laplace (nAGQ = 0 and stage 1)
    dev.start_stage2()                 lp0 <- the last evaluation's linear predictor
    dev.stage2(np.r_[theta, beta])     u-only PIRLS with offset o + Xβ; Laplace or AGQ
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

from mixbridge.python_impl import spec as model_spec
from mixbridge.python_impl.agq import agq_deviance, agq_deviance_fast
from mixbridge.python_impl.diagonal_canonical import CanonicalKernel
from mixbridge.python_impl.diagonal_nb import NbKernel
from mixbridge.python_impl.family_nb import NegativeBinomial
from mixbridge.python_impl.pirls import PirlsState, pirls
from mixbridge.python_impl.pls import (
    PlsCore,
    lambda_blocks,
    lower_bounds,
    select_core,
    theta_start,
)
from mixbridge.python_impl.pls_diagonal import DiagonalCore
from mixbridge.python_impl.response import CANONICAL, GlmResponse
from mixbridge.python_impl.spec import GlmerSettings, GlmerSpec

if TYPE_CHECKING:
    from mixbridge.formula.frames import MixedTerms


# The fused (1|g) negative-binomial kernel (`diagonal_nb`); False: the generic PIRLS on the
# diagonal core (the tests compare the two paths)
NB_FUSED = True


@dataclass
class GlmerModel:
    """Everything fixed for a fit: spec, response, core, θ layout and the PIRLS controls.

    Big (1|g) models with a canonical link are fitted with their rows ordered by group: `resp`,
    `core` and `eta_init` hold the ordered rows and `rows` the order (None: the data's)."""

    spec: GlmerSpec
    resp: GlmResponse
    core: PlsCore
    theta0: np.ndarray
    theta_lower: np.ndarray
    eta_init: np.ndarray
    tol: float
    maxit: int
    rows: np.ndarray | None = None
    kernel: CanonicalKernel | NbKernel | None = None

    @classmethod
    def build(cls, spec: GlmerSpec) -> GlmerModel:
        terms, fam = spec.terms, spec.family
        core = select_core(terms, weights_vary=True)
        canonical = (fam.family, fam.link) in CANONICAL
        # (1|g) negative.binomial: the fused NB kernel (Laplace only: no fused AGQ for it)
        nb = NB_FUSED and fam.family == "negative.binomial" and fam.link == "log"
        nb = nb and spec.nagq <= 1
        y0, w0, n0, off, eta_init = spec.y, spec.weights, spec.n_trials, spec.offset, spec.eta_init
        rows = None
        fused = isinstance(core, DiagonalCore) and core.zvals is None and (canonical or nb)
        if fused and terms.n >= max(2, model_spec.GRADIENT_MIN_ROWS):
            # every group's rows contiguous: per-group sums become np.add.reduceat over
            # segments and ZΛu an np.repeat (no scattered memory access in the O(n) passes)
            assert isinstance(core, DiagonalCore)
            core, rows = core.ordered_by_group()
            if rows is not None:
                y0, w0, n0, off, eta_init = (_rows_of(a, rows) for a in (y0, w0, n0, off, eta_init))
        resp = GlmResponse(fam, y0, w0, off, n0)
        reterms = list(terms.reterms)
        kernel: CanonicalKernel | NbKernel | None = None
        if fused:
            kernel = CanonicalKernel(core, resp) if canonical else NbKernel(core, resp)
        assert isinstance(core, DiagonalCore) or kernel is None
        return cls(
            spec,
            resp,
            core,
            theta_start(reterms),
            lower_bounds(reterms),
            eta_init,
            spec.tol_pwrss,
            spec.settings.maxit,
            rows,
            kernel,
        )

    def with_nb_theta(self, theta: float) -> GlmerModel:
        """The same negative.binomial model (terms, ordered core) at another NB θ: a new
        response and kernel, no rebuilt core (glmer_nb's trial θ's)."""
        fam = NegativeBinomial(theta)
        r = self.resp
        resp = GlmResponse(fam, r.y, r.weights, r.offset, r.n_trials)
        kernel = None
        if isinstance(self.kernel, NbKernel):
            assert isinstance(self.core, DiagonalCore)
            kernel = NbKernel(self.core, resp)
        return replace(self, spec=replace(self.spec, family=fam), resp=resp, kernel=kernel)

    def with_settings(self, settings: GlmerSettings) -> GlmerModel:
        """The same model (response, core) with other PIRLS controls."""
        spec = replace(self.spec, settings=settings)
        return replace(self, spec=spec, tol=spec.tol_pwrss, maxit=settings.maxit)

    @property
    def terms(self) -> MixedTerms:
        return self.spec.terms

    @property
    def nagq(self) -> int:
        return self.spec.nagq

    @property
    def scalar(self) -> bool:
        """One scalar random-effects term (the diagonal core)."""
        return isinstance(self.core, DiagonalCore)

    @property
    def gradient_capable(self) -> bool:
        """The structure allows the analytic-gradient stage 2 (one scalar term, canonical link;
        AGQ: the fused (1|g) kernel)."""
        if not isinstance(self.core, DiagonalCore):
            return False
        if isinstance(self.kernel, NbKernel):  # (1|g) negative.binomial, Laplace
            return True
        canonical = (self.resp.family_name, self.resp.link) in CANONICAL
        return canonical and (self.nagq <= 1 or self.core.zvals is None)

    @property
    def gradient(self) -> bool:
        """Stage 2 by the analytic gradient (no stage-1 optimization): its gradient is that of
        the converged deviance, so only when the deviance function is the converged one."""
        return self.gradient_capable and self.nagq >= 1 and self.tol <= model_spec.TIGHT_TOL

    @property
    def n_theta(self) -> int:
        return self.theta0.size

    @property
    def X(self) -> np.ndarray:  # noqa: N802 - the model matrix's name
        return self.terms.X if self.rows is None else self.core.X

    def unsort(self, a: np.ndarray) -> np.ndarray:
        """A row vector of the fit back in the data's row order."""
        if self.rows is None:
            return a
        out = np.empty_like(a)
        out[self.rows] = a
        return out

    def lambda_blocks(self, theta: np.ndarray) -> list[np.ndarray]:
        return lambda_blocks([t.p for t in self.terms.reterms], theta)


def _rows_of(a: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """a[rows], except that a constant column (unit weights, a zero offset, single trials)
    stays what it is: reordering it is a no-op, and a gather costs a pass over n rows."""
    if a.strides == (0,) or (a.size and a[0] == a[-1] and np.all(a == a[0])):
        return np.broadcast_to(a[:1], a.shape) if a.size else a
    return a[rows]


class Devfun:
    """lme4's glmer deviance functions over one model, restarting PIRLS from lp0 every time.

    `stage1(theta)`: joint (u, β) PIRLS, Laplace deviance (lme4's nAGQ = 0 devfun).
    `stage2(params)`: params = (θ, β); u-only PIRLS with offset o + Xβ; Laplace or AGQ.
    After any call, `self.state` and the core hold that evaluation's PIRLS state.
    """

    def __init__(self, model: GlmerModel) -> None:
        self.m = model
        self.pirls_failures = 0
        self.base_offset = model.resp.offset
        # (1|g) with a canonical link: PIRLS in fused group-level form (same function)
        self.kernel = model.kernel
        self._last_key: tuple[Any, ...] | None = None
        self._last_value = float("nan")
        # initial joint PIRLS at θ0 from mustart (mkGlmerDevfun) gives the first lp0
        st = self._joint(model.theta0, model.eta_init)
        self.lp0 = st.lin_pred(model.core)
        self.state: PirlsState = st
        self.n_evals = 0

    def _pirls(
        self,
        theta: np.ndarray,
        eta: np.ndarray,
        offset: np.ndarray,
        u_only: bool,
        tol: float | None = None,
    ) -> PirlsState:
        m = self.m
        st = pirls(
            m.core,
            m.resp,
            theta,
            eta,
            offset,
            u_only=u_only,
            tol=m.tol if tol is None else tol,
            maxit=m.maxit,
            strict=False,
        )
        if not st.converged:
            self.pirls_failures += 1
        return st

    def _joint(self, theta: np.ndarray, eta0: np.ndarray) -> PirlsState:
        """Joint (β, u) PIRLS from η = eta0 (fused when the model allows it)."""
        m = self.m
        if self.kernel is not None:
            st = self.kernel.pirls_joint(float(theta[0]), eta0, self.base_offset, m.tol, m.maxit)
            if st is not None:
                if not st.converged:
                    self.pirls_failures += 1
                return st
        return self._pirls(theta, eta0, self.base_offset, u_only=False)

    def stage1(self, theta: np.ndarray) -> float:
        self._last_key = None
        self.n_evals += 1
        theta = np.asarray(theta, dtype=float)
        st = self._joint(theta, self.base_offset + self.lp0)
        self.state = st
        return st.laplace(self.m.resp)

    @property
    def lp0(self) -> np.ndarray:
        """The linear predictor every lme4-style evaluation restarts PIRLS from."""
        return self._lp0

    @lp0.setter
    def lp0(self, value: np.ndarray) -> None:
        self._lp0 = value
        self._last_key = None  # the remembered evaluation started from the old lp0

    def start_stage2(self) -> None:
        """lp0 <- the linear predictor of the last evaluation (the stage-1 optimum)."""
        self.lp0 = self.state.lin_pred(self.m.core)

    def stage2(
        self, params: np.ndarray, tol: float | None = None, b_start: np.ndarray | None = None
    ) -> float:
        """`b_start` (group effects Λu to start PIRLS from, instead of lp0) is for the
        converged-Laplace gradient phase only, where the start does not change the value."""
        self.n_evals += 1
        m = self.m
        params = np.asarray(params, dtype=float)
        key = (params.tobytes(), tol)
        if b_start is None and key == self._last_key:
            # the same evaluation as the last one (e.g. the re-evaluation at the optimum): the
            # state and the core's factorization still belong to it
            return self._last_value
        theta, beta = params[: m.n_theta], params[m.n_theta :]
        offset = self.base_offset + m.X @ beta
        st = None
        if self.kernel is not None:
            st = self.kernel.pirls_u(
                float(theta[0]),
                offset,
                eta_start=self.base_offset + self.lp0 if b_start is None else None,
                b_start=b_start,
                tol=m.tol if tol is None else tol,
                maxit=m.maxit,
                strict=False,
            )
            if st is not None and not st.converged:
                self.pirls_failures += 1
        from_kernel = st is not None
        if st is None:
            if b_start is None:
                eta0 = self.base_offset + self.lp0
            else:  # one scalar term: b_start[g] times the term's values
                assert isinstance(m.core, DiagonalCore)
                zb = np.asarray(b_start, dtype=float)[m.core.codes]
                eta0 = offset + (zb if m.core.zvals is None else zb * m.core.zvals)
            st = self._pirls(theta, eta0, offset, u_only=True, tol=tol)
        self.state = st
        self.offset = offset
        if m.nagq <= 1:
            value = st.laplace(m.resp)
        else:
            value = None
            if self.kernel is not None and from_kernel:
                value = agq_deviance_fast(self.kernel, st, float(theta[0]), m.nagq)
            if value is None:
                value = agq_deviance(m.core, m.resp, st, offset, m.nagq)
        self._last_key = key if b_start is None else None
        self._last_value = value
        return value

    def adopt(self, state: PirlsState, offset: np.ndarray) -> None:
        """Make `state` (at offset o + Xβ) this function's last evaluation: the gradient phase's
        warm-started modes, which the core's factorization already belongs to."""
        self.state, self.offset, self._last_key = state, offset, None
