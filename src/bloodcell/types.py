"""The one detection record shared by ground truth and predictions (numpy only)."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import numpy as np

#: Default class order; index i in every model output and label file means CLASS_NAMES[i].
CLASS_NAMES: tuple[str, ...] = ("RBC", "WBC", "Platelets")

#: Class-name variants seen in blood-smear datasets, keyed by their canonical spelling
#: (lower case, no spaces, underscores or hyphens).
CLASS_ALIASES: dict[str, str] = {
    "rbc": "RBC",
    "rbcs": "RBC",
    "redbloodcell": "RBC",
    "redbloodcells": "RBC",
    "wbc": "WBC",
    "wbcs": "WBC",
    "whitebloodcell": "WBC",
    "whitebloodcells": "WBC",
    "platelets": "Platelets",
    "platelet": "Platelets",
    "platlets": "Platelets",
    "platlet": "Platelets",
    "plt": "Platelets",
}


def canonical_class_name(name: str) -> str:
    """A class name as spelling-blind key: lower case, no spaces, underscores or hyphens ("White_Blood Cell")."""
    return re.sub(r"[\s_\-]+", "", name).casefold()


def find_class(name: str, class_names: tuple[str, ...] | list[str]) -> int | None:
    """The index of the class ``name`` means, in any case or in a variant the VOC reader takes ("platelet",
    "wbc"); None if none."""
    key = canonical_class_name(name)
    for i, c in enumerate(class_names):
        if canonical_class_name(c) == key:
            return i
    alias = CLASS_ALIASES.get(key)
    return list(class_names).index(alias) if alias in class_names else None


@dataclass
class Detections:
    """Column-wise boxes for one image.

    boxes are float xyxy in pixel coordinates of the image they belong to, using the
    continuous convention of the VOC XML files: a box from ``xmin`` to ``xmax`` covers
    ``xmax - xmin`` pixels (see ``bloodcell.data.voc`` for how VOC indices map onto it).
    ``scores`` is 1.0 for ground truth.
    """

    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4), np.float32))
    labels: np.ndarray = field(default_factory=lambda: np.zeros((0,), np.int64))
    scores: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float32).reshape(-1, 4)
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if self.scores is None:
            self.scores = np.ones(len(self.boxes), dtype=np.float32)
        self.scores = np.asarray(self.scores, dtype=np.float32).reshape(-1)
        n = len(self.boxes)
        if len(self.labels) != n or len(self.scores) != n:
            raise ValueError(
                f"Detections: boxes ({n}), labels ({len(self.labels)}) and scores "
                f"({len(self.scores)}) must have the same length"
            )

    def __len__(self) -> int:
        return len(self.boxes)

    def __getitem__(self, index: np.ndarray | slice) -> Detections:
        return Detections(self.boxes[index], self.labels[index], self.scores[index])

    def above(self, threshold: float) -> Detections:
        """The detections whose score is at least ``threshold``."""
        return self[self.scores >= threshold]

    def counts(self, class_names: tuple[str, ...] | list[str] = CLASS_NAMES) -> dict[str, int]:
        """Number of boxes per class name (every class present, zero included)."""
        binc = np.bincount(self.labels, minlength=len(class_names))
        return {name: int(binc[i]) for i, name in enumerate(class_names)}

    @staticmethod
    def concat(items: list[Detections]) -> Detections:
        """One Detections of all of ``items``' boxes, in order."""
        if not items:
            return Detections()
        return Detections(
            np.concatenate([d.boxes for d in items]),
            np.concatenate([d.labels for d in items]),
            np.concatenate([d.scores for d in items]),
        )
