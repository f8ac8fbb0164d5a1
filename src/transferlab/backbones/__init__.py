"""Backbones: our name -> timm architecture, weights source and preprocessing; the frozen trunk; ImageNet labels.

May import: core, data."""
