"""Embedded R is single-threaded: the bridge serializes every call with one lock."""

from __future__ import annotations

import threading

import numpy as np

import mixbridge


def test_eight_threads_get_identical_correct_results(r_dataset):
    sleepstudy = r_dataset("sleepstudy")
    cbpp = r_dataset("cbpp")
    formula = "Reaction ~ Days + (Days | Subject)"
    bformula = "cbind(incidence, size - incidence) ~ period"
    ref = mixbridge.lmer(formula, sleepstudy, engine="r")
    bref = mixbridge.bayesglm(bformula, cbpp, family="binomial", engine="r")

    barrier = threading.Barrier(8)
    results: dict[int, object] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=60)
            if i % 2:
                results[i] = mixbridge.bayesglm(bformula, cbpp, family="binomial", engine="r")
            else:
                results[i] = mixbridge.lmer(formula, sleepstudy, engine="r")
        except BaseException as exc:  # collected and re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert len(results) == 8
    for i, fit in results.items():
        if i % 2:
            np.testing.assert_array_equal(fit.coef, bref.coef)
            np.testing.assert_array_equal(fit.se, bref.se)
        else:
            np.testing.assert_array_equal(fit.fixef, ref.fixef)
            np.testing.assert_array_equal(fit.theta, ref.theta)
            np.testing.assert_array_equal(fit.cond_var["Subject"], ref.cond_var["Subject"])
            assert fit.reml_criterion == ref.reml_criterion
