import sys

from keras_vitmsn.cli import main

sys.exit(main())
