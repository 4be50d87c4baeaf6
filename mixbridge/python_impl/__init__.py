"""The pure-Python engines: lme4's lmer and glmer as lme4's stages (spec, PLS cores, responses,
PIRLS, deviance functions, optimizers, result; docs/architecture.md draws the pipeline) and
arm's bayesglm. The engine entry points (engine="python") are in `engine`.
"""
