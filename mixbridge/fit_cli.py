"""`mixbridge fit`: fit one model from the shell and print its summary, or the fit as JSON.

    mixbridge fit --model lmer --formula "Reaction ~ Days + (Days | Subject)" --data ss.parquet
    mixbridge fit --model glmer --family binomial --formula "..." --data d.csv --engine r --json

`--json` prints the fit as schema "mixbridge.fit/1" (`mixbridge.serialize`; `--rows` adds the
per-row fitted values and residuals); on an error it prints {"schema": "mixbridge.error/1",
"error": <class>, "message": ..., "argument"/"column"/"token": ...} instead, so a caller in any
language reads one JSON document either way.

Exit status: 0 fitted (see "converged" in the output), 1 the engine failed (R's error, R not
available, no convergence), 2 bad usage or input (file, formula, data, arguments).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from mixbridge.errors import (
    ArgumentError,
    DataError,
    FormulaError,
    MixbridgeError,
)

ERROR_SCHEMA = "mixbridge.error/1"


def _parser() -> argparse.ArgumentParser:
    from mixbridge.model_options import add_model_arguments

    p = argparse.ArgumentParser(
        prog="mixbridge fit",
        description="Fit one model and print its summary (or the fit as JSON).",
    )
    add_model_arguments(p)
    p.add_argument(
        "--engine", default="python",
        help="python (default), r, r:subprocess, statsmodels or a registered engine",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the fit as JSON (mixbridge.fit/1)")
    p.add_argument("--rows", action="store_true", help="with --json: add fitted values/residuals")
    return p


def _error_document(exc: BaseException) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": ERROR_SCHEMA, "error": type(exc).__name__,
                           "message": str(exc)}  # fmt: skip
    for attr in ("argument", "column", "token", "r_call", "missing", "install"):
        value = getattr(exc, attr, None)
        if value:
            doc[attr] = value
    return doc


def _fail(args: argparse.Namespace, exc: BaseException, status: int) -> int:
    if args.json:
        sys.stdout.write(json.dumps(_error_document(exc), indent=2, default=str) + "\n")
    sys.stderr.write(f"mixbridge fit: {type(exc).__name__}: {exc}\n")
    return status


def fit_main(argv: list[str] | None = None) -> int:
    from mixbridge.conformance.suite import fit_model, read_data
    from mixbridge.model_options import model_options

    args = _parser().parse_args(argv)
    try:
        data = read_data(args.data)
    except ValueError as exc:  # missing file, unknown suffix, unreadable
        return _fail(args, DataError(str(exc), "data"), 2)
    try:
        fit = fit_model(args.model, args.formula, data, args.engine, model_options(args))
    except (FormulaError, DataError, ArgumentError) as exc:
        return _fail(args, exc, 2)
    except MixbridgeError as exc:
        return _fail(args, exc, 1)
    except (NotImplementedError, RuntimeError) as exc:  # an engine that cannot fit this model
        return _fail(args, exc, 1)
    if args.json:
        doc = fit.to_dict(rows=args.rows)
        sys.stdout.write(json.dumps(doc, indent=2, allow_nan=False) + "\n")
    else:
        sys.stdout.write(fit.summary() + "\n")
    return 0


main = fit_main


if __name__ == "__main__":  # pragma: no cover
    sys.exit(fit_main())
