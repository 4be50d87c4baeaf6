"""mixbridge: lme4's lmer/glmer and arm's bayesglm from Python, in pure Python and through R.

import mixbridge
fit = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy)            # Python engine
ref = mixbridge.lmer("Reaction ~ Days + (Days | Subject)", sleepstudy, engine="r")  # lme4
mixbridge.compare(fit, ref).assert_ok()
"""

import mixbridge.conformance.adapters  # noqa: F401  (registers the peer engines, lazily)
from mixbridge.allfit import allfit
from mixbridge.api import bayesglm, glmer, glmer_nb, glmer_objective, lmer, lmer_objective
from mixbridge.checks import named_arguments
from mixbridge.errors import (
    ArgumentError,
    ConvergenceError,
    DataError,
    FormulaError,
    MixbridgeError,
    MixbridgeWarning,
    RBridgeError,
    RModelError,
    RNotAvailableError,
    RTimeoutError,
    RWarning,
)
from mixbridge.results import BayesGLMFit, Message, MixedFit

__version__ = "0.1.0"


@named_arguments
def compare(a, b, tolerance=None, *, tests=False):
    """Compare two fits of the same model; see `mixbridge.conformance.compare` (`tests=True`:
    also the Satterthwaite coefficient tests: df, statistic, p_value)."""
    from mixbridge.conformance.compare import compare as _compare

    return _compare(a, b, tolerance=tolerance, tests=tests)


def anova(*fits, refit=True, names=None):
    """Likelihood-ratio tests between nested models (lme4's anova.merMod); see
    `mixbridge.inference.lrt.anova`."""
    from mixbridge.inference.lrt import anova as _anova

    return _anova(*fits, refit=refit, names=names)


__all__ = [
    "ArgumentError",
    "BayesGLMFit",
    "ConvergenceError",
    "DataError",
    "FormulaError",
    "Message",
    "MixbridgeError",
    "MixbridgeWarning",
    "MixedFit",
    "RBridgeError",
    "RModelError",
    "RNotAvailableError",
    "RTimeoutError",
    "RWarning",
    "allfit",
    "bayesglm",
    "anova",
    "compare",
    "glmer",
    "glmer_nb",
    "glmer_objective",
    "lmer",
    "lmer_objective",
]
