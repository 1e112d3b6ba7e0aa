"""Probes that run on first use rather than at import.

Probes that build variables run a computation, and on JAX the first computation
creates the CPU client: after that, settings a process chooses at start-up (such as
:func:`keras_vitmsn.backend.enable_jax_cpu_memory`, or JAX's own platform and memory options)
no longer apply. So ``import keras_vitmsn`` computes nothing, and each such probe runs
the first time its answer is read.

Example:
>>> calls = []
>>> namespace = {}
>>> namespace["__getattr__"] = module_getattr(namespace, {"ANSWER": lambda: calls.append(1) or 42})
>>> len(calls), probed(namespace, "ANSWER"), probed(namespace, "ANSWER"), len(calls)
(0, 42, 42, 1)
"""


def module_getattr(namespace, probes):
    """A module ``__getattr__`` (PEP 562) that answers each name of ``probes`` by
    calling its probe once and storing the result in ``namespace`` (a module's
    ``globals()``), where later reads, and tests that set it, find it directly."""

    def __getattr__(name):
        probe = probes.get(name)
        if probe is None:
            raise AttributeError(f"module {namespace.get('__name__')!r} has no attribute {name!r}")
        namespace[name] = value = probe()
        return value

    return __getattr__


def probed(namespace, name):
    """The value of the lazy constant ``name`` in ``namespace``, probing it if needed."""
    if name in namespace:
        return namespace[name]
    return namespace["__getattr__"](name)
