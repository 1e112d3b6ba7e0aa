#!/usr/bin/env bash
# Runs the test suite once per Keras backend: one Python process cannot switch
# backends. Every backend runs even if an earlier one fails; the exit status is
# non-zero if any failed. Extra arguments go to pytest; BACKENDS="torch" runs a subset.
set -u
export TF_CPP_MIN_LOG_LEVEL="${TF_CPP_MIN_LOG_LEVEL:-2}"
# Two pytest workers (pytest-xdist, a test dependency), one file each at a time so a
# file's module-scoped fixtures are built once: much of the suite is single-threaded
# (tracing, XLA compiles, subprocess start-up), so two workers keep both cores busy.
# One OpenMP thread per worker: torch's OpenMP pool collapses when two processes
# each spin two threads on two cores. PYTEST_WORKERS=0 runs in one process.
workers="${PYTEST_WORKERS:-2}"
parallel=()
if [ "$workers" != "0" ] && python -c "import xdist" 2>/dev/null; then
  parallel=(-n "$workers" --dist loadfile)
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi
failed=()
for backend in ${BACKENDS:-jax torch tensorflow}; do
  echo "=== KERAS_BACKEND=$backend"
  start=$SECONDS
  KERAS_BACKEND=$backend python -m pytest -q -p no:cacheprovider "${parallel[@]}" "$@" || failed+=("$backend")
  echo "=== KERAS_BACKEND=$backend took $((SECONDS - start)) s"
done
if [ ${#failed[@]} -gt 0 ]; then
  echo "FAILED on: ${failed[*]}"
  exit 1
fi
echo "All backends passed."
