"""The Python engine's tests hook (`FitMethods.tests`): Satterthwaite and Kenward–Roger tests
from the fit's own deviance function, computed on first use and kept with the fit.

The derivatives of the deviance (Satterthwaite) and the pieces of the adjusted covariance
(Kenward–Roger) depend only on the fit, so one `PythonTests` per fit caches them: the coefficient
table and every anova type then reuse them.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mixbridge.inference.coef_table import t_table
from mixbridge.inference.satterthwaite import Satterthwaite, satterthwaite
from mixbridge.inference.varpar import DevianceModel, varpar_derivatives

if TYPE_CHECKING:
    from mixbridge.inference.kenward_roger import KenwardRoger
    from mixbridge.inference.term_anova import FixedTermsInfo
    from mixbridge.results import MixedFit


class PythonTests:
    """Callable as `tests(fit, kind, ddf, type)`; see `mixbridge.results.FitMethods`."""

    def __init__(
        self,
        model: DevianceModel,
        kenward_roger: Callable[[MixedFit], KenwardRoger] | None = None,
        terms_info: Callable[[], FixedTermsInfo] | None = None,
    ) -> None:
        self.model = model
        self._kr_builder = kenward_roger
        self._terms_info = terms_info
        self._lock = threading.Lock()
        self._cache: dict[str, Any] = {}

    def _cached(self, key: str, build: Callable[[], Any]) -> Any:
        with self._lock:
            if key not in self._cache:
                self._cache[key] = build()
            return self._cache[key]

    def satterthwaite(self, fit: MixedFit) -> Satterthwaite:
        def build() -> Satterthwaite:
            derivs = varpar_derivatives(self.model, fit.theta, fit.sigma)
            return satterthwaite(
                derivs, fit.fixef.to_numpy(float), fit.vcov.to_numpy(float), fit.sigma
            )

        return self._cached("satterthwaite", build)

    def kenward_roger(self, fit: MixedFit) -> KenwardRoger:
        if self._kr_builder is None:
            raise NotImplementedError("Kenward-Roger is not available for this fit")
        builder = self._kr_builder
        return self._cached("kenward-roger", lambda: builder(fit))

    def terms_info(self) -> FixedTermsInfo:
        if self._terms_info is None:
            raise NotImplementedError("the fixed-effect terms of this fit are not available")
        return self._cached("terms", self._terms_info)

    def __call__(self, fit: MixedFit, kind: str, ddf: str, type: int | None) -> pd.DataFrame:  # noqa: A002
        if kind == "coef_table":
            return self._coef_table(fit, ddf)
        if kind == "anova":
            from mixbridge.inference.term_anova import anova_table

            tester = self.satterthwaite(fit) if ddf == "satterthwaite" else self.kenward_roger(fit)
            return anova_table(self.terms_info(), tester, int(type or 3), ddf, fit.sigma)
        raise ValueError(f"unknown test kind {kind!r}")

    def _coef_table(self, fit: MixedFit, ddf: str) -> pd.DataFrame:
        names = list(fit.fixef.index)
        p = len(names)
        tester = self.satterthwaite(fit) if ddf == "satterthwaite" else self.kenward_roger(fit)
        est, se, df = np.empty(p), np.empty(p), np.empty(p)
        for i in range(p):
            e = np.zeros(p)
            e[i] = 1.0
            est[i], se[i], df[i] = tester.test_1d(e)
        return t_table(names, est, se, df)
