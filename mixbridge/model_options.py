"""The command-line options that describe one model fit, shared by `mixbridge fit` and
`mixbridge compare`: model, formula, data file, REML/ML, family, link, nAGQ, weights, offset and
bayesglm's prior. `model_options(args)` turns them into the keyword arguments of the fit call.
"""

from __future__ import annotations

import argparse
import math
from typing import Any

MODELS = ("lmer", "glmer", "bayesglm")


def _float_or_inf(text: str) -> float:
    return math.inf if text.lower() in ("inf", "infinity") else float(text)


def add_model_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--formula", required=True)
    p.add_argument("--data", required=True, help="a .csv or .parquet file")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--reml", dest="reml", action="store_true", default=True,
                   help="lmer: REML (default)")  # fmt: skip
    g.add_argument("--ml", dest="reml", action="store_false", help="lmer: maximum likelihood")
    p.add_argument("--family", default=None, help="glmer (default binomial), bayesglm (gaussian)")
    p.add_argument("--link", default=None)
    p.add_argument("--nagq", type=int, default=1, help="glmer: quadrature points (default 1)")
    p.add_argument("--weights", default=None, help="column of prior weights")
    p.add_argument("--offset", default=None, help="column of offsets")
    p.add_argument("--prior-mean", type=float, default=None, help="bayesglm")
    p.add_argument("--prior-scale", type=float, default=None, help="bayesglm")
    p.add_argument("--prior-df", type=_float_or_inf, default=None, help="bayesglm (inf: normal)")
    p.add_argument("--no-scaled", dest="scaled", action="store_false", default=True,
                   help="bayesglm: do not scale the prior by the predictors' sds")  # fmt: skip


def model_options(args: argparse.Namespace) -> dict[str, Any]:
    """Keyword arguments of mixbridge.lmer/glmer/bayesglm from the parsed options."""
    options: dict[str, Any] = {}
    for key in ("weights", "offset"):
        if getattr(args, key) is not None:
            options[key] = getattr(args, key)
    if args.model == "lmer":
        options["reml"] = args.reml
    elif args.model == "glmer":
        options.update(family=args.family or "binomial", link=args.link, nagq=args.nagq)
    else:
        options.update(family=args.family or "gaussian", link=args.link, scaled=args.scaled)
        for key in ("prior_mean", "prior_scale", "prior_df"):
            if getattr(args, key) is not None:
                options[key] = getattr(args, key)
    return options
