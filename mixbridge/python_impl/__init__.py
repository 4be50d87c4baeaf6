"""The pure-Python engines: lme4's lmer (`lmm`, with the O(G) `lmm_scalar` path) and glmer
(`glmm`, `pirls`, `agq`), arm's bayesglm (`bayesglm`), sharing `predictor`, `families`,
`optimize` and `output`. The engine entry points (engine="python") are in `engine`.
"""
