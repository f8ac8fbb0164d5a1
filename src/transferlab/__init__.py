"""transferlab: from a small folder of labelled images to an accurate classifier, on an ordinary CPU.

Names are imported lazily so that light entry points (ONNX-only prediction, the CLI's --help) do not
pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    "train": "transferlab.api",
    "load": "transferlab.api",
    "dataset": "transferlab.api",
    "compare": "transferlab.api",
    "show_augmentations": "transferlab.notebook",
    "Classifier": "transferlab.classifier",
    "Prediction": "transferlab.prediction",
    "TransferlabError": "transferlab.errors",
}
__all__ = [*_EXPORTS, "summary", "__version__"]


def __getattr__(name: str):
    if name == "summary":  # the module is callable: transferlab.summary(classifier or run or backbone)
        return import_module("transferlab.summary")
    if name in _EXPORTS:
        return getattr(import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
