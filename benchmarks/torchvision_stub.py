"""Let timm's model code import where torchvision can't be installed.

PyPI's torchvision wheels here are built against CUDA torch and fail to import beside
the CPU wheel torch==2.13.0 ("operator torchvision::nms does not exist"). timm's
VisionTransformer itself never calls torchvision; only timm's data pipeline and a few
norm layers import it at module level. This finder answers every ``torchvision.*``
import with inert placeholders. It is installed only when the real import fails, and
only in the benchmark's reference process: no timm numbers depend on torchvision code.
"""

import importlib.abc
import importlib.machinery
import sys
import types


class _Placeholder(type):
    def __getattr__(cls, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _StubModule(types.ModuleType):
    __path__ = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        return _Placeholder(name, (), {})


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path, target=None):
        if fullname == "torchvision" or fullname.startswith("torchvision."):
            return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
        return None

    def create_module(self, spec):
        return _StubModule(spec.name)

    def exec_module(self, module):
        pass


def import_timm():
    """Import timm, stubbing torchvision only if the real one cannot be imported.

    Returns:
        ``(timm_module, used_stub)``.
    """
    try:
        import torchvision  # noqa: F401

        used_stub = False
    except Exception:  # noqa: BLE001 - any failure means: use the stub
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.meta_path.insert(0, _Finder())
        used_stub = True
    import timm

    return timm, used_stub
