"""Inference on fitted mixed models, each number computed as the R package that defines it
(lmerTest, pbkrtest, lme4) and checked against it.

Tests and degrees of freedom (lmerTest, pbkrtest): `satterthwaite`, `kenward_roger`,
`coef_table`, `term_anova`, `varpar` (the deviance in (θ, σ) and its derivatives).
Model comparison and intervals (lme4): likelihood-ratio tests, Wald, profile and parametric
bootstrap confidence intervals (`confint` and its helpers).
"""
