"""pytest plugin (entry point `pytest11`): option `--require-r`; fixtures `r_session`, `assert_matches_r`."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("mixbridge")
    group.addoption(
        "--require-r",
        action="store_true",
        default=False,
        help="fail, instead of skipping, tests that need R when R, lme4 or arm is missing",
    )
