"""The trained model: dense heads, the training loop, metrics, the confidence check, prediction, `Classifier`.

May import: core, data, reports, backbones, features."""
