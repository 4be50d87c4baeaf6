"""The record every optimizer returns (MixedModels.jl's `OptSummary`): where it started and
stopped, the criterion there, how many evaluations it took, its return code and its messages,
plus lme4's checks at the optimum (gradient, Hessian, singular, converged). `fit.optimizer` is
built from these records (`as_dict`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mixbridge.results import Message


@dataclass
class OptSummary:
    """One optimizer run.

    `method`: the optimizer ("L-BFGS-B", "Nelder-Mead", "Brent", "BFGS, analytic gradient",
    "scalar-ri-brent"); `start`, `final`: the parameters it started from and returned (the best
    point it evaluated); `fval`: the criterion at `final`; `n_evals`: criterion evaluations;
    `status`: the optimizer's return code or message; `messages`: its warnings and lme4's
    convergence messages; `gradient`, `hessian`: the derivatives of lme4's checkConv at `final`
    (empty when not computed); `settled`: False when a probe beyond a bound still found a lower
    criterion after the last restart."""

    method: str
    start: np.ndarray
    final: np.ndarray
    fval: float
    n_evals: int
    status: str = ""
    converged: bool = True
    singular: bool = False
    gradient: np.ndarray = field(default_factory=lambda: np.zeros(0))
    hessian: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))
    messages: list[Message] = field(default_factory=list)
    settled: bool = True

    def as_dict(self) -> dict[str, Any]:
        """The record as `fit.optimizer` reports it (lists, not arrays)."""
        return {
            "name": self.method,
            "start": np.asarray(self.start, dtype=float).tolist(),
            "n_evals": self.n_evals,
            "status": self.status,
            "gradient": np.asarray(self.gradient).tolist(),
            "hessian": np.asarray(self.hessian).tolist(),
        }
