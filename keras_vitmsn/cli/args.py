"""Argument checking for the ``keras-vitmsn`` command line.

Every bad argument is reported the same way as any other bad input: one
``error: ...`` line and exit status 2 (see :mod:`keras_vitmsn.cli`). argparse's own
errors (a missing option, ``--batch-size abc``) are raised as :class:`UsageError`
instead of printing a usage block, and numeric options are range-checked while the
command line is parsed, before any model or image is loaded.
"""

import argparse
import collections.abc
import functools
import math

from keras_vitmsn.utils import positive_int as _check_positive_int


class UsageError(Exception):
    """Bad input from the user: reported on one line."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors raised as :class:`UsageError` (one line, exit status 2)
    rather than a usage block and ``sys.exit``; sub-commands inherit it."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


def _number(text, kind, what):
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}") from None
    if kind is float and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be {what}; got {text!r}")
    return value


def positive_int(text):
    """argparse type: an int >= 1 (``--epochs 0`` or ``--batch-size -3`` are errors)."""
    value = _number(text, int, "a positive integer")
    try:
        return _check_positive_int(value, "value")  # the library's rule, worded for a flag
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a positive integer; got {value}") from None


def positive_float(text):
    """argparse type: a finite float > 0 (learning rates)."""
    value = _number(text, float, "a positive number")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number; got {text}")
    return value


def non_negative_float(text):
    """argparse type: a finite float >= 0 (weight decay, warm-up epochs, loss weights)."""
    value = _number(text, float, "a number >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a number >= 0; got {text}")
    return value


def non_negative_int(text):
    """argparse type: an int >= 0 (``--num-focal-views 0`` turns the focal views off)."""
    value = _number(text, int, "an integer >= 0")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0; got {value}")
    return value


# NumPy's and Keras' global seeds take 32-bit unsigned ints.
_MAX_SEED = 2**32 - 1


def seed(text):
    """argparse type: a random seed, an int in [0, 2**32 - 1]."""
    value = _number(text, int, f"an integer in [0, {_MAX_SEED}]")
    if not 0 <= value <= _MAX_SEED:
        raise argparse.ArgumentTypeError(f"must be an integer in [0, {_MAX_SEED}]; got {value}")
    return value


def fraction_below_one(text):
    """argparse type: a finite float in [0, 1) (the masking ratio)."""
    value = _number(text, float, "a number in [0, 1)")
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text}")
    return value


def at_least_one(text):
    """argparse type: a finite float >= 1 (a schedule stretch)."""
    value = _number(text, float, "a number >= 1")
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a number >= 1; got {text}")
    return value


class LazyChoices(collections.abc.Sequence):
    """argparse ``choices`` computed when first needed (a value checked, ``--help``).

    Building the parser then imports nothing heavy, so ``keras-vitmsn --version`` answers
    without importing keras; argparse's messages are the same as for a list.
    """

    def __init__(self, load):
        self._load = load

    @functools.cached_property
    def _choices(self):
        return tuple(self._load())

    def __getitem__(self, index):
        return self._choices[index]

    def __len__(self):
        return len(self._choices)
