"""Image datasets: layout detection, seeded stratified splits, robust decoding, augmentation and its previews.

May import: core."""
