"""Baseline smile detector: OpenCV's smile Haar cascade run on the lower half of a face crop.

The cascade (``haarcascade_smile.xml``, shipped with the opencv-python wheels under
``cv2.data.haarcascades``) looks for a smiling mouth. It has no training step here, so the
evaluation runs it on the same held-out crops as the classifier.

Every crop is converted to grayscale and resized to FACE_SIDE x FACE_SIDE pixels, so that
both datasets give the cascade the same geometry (GENKI-4K crops are 128 px, SMILEsmileD
crops 64 px). It is then histogram-equalized, and only its lower half, where the mouth of a
centred face lies, is searched. ``detectMultiScale3`` with ``minNeighbors=0`` and
``outputRejectLevels=True`` returns every window that passes all cascade stages. These
windows are grouped as OpenCV groups them (``cv2.groupRectangles`` with eps 0.2), and the
score of a crop is the number of windows in its largest group: 0 without any window, 1 when
no two windows group. A crop counts as smiling when its score exceeds ``min_neighbors``.
For ``min_neighbors`` >= 2 this is exactly OpenCV's rule that ``detectMultiScale`` with that
``minNeighbors`` finds at least one smile (checked against OpenCV 4.14 in the tests). It is
also exact for 0, where OpenCV skips grouping. For 1 it can differ, because OpenCV also drops
groups of fewer than 3 windows that lie inside another group.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import cv2
import numpy as np

CASCADE_FILE = "haarcascade_smile.xml"
# Side of the square crop the cascade searches, in pixels: the size of the GENKI-4K crops.
FACE_SIDE = 128
# cv2.CascadeClassifier.detectMultiScale groups its windows with this eps (cascadedetect.cpp, GROUP_EPS).
GROUP_EPS = 0.2


def cascade_path() -> Path:
    """Return the path of OpenCV's smile cascade in the installed opencv package."""
    return Path(cv2.data.haarcascades) / CASCADE_FILE


def load_smile_cascade(path: Path | None = None) -> cv2.CascadeClassifier:
    """Load the smile cascade from ``path`` (default: ``cascade_path()``).

    Raises:
        FileNotFoundError: when the file is missing or OpenCV cannot read it as a cascade.
    """
    path = cascade_path() if path is None else Path(path)
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise FileNotFoundError(f"{path}: smile cascade not found or not readable by OpenCV {cv2.__version__}")
    return cascade


def mouth_region(image: np.ndarray) -> np.ndarray:
    """Return the lower half of ``image`` as an equalized grayscale FACE_SIDE x FACE_SIDE/2 uint8 array.

    ``image`` is a uint8 crop, grayscale (H, W), BGR (H, W, 3) or BGRA (H, W, 4).
    """
    if image.dtype != np.uint8 or image.ndim not in (2, 3) or image.size == 0:
        raise ValueError(f"expected a non-empty uint8 image of shape (H, W) or (H, W, C), got {image.dtype} "
                         f"{image.shape}")
    if image.ndim == 3:
        conversions = {1: None, 3: cv2.COLOR_BGR2GRAY, 4: cv2.COLOR_BGRA2GRAY}
        if image.shape[2] not in conversions:
            raise ValueError(f"expected 1, 3 or 4 channels, got {image.shape[2]}")
        code = conversions[image.shape[2]]
        image = image[:, :, 0] if code is None else cv2.cvtColor(image, code)
    face = cv2.resize(image, (FACE_SIDE, FACE_SIDE), interpolation=cv2.INTER_LINEAR)
    face = cv2.equalizeHist(face)
    return np.ascontiguousarray(face[FACE_SIDE // 2:])


def smile_score(cascade: cv2.CascadeClassifier, image: np.ndarray, scale_factor: float) -> int:
    """Return the number of cascade windows in the largest group of smile detections in ``image``.

    ``scale_factor`` is detectMultiScale's scaleFactor (> 1). See the module docstring.
    """
    region = mouth_region(image)
    windows, _levels, _weights = cascade.detectMultiScale3(
        region, scaleFactor=scale_factor, minNeighbors=0, outputRejectLevels=True
    )
    if len(windows) == 0:
        return 0
    # groupRectangles keeps only groups of more than groupThreshold windows, so threshold 1
    # leaves the groups whose size is counted. Its weights are the window counts per group.
    _groups, counts = cv2.groupRectangles([list(map(int, window)) for window in windows], 1, GROUP_EPS)
    return int(np.max(counts)) if len(counts) else 1


def smile_scores(cascade: cv2.CascadeClassifier, images: Sequence[np.ndarray], scale_factor: float) -> np.ndarray:
    """Return ``smile_score`` of every image as an int64 array (N,)."""
    return np.array([smile_score(cascade, image, scale_factor) for image in images], dtype=np.int64)


def predict_smiles(scores: np.ndarray, min_neighbors: int) -> np.ndarray:
    """Return 1 where a score exceeds ``min_neighbors`` and 0 elsewhere, as an int64 array."""
    return (np.asarray(scores) > min_neighbors).astype(np.int64)


def choose_min_neighbors(scores: np.ndarray, labels: np.ndarray) -> int:
    """Pick the ``min_neighbors`` that maximizes balanced accuracy on ``scores`` and 0/1 ``labels``.

    Balanced accuracy is the mean recall of the classes present, so with one class it is
    plain accuracy. Candidates are 0 and every distinct score, since the decision changes
    only there. Ties go to the smallest value. Call it on training samples only, never on the
    test part.

    Raises:
        ValueError: for no samples.
    """
    scores = np.asarray(scores, dtype=np.int64)
    labels = np.asarray(labels, dtype=np.int64)
    if scores.size == 0:
        raise ValueError("choosing min_neighbors needs at least one sample")
    classes = [labels == value for value in (0, 1) if (labels == value).any()]
    best_value, best_accuracy = 0, -1.0
    for candidate in np.unique(np.concatenate(([0], scores))):
        predicted = scores > candidate
        accuracy = float(np.mean([np.mean(predicted[members] == (labels[members] == 1)) for members in classes]))
        if accuracy > best_accuracy:
            best_value, best_accuracy = int(candidate), accuracy
    return best_value
