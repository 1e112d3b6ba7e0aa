#!/usr/bin/env bash
# Runs the test suite once per Keras backend: one Python process cannot switch
# backends. Every backend runs even if an earlier one fails; the exit status is
# non-zero if any failed. Extra arguments go to pytest.
set -u
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
failed=()
for backend in jax torch tensorflow; do
  echo "=== KERAS_BACKEND=$backend"
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "$@" || failed+=("$backend")
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "All backends passed."
