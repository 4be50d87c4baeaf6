"""Inference on fitted mixed models: tests, degrees of freedom, model comparison, intervals.

Tests and degrees of freedom (lmerTest, pbkrtest): `satterthwaite`, `kenward_roger`,
`coef_table`, `term_anova`, `varpar` (the deviance in (θ, σ) and its derivatives).
"""
