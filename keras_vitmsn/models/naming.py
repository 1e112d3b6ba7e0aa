"""Readable default model names (Keras would derive "vi_tmsn_backbone" from the class)."""

import keras


def default_name(name, base):
    if name:
        return name
    uid = keras.backend.get_uid(base)
    return base if uid == 1 else f"{base}_{uid - 1}"
