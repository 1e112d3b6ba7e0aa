"""The ``keras-vitmsn`` command line."""

from keras_vitmsn.cli.main import main

__all__ = ["main"]
