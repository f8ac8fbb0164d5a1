"""transferlab: from a small folder of labelled images to an accurate classifier, on an ordinary CPU.

Names are imported lazily so that light entry points (ONNX-only prediction, the CLI's --help) do not
pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {  # name -> module[:attribute]
    "train": "transferlab.api",
    "load": "transferlab.api",
    "dataset": "transferlab.api",
    "evaluate": "transferlab.api",
    "compare": "transferlab.runs.compare",
    "doctor": "transferlab.runs.doctor",
    "export": "transferlab.deploy.export:export_run",
    "summary": "transferlab.model.summary:summary_of",
    "show_augmentations": "transferlab.reports.notebook",
    "Classifier": "transferlab.model.classifier",
    "Prediction": "transferlab.model.prediction",
    "TransferlabError": "transferlab.core.errors",
    "FitConfig": "transferlab.core.config",
    "SplitConfig": "transferlab.core.settings",
    "HeadConfig": "transferlab.core.settings",
    "TrunkConfig": "transferlab.core.settings",
    "FinetuneConfig": "transferlab.core.settings",
    "EngineConfig": "transferlab.core.settings",
}
__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str):
    if name in _EXPORTS:
        module, _, attribute = _EXPORTS[name].partition(":")
        return getattr(import_module(module), attribute or name)
    raise AttributeError(f"module 'transferlab' has no attribute {name!r}")
