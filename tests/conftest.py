"""pytest fixtures and the report header. Helpers live in ``helpers.py`` (no torch
needed) and ``hf_reference.py`` (transformers reference models)."""

import sys

import keras
import numpy as np
import pytest

import keras_vitmsn

# The suite's process runs TensorFlow (tf.data, on every backend) as a script that calls
# setup_tensorflow() does: quiet, with oneDNN on. With the TensorFlow backend keras has
# imported it already, with its own defaults, and there is nothing left to set.
if "tensorflow" not in sys.modules:
    keras_vitmsn.setup_tensorflow()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def pytest_report_header(config):
    return f"KERAS_BACKEND={keras.backend.backend()}, keras {keras.__version__}"
