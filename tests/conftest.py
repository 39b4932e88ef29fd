"""pytest configuration shared by every test module."""

from __future__ import annotations

import logging
import warnings

import pytest


def pytest_configure(config: pytest.Config) -> None:
    # qsparse logs every schedule step through its own loggers.
    logging.getLogger("qsparse").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", module="qsparse")
