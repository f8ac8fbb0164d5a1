"""Where the work runs: locally, or on a Ray cluster (extraction, data-parallel training, embed, bulk predict).

May import: core, data, reports, backbones, features, model, strategies."""
