"""``KERAS_VITMSN_PUBLIC_KERAS_ONLY=1`` in the environment: every probe in
:mod:`keras_vitmsn.backend.keras_internals` answers "not available", so a whole process takes
the public paths (how the fallbacks are tested end to end)."""

import os

PUBLIC_ONLY = os.environ.get("KERAS_VITMSN_PUBLIC_KERAS_ONLY", "") not in ("", "0")
