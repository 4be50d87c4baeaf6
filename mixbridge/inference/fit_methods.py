"""The inference methods of a `MixedFit` (`mixbridge.results`), as a mixin: coefficient tables
and F tests with Satterthwaite or Kenward–Roger df (lmerTest, pbkrtest), confidence intervals
(lme4's confint.merMod) and the allfit convergence verdict. Each method is a thin entry to its
module (`coef_table`, `term_anova`, `mixbridge.allfit`), imported when first called; `confint`
is `mixbridge.inference.confint.confint` itself (its heavy parts, profile and bootstrap, are
imported when first called there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pandas as pd

from mixbridge.inference.confint import confint as confint_function

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

    # the module's function itself, not a wrapper repeating its signature: its first
    # parameter is the fit, so it binds as a method
    confint = confint_function

    def allfit(self: MixedFit, **options: Any) -> Any:
        """Refit with several optimizers and starts and judge a convergence warning:
        `mixbridge.allfit(self, **options)` (an `AllfitResult` with a table and a verdict)."""
        from mixbridge.allfit import allfit

        return allfit(self, **options)
