"""A training run end to end and its folder: the pipeline, compare, auto, evaluation, the console epilogue.

May import every subpackage below it: core, data, reports, backbones, features, model, strategies, engines."""
