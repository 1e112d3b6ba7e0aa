"""jax_cpu_memory: JAX on CPU reuses a computation's scratch memory instead of
page-faulting it in on every call, and ``import keras_vitmsn`` leaves JAX free to be
configured. The settings are process-wide, so each check that applies them runs in
its own Python process."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import pytest

from keras_vitmsn import backend
from keras_vitmsn.backend import jax_cpu_memory

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
on_jax = pytest.mark.skipif(keras.backend.backend() != "jax", reason="a JAX setting")
on_linux = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")

# A computation with a scratch buffer of rows x 2048 floats (a dot with a short
# contraction, cheap to compute, under a softmax over its long axis, which XLA cannot
# fuse away; glibc maps anything above 32 MiB with mmap when left to itself), run a few
# times; prints the median minor page faults of the timed calls.
_FAULTS = """
import json, resource, sys
{setup}
import jax, jax.numpy as jnp
f = jax.jit(lambda a, b: jax.nn.softmax(a @ b, axis=0).sum(axis=1))
a = jnp.ones(({rows}, 8), jnp.float32); b = jnp.ones((8, 2048), jnp.float32)
assert f.lower(a, b).compile().memory_analysis().temp_size_in_bytes >= {rows} * 2048 * 4
for _ in range(2):
    f(a, b).block_until_ready()
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(a, b).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({{"faults": sorted(faults)[2], "result": {result}}}))
"""
_ENABLE = (
    "import keras_vitmsn\nfrom keras_vitmsn import backend\nr = backend.enable_jax_cpu_memory()"
)


def _run(code, **env):
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, KERAS_BACKEND="jax", **env),
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@on_jax
def test_importing_the_package_creates_no_jax_client():
    # Before the probes in keras_internals became lazy, the import ran computations,
    # and the CPU client (with its dispatch mode) was fixed before user code ran.
    got = _run("""
        import json, keras_vitmsn
        from jax._src import xla_bridge
        print(json.dumps(xla_bridge.backends_are_initialized()))
    """)
    assert got is False


@on_jax
@on_linux
def test_enable_removes_the_per_call_page_faults():
    default = _run(_FAULTS.format(rows=16384, setup="import keras_vitmsn", result="None"))
    enabled = _run(
        _FAULTS.format(
            rows=16384,
            setup=_ENABLE,
            result="[bool(r), r.reason]",
        )
    )
    # The premise: by default every call faults its 128 MiB intermediate in again
    # (about 65k pages of 4 KiB measured; fewer with huge pages, never none).
    assert default["faults"] > 5000, default
    assert enabled["result"] == [True, ""], enabled
    assert enabled["faults"] < 500, enabled


@on_jax
@on_linux
def test_enable_keeps_scratch_beyond_what_mallopt_can_count():
    # An MSN step at vits16 settings has 2.7 GB of scratch. With freed memory kept only
    # up to 2**31 - 1 bytes (the largest count mallopt takes), glibc handed the rest
    # back after every step and the next step faulted all 660k pages in again.
    rows = 2**31 // (2048 * 4) + 16384  # 2.125 GiB of scratch
    enabled = _run(
        _FAULTS.format(
            rows=rows,
            setup=_ENABLE,
            result="bool(r)",
        )
    )
    assert enabled["result"] is True, enabled
    assert enabled["faults"] < 500, enabled


@on_jax
@on_linux
def test_enable_without_jax_private_check_still_applies_and_says_so():
    got = _run("""
        import json, keras_vitmsn
        from jax._src import xla_bridge
        del xla_bridge.backends_are_initialized
        from keras_vitmsn import backend
        import jax
        r = backend.enable_jax_cpu_memory()
        print(json.dumps([bool(r), r.reason, jax.config.read("jax_cpu_enable_async_dispatch")]))
    """)
    assert got[0] is True and "not verified" in got[1] and got[2] is False


@on_jax
def test_enable_after_a_computation_refuses_and_changes_nothing():
    import jax

    keras.ops.convert_to_numpy(keras.ops.ones((2,)))  # this process's client exists
    with pytest.raises(RuntimeError, match="before the first JAX computation"):
        backend.enable_jax_cpu_memory()
    assert jax.config.read("jax_cpu_enable_async_dispatch") is True


@pytest.mark.skipif(keras.backend.backend() == "jax", reason="the other backends")
def test_enable_on_other_backends_changes_nothing_and_says_why():
    result = backend.enable_jax_cpu_memory()
    assert not result and not result.inline_dispatch and not result.glibc_keeps_freed_memory
    assert keras.backend.backend() in result.reason


@on_jax
def test_enable_without_glibc_changes_nothing_and_says_why(monkeypatch):
    monkeypatch.setattr(jax_cpu_memory.sys, "platform", "darwin")
    result = backend.enable_jax_cpu_memory()  # before the client check: no error here
    assert not result and "darwin" in result.reason


@on_linux
def test_glibc_is_found_on_linux():
    libc, why = jax_cpu_memory._glibc()
    assert libc is not None, why


@on_jax
@pytest.mark.parametrize("switch, expected_async", [(None, True), ("0", True), ("1", False)])
def test_the_command_line_enables_it_when_asked(switch, expected_async):
    env = {} if switch is None else {"KERAS_VITMSN_JAX_CPU_MEMORY": switch}
    got = _run(
        """
        import json, sys
        from keras_vitmsn import cli
        sys.argv = ["keras-vitmsn", "presets"]
        cli.main()
        import jax
        print(json.dumps(jax.config.read("jax_cpu_enable_async_dispatch")))
    """,
        **env,
    )
    assert got is expected_async


def test_the_command_line_refuses_a_bad_switch():
    out = subprocess.run(
        [sys.executable, "-m", "keras_vitmsn", "presets"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=dict(os.environ, KERAS_VITMSN_JAX_CPU_MEMORY="yes"),
        timeout=300,
    )
    assert out.returncode == 2
    assert (
        out.stderr.strip().splitlines()[-1].startswith("error: KERAS_VITMSN_JAX_CPU_MEMORY='yes'")
    )
