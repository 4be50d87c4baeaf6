"""The estimates of a glmer fit over group sums (`group_sum_fit`), for every place the rows
live (in memory: `glmer_lean`; Dask partitions: `distributed_glmer`): the fit, lme4's
checkConv, the Hessian-based vcov, glmer's divergence warnings, and the `FitEstimates` (the
caller gives what is per row: fitted values and residuals, eager or lazy)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mixbridge.python_impl.checkconv import (
    SINGULAR_TEXT,
    check_boundary,
    check_conv,
    optimum_doubts,
)
from mixbridge.python_impl.families import Family
from mixbridge.python_impl.glmer import (
    divergence_messages,
    no_optimum_reached,
    vcov_from_hessian,
)
from mixbridge.python_impl.group_sum_fit import fit_group_sums
from mixbridge.python_impl.group_sum_kernel import GroupSumKernel
from mixbridge.python_impl.output import TermLabels
from mixbridge.python_impl.pls import lambda_blocks
from mixbridge.python_impl.result import FitEstimates
from mixbridge.results import Message


@dataclass
class GroupSumEstimates:
    """θ, β, b = θũ, the vcovs, conditional variances (θ²/d_j), the criterion and deviance at
    the optimum, the checks' verdicts and messages, the optimizer's record."""

    theta: np.ndarray
    beta: np.ndarray
    b: np.ndarray
    vcov: np.ndarray
    vcov_rx: np.ndarray | None
    cond_var: np.ndarray
    criterion: float
    deviance: float
    singular: bool
    converged: bool
    messages: list[Message]
    info: dict[str, Any]

    def fit_estimates(
        self,
        formula: str,
        fam: Family,
        reterms: list[TermLabels],
        x_names: list[str],
        nobs: int,
        cond_var: dict[str, np.ndarray],
        fitted: Any,
        residuals: Any,
        dropped: list[str],
        versions: dict[str, str],
    ) -> FitEstimates:
        return FitEstimates(
            model="glmer",
            formula=formula,
            family=fam.family,
            link=fam.link,
            reml=False,
            reterms=reterms,
            x_names=x_names,
            nobs=nobs,
            theta=np.asarray(self.theta, dtype=float),
            beta=np.asarray(self.beta, dtype=float),
            b=self.b,
            lambda_blocks=lambda_blocks([1], self.theta),
            sigma=None,
            vcov=self.vcov,
            cond_var=cond_var,
            criterion=self.criterion,
            df=len(x_names) + 1,
            deviance=self.deviance,
            reml_criterion=None,
            fitted=fitted,
            residuals=residuals,
            singular=self.singular,
            converged=self.converged,
            messages=self.messages,
            optimizer={"name": "brent/nelder_mead", **self.info},
            dropped_columns=dropped,
            nagq=1,
            vcov_rx=self.vcov_rx,
            versions=versions,
        )


def estimate(
    kernel: GroupSumKernel, tol: float, maxit: int, family: str, messages: list[Message]
) -> GroupSumEstimates:
    """Fit (`fit_group_sums`) and check (glmer.fit_spec's gradient path with _finish_stage2 and
    _glmer_fit's messages). `messages`: the data's messages so far (extended)."""
    p = kernel.p
    res = fit_group_sums(kernel, tol, maxit, check_boundary)
    x, lower = res.x, np.array([0.0] + [-np.inf] * p)
    grad, hess = res.grad, res.hess
    singular, converged, conv_msgs = check_conv(grad, hess, x, lower)
    doubts = optimum_doubts(grad, hess, x, lower, singular, settled=res.opt.settled)
    converged = converged and not doubts
    messages = list(messages) + conv_msgs + doubts
    vcov = vcov_from_hessian(hess, 1)
    dev = res.dev
    fval = dev.stage2(x)  # the state and sums below belong to the optimum
    st, last = dev.state, dev.last
    assert st is not None and kernel.factor is not None
    factor = kernel.factor
    vcov_rx = np.linalg.inv(factor.rx) if factor.rx is not None else None
    if vcov is None:
        assert vcov_rx is not None
        vcov = vcov_rx
        messages.append(
            Message(
                "warning",
                "the Hessian-based vcov is not positive definite; using the R_X-based one",
                "python",
                code="vcov_fallback",
            )
        )
    messages += divergence_messages(
        st.converged, dev.pirls_failures, int(last["edge"]), family, maxit
    )
    if no_optimum_reached(messages):
        converged = False
    if singular and not any(m.code == "singular" for m in messages):
        messages.append(Message("message", SINGULAR_TEXT, "python", code="singular"))
    theta = x[:1]
    info = dict(res.info)
    info.update({"gradient": grad.tolist(), "hessian": hess.tolist()})
    return GroupSumEstimates(
        theta=theta,
        beta=x[1:],
        b=float(theta[0]) * st.u,
        vcov=vcov,
        vcov_rx=vcov_rx,
        cond_var=factor.theta**2 / factor.d,
        criterion=float(fval),
        deviance=float(kernel.dev(last)),
        singular=bool(singular),
        converged=bool(converged),
        messages=messages,
        info=info,
    )
