"""``python -m keras_vitmsn``: the ``keras-vitmsn`` command line."""

import sys

from keras_vitmsn.cli import main

sys.exit(main())
