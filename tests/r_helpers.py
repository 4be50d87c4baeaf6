"""Run R code in the bridge's embedded R from tests, with Python values bound to R names.

    value = r_call("function(d, f) nrow(d)", d=frame, f="y ~ x")

Arguments are converted the bridge's way (DataFrames column by column with `encode_frame`,
numbers/strings/dicts with `embedded.to_r`; rpy2 objects pass through), the function is called
under the embedded-R lock, and the result comes back decoded by `embedded.from_r` (named lists
as dicts, doubles as float64 arrays). A data.frame result is decoded as a dict of columns.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mixbridge.bridge import embedded
from mixbridge.bridge.convert import encode_frame


def _to_r(ri: Any, env: Any, value: Any) -> Any:
    if isinstance(value, pd.DataFrame):
        columns, nrow, _, _ = encode_frame(value, "", all_columns=True)
        return embedded.data_frame(ri, env, columns, nrow)
    return embedded.to_r(ri, value)  # rpy2 objects (Sexp subclasses) pass through


def r_call(function: str, **args: Any) -> Any:
    """Evaluate the R function expression `function` and call it with `args` (by name)."""
    with embedded.LOCK:
        ri, env = embedded.session()
        fn = ri.evalr(function)
        res = fn(**{k: _to_r(ri, env, v) for k, v in args.items()})
        return embedded.from_r(ri, res)


def r_frame(decoded: dict[str, Any]) -> pd.DataFrame:
    """A decoded R data.frame (dict of columns) as a DataFrame; NA strings stay None."""
    return pd.DataFrame(
        {k: (v if isinstance(v, np.ndarray) else list(v)) for k, v in decoded.items()}
    )
