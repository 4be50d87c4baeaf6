"""Inference on fitted mixed models: tests, model comparison and confidence intervals, each
computed as the R package that defines it (lmerTest, pbkrtest, lme4) and checked against it."""
