"""Low confidence and out-of-distribution inputs: a flag beside a prediction that should not be trusted.

A classifier always answers with one of its classes: a cat photo on the ants/bees model said "ants 91.1%".
Its probability does not tell (measured on hymenoptera with efficientnet_lite0: 13 out-of-domain photos got
62-99.7%, as confident as ants and bees), but the distance from the image's pooled backbone features to the
training images' does. Two checks, both fitted at training time on the validation split:

- far from the training data: the cosine distance to the k-th nearest training image (k-NN on L2-normalised
  features, Sun et al. 2022) above the 99th percentile of the validation images' distances;
- low probability: the top class's probability below the 2nd percentile of the validation images'.

So about 3% of validation images are flagged by construction; on hymenoptera the distance check flagged 12 of 13
scikit-image photos (cat, astronaut, coffee, rocket, ...), Mahalanobis distance only 6 (docs/reliability.md).
numpy only: the flags are computed wherever the features are.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

NEIGHBOURS = 5
DISTANCE_QUANTILE = 0.99
PROBABILITY_QUANTILE = 0.02
MAX_REFERENCE = 2000  # training images kept as neighbours (stratified by class): ~5 MB of float16 at 1280 wide
REFERENCE_KEY = "confidence.reference"  # the tensor's name in model.safetensors


@dataclass
class ConfidenceCheck:
    """Fitted thresholds plus the reference features (L2-normalised training features, float16 on disk)."""

    reference: np.ndarray  # [m, d]
    max_distance: float
    min_probability: float
    neighbours: int = NEIGHBOURS
    validation_flagged: float = 0.0  # the share of validation images the fitted check flags

    def distances(self, features: np.ndarray) -> np.ndarray:
        """Cosine distance from each row of `features` to its k-th nearest reference image."""
        if len(features) == 0:
            return np.zeros(0, dtype=np.float32)
        similarity = normalised(features) @ self.reference.astype(np.float32).T
        k = min(self.neighbours, similarity.shape[1])
        kth = -np.partition(-similarity, k - 1, axis=1)[:, k - 1]
        return (1.0 - kth).astype(np.float32)

    def assess(self, features: np.ndarray, probabilities: np.ndarray) -> list[str | None]:
        """For each image: None when it looks like the training data, else why the prediction is doubtful."""
        distances = self.distances(features)
        reasons: list[str | None] = []
        for distance, top in zip(distances, probabilities.max(axis=1)):
            why = []
            if distance > self.max_distance:
                why.append(f"far from the training images (distance {distance:.2f} > {self.max_distance:.2f})")
            if top < self.min_probability:
                why.append(f"low probability ({top:.1%} < {self.min_probability:.1%})")
            reasons.append("; ".join(why) or None)
        return reasons

    def to_json(self) -> dict:
        """What model.json keeps (the reference features go into model.safetensors under REFERENCE_KEY)."""
        return {
            "method": "knn-cosine",
            "neighbours": self.neighbours,
            "max_distance": self.max_distance,
            "min_probability": self.min_probability,
            "distance_quantile": DISTANCE_QUANTILE,
            "probability_quantile": PROBABILITY_QUANTILE,
            "validation_flagged": self.validation_flagged,
        }

    @classmethod
    def from_json(cls, description: dict, reference: np.ndarray) -> ConfidenceCheck:
        return cls(
            reference=reference,
            max_distance=float(description["max_distance"]),
            min_probability=float(description["min_probability"]),
            neighbours=int(description.get("neighbours", NEIGHBOURS)),
            validation_flagged=float(description.get("validation_flagged", 0.0)),
        )


def normalised(features: np.ndarray) -> np.ndarray:
    features = np.asarray(features, dtype=np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def reference_rows(labels: np.ndarray, limit: int = MAX_REFERENCE, seed: int = 0) -> np.ndarray:
    """Indices of at most `limit` training images, the same share of every class (seeded)."""
    if len(labels) <= limit:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    share = limit / len(labels)
    picked = [rng.permutation(np.flatnonzero(labels == c))[: max(1, int(share * np.sum(labels == c)))]
              for c in np.unique(labels)]
    return np.sort(np.concatenate(picked))


def fit_confidence(train_features: np.ndarray, train_labels: np.ndarray, val_features: np.ndarray,
                   val_probabilities: np.ndarray, seed: int = 0) -> ConfidenceCheck | None:
    """Thresholds at high percentiles of the validation images' distances and low ones of their probabilities;
    None without enough images to fit them (then predictions carry no flag)."""
    if len(train_features) < NEIGHBOURS or len(val_features) < 2:
        return None
    reference = normalised(train_features[reference_rows(train_labels, seed=seed)]).astype(np.float16)
    check = ConfidenceCheck(reference, max_distance=0.0, min_probability=0.0)
    distances = check.distances(val_features)
    # thresholds are observed values ("higher"/"lower"), never interpolated past them: on a validation split of
    # a few images an interpolated 99th percentile would flag one of them
    check.max_distance = float(np.quantile(distances, DISTANCE_QUANTILE, method="higher"))
    check.min_probability = float(np.quantile(val_probabilities.max(axis=1), PROBABILITY_QUANTILE, method="lower"))
    flagged = [reason is not None for reason in check.assess(val_features, val_probabilities)]
    check.validation_flagged = float(np.mean(flagged))
    return check
