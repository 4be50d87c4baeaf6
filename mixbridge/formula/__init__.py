"""Formulas, model frames, model matrices and mixed-model terms, shared by every Python engine.

    validate_formula(formula, columns, model)         allow-list check (security), no data needed
    build_mixed_terms(formula, data, ...) -> MixedTerms   lme4's lFormula/glFormula
    build_glm_terms(formula, data, ...) -> GLMTerms       arm's bayesglm model frame
        (sparse=True or "auto": X as scipy.sparse CSC, O(n) for factors with many levels)

Modules: `parse` (tokens, AST, R deparse), `validate` (allow-list), `terms` (R's terms.formula and
lme4's bar expansion), `evaluate` (variables on data, predvars), `levels` (R's level order),
`model_matrix` (contrasts, column names, rank dropping, finite checks), `model_frame` (the
evaluated frame), `term_types` (the result types), `frames` (the pipeline).
"""

from mixbridge.formula.frames import (
    GLMTerms,
    MixedTerms,
    ReTerm,
    build_glm_terms,
    build_mixed_terms,
)
from mixbridge.formula.parse import parse_formula
from mixbridge.formula.validate import validate_formula

__all__ = [
    "GLMTerms",
    "MixedTerms",
    "ReTerm",
    "build_glm_terms",
    "build_mixed_terms",
    "parse_formula",
    "validate_formula",
]
