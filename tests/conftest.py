"""pytest fixtures and the report header. Helpers live in ``helpers.py`` (no torch
needed) and ``hf_reference.py`` (transformers reference models)."""

import keras
import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_report_header(config):
    return f"KERAS_BACKEND={keras.backend.backend()}, keras {keras.__version__}"
