"""The inference methods of a `MixedFit` (`mixbridge.results`), as a mixin: coefficient tables
and F tests with Satterthwaite or Kenward–Roger df (lmerTest, pbkrtest), confidence intervals
(lme4's confint.merMod) and the allfit convergence verdict. Each method is a thin entry to its
module (`coef_table`, `term_anova`, `confint`, `mixbridge.allfit`), imported when first called.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from mixbridge.results import MixedFit


class InferenceMethods:
    """`MixedFit`'s methods for tests, intervals and allfit (see the module docstring)."""

    # -- tests and degrees of freedom (mixbridge.inference; lmerTest, pbkrtest) ---------------

    def coef_table(self: MixedFit, ddf: str = "satterthwaite") -> pd.DataFrame:
        """The fixed effects' tests as lmerTest's summary: columns estimate, std_error, df,
        statistic, p_value. lmer `ddf`: "satterthwaite", "kenward-roger" (pbkrtest's adjusted
        covariance and df) or "lme4" (t values; df and p NaN); glmer: Wald z tests."""
        from mixbridge.inference.coef_table import coef_table

        return coef_table(self, ddf=ddf)

    def anova(self: MixedFit, type: int = 3, ddf: str = "satterthwaite") -> pd.DataFrame:  # noqa: A002
        """lmerTest's anova(): one F test per fixed term (types 1, 2, 3), columns sum_sq,
        mean_sq, num_df, den_df, f_value, p_value, rows named as R names the terms."""
        from mixbridge.inference.term_anova import term_anova

        return term_anova(self, type=type, ddf=ddf)

    # -- confidence intervals (mixbridge.inference.confint) ---------------------------------

    def confint(
        self: MixedFit,
        method: str = "profile",
        level: float = 0.95,
        parm: Any = None,
        nsim: int = 1000,
        seed: int | None = None,
        progress: bool | Callable[[int, int], None] | None = None,
    ) -> pd.DataFrame:
        """lme4's confint.merMod: columns lower, upper; rows .sig01, …, .sigma, fixed effects.
        `method`: "wald", "profile" (lme4's profile, crossing solved exactly) or "boot"
        (bootMer's parametric bootstrap, percentile intervals; `nsim`, `seed`; `progress`: None
        prints progress to stderr once a run takes over 5 s, True always, False never, or a
        callable(done, total))."""
        from mixbridge.inference.confint import confint

        return confint(self, method, level, parm, nsim=nsim, seed=seed, progress=progress)

    def allfit(self: MixedFit, **options: Any) -> Any:
        """Refit with several optimizers and starts and judge a convergence warning:
        `mixbridge.allfit(self, **options)` (an `AllfitResult` with a table and a verdict)."""
        from mixbridge.allfit import allfit

        return allfit(self, **options)
