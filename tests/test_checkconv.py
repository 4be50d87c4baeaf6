"""check_conv (lme4's checkConv) on derivatives it cannot check: a flagged result, never a crash
(a generated design once gave a NaN Hessian and numpy's LinAlgError out of glmer)."""

from __future__ import annotations

import numpy as np
import pytest

from mixbridge.python_impl.checkconv import check_conv


@pytest.mark.parametrize("bad", ["hess", "grad"])
@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_derivatives_flag_the_fit(bad, value):
    grad = np.array([1e-4, -2e-4, 3e-5])
    hess = np.array([[4.0, 0.5, 0.1], [0.5, 3.0, 0.2], [0.1, 0.2, 2.0]])
    (hess if bad == "hess" else grad)[1, ...] = value
    singular, converged, msgs = check_conv(grad, hess, np.array([1.0, 0.1, 0.5]), np.zeros(3))
    assert not singular and not converged
    assert [(m.kind, m.code) for m in msgs] == [("warning", "convergence")]
    assert "infinite or missing" in msgs[0].text


def test_finite_derivatives_still_checked():
    grad = np.array([1e-4, -2e-4, 3e-5])
    hess = np.array([[4.0, 0.5, 0.1], [0.5, 3.0, 0.2], [0.1, 0.2, 2.0]])
    assert check_conv(grad, hess, np.array([1.0, 0.1, 0.5]), np.zeros(3)) == (False, True, [])
