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


def _ranged(name, kind, what, accepts, doc):
    """An argparse type: ``kind(text)``, finite, for which ``accepts(value)`` holds;
    otherwise "must be <what>; got <the value>" (ints as parsed, floats as typed)."""

    def parse(text):
        value = _number(text, kind, what)
        if not accepts(value):
            shown = value if kind is int else text
            raise argparse.ArgumentTypeError(f"must be {what}; got {shown}")
        return value

    parse.__name__ = parse.__qualname__ = name
    parse.__doc__ = doc
    return parse


# NumPy's and Keras' global seeds take 32-bit unsigned ints.
_MAX_SEED = 2**32 - 1

positive_float = _ranged(
    "positive_float",
    float,
    "a positive number",
    lambda v: v > 0,
    "argparse type: a finite float > 0 (learning rates).",
)
non_negative_float = _ranged(
    "non_negative_float",
    float,
    "a number >= 0",
    lambda v: v >= 0,
    "argparse type: a finite float >= 0 (weight decay, warm-up epochs, loss weights).",
)
non_negative_int = _ranged(
    "non_negative_int",
    int,
    "an integer >= 0",
    lambda v: v >= 0,
    "argparse type: an int >= 0 (``--num-focal-views 0`` turns the focal views off).",
)
seed = _ranged(
    "seed",
    int,
    f"an integer in [0, {_MAX_SEED}]",
    lambda v: 0 <= v <= _MAX_SEED,
    "argparse type: a random seed, an int in [0, 2**32 - 1].",
)
fraction_below_one = _ranged(
    "fraction_below_one",
    float,
    "a number in [0, 1)",
    lambda v: 0 <= v < 1,
    "argparse type: a finite float in [0, 1) (the masking ratio).",
)
at_least_one = _ranged(
    "at_least_one",
    float,
    "a number >= 1",
    lambda v: v >= 1,
    "argparse type: a finite float >= 1 (a schedule stretch).",
)


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
