"""Exceptions shared across the package (raised by conversion, presets, models and msn)."""


class CheckpointError(ValueError):
    """A checkpoint or preset file that is truncated, corrupted or of the wrong format."""


class PresetDownloadError(ConnectionError):
    """A file of an hf:// preset could not be fetched (no network, offline mode, or
    not in the local Hugging Face cache)."""


class MissingHeadError(ValueError):
    """A classifier was asked of a preset that has no classification head and no
    ``num_classes`` was given to build one."""
