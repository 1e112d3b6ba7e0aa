#!/usr/bin/env bash
# The suite once more, on the torch backend, with the oldest Keras that pyproject.toml
# allows ("keras>=X.Y" installs keras==X.Y), then the newest Keras back: the floor is
# a promise only if it is tested.
set -u
cd "$(dirname "$0")/.."
floor=$(python - <<'PY'
import re
text = open("pyproject.toml").read()
print(re.search(r'"keras>=([0-9.]+)"', text).group(1))
PY
)
echo "=== the oldest Keras allowed: keras==$floor"
python -m pip install --quiet --progress-bar off "keras==$floor"
BACKENDS=torch bash tests/run_backends.sh "$@"
status=$?
python -m pip install --quiet --progress-bar off --upgrade keras
exit $status
