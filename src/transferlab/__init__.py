"""transferlab: from a small folder of labelled images to an accurate classifier, on an ordinary CPU.

Names are imported lazily so that light entry points (ONNX-only prediction, the CLI's --help) do not
pay for importing torch.
"""

import sys
import types
from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "train": "transferlab.api",
    "load": "transferlab.api",
    "dataset": "transferlab.api",
    "evaluate": "transferlab.api",
    "show_augmentations": "transferlab.notebook",
    "Classifier": "transferlab.classifier",
    "Prediction": "transferlab.prediction",
    "TransferlabError": "transferlab.errors",
}
# Functions named like their module: importing a submodule makes it an attribute of the package, so
# `transferlab.compare` is the module as soon as anything imports it. These modules are therefore callable.
CALLABLE_MODULES = ("compare", "export", "summary")
__all__ = [*_EXPORTS, *CALLABLE_MODULES, "__version__"]


def __getattr__(name: str):
    if name in CALLABLE_MODULES:
        return import_module(f"transferlab.{name}")
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")


def _make_callable(module_name: str, function) -> None:
    """`transferlab.<module>(...)` calls `function` (see CALLABLE_MODULES)."""

    class CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return function(*args, **kwargs)

    CallableModule.__call__.__doc__ = function.__doc__
    sys.modules[module_name].__class__ = CallableModule
