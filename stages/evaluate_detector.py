"""Evaluate the cross-validated face detectors on their held-out and training images.

For each fold k, the model of fold k detects faces in the images of its test part
("heldout") and of its training part ("train"), and the stage saves those detections.
It reports the per-image best-match IoU, AP at IoU 0.5, AP averaged over IoU 0.50:0.95
and recall at IoU 0.5 (see stages.metrics). Each metric is given per fold and pooled over
the folds. The main ones also get a mean with a Student-t 95% confidence interval across folds.
Every output names an image as the image column of folds.csv does (see stages.split), and the
stage finds each annotation row's image through its file path, so repeated file names are fine.

    python -m stages.evaluate_detector --params params.yaml --splits data/splits \\
        --models data/models/detector --predictions data/predictions/detector \\
        --metrics reports/metrics/detector.json --per-image reports/detector/per_image.csv \\
        --pr-curves reports/detector/pr_curves.csv --data-summary reports/metrics/data.json
"""

from __future__ import annotations

import argparse
import csv
import functools
import json
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pandas as pd
from tqdm import tqdm

from stages import metrics
from stages.atomic import atomic_directory, write_text_atomic
from stages.cli import run_stage
from stages.errors import DataError
from stages.params import ParamsError, add_params_arguments, load_params

logger = logging.getLogger(__name__)

# Part name -> keras-retinanet annotation file of a fold folder.
PART_FILES = {"heldout": "test.csv", "train": "train.csv"}
PARTS = tuple(PART_FILES)

FOLDS_COLUMNS = ("image", "person", "fold", "path")
BOX_COLUMNS = ["x1", "y1", "x2", "y2"]
PREDICTION_COLUMNS = ["part", "image", *BOX_COLUMNS, "score"]
PER_IMAGE_COLUMNS = [
    "fold", "part", "image", "person", "iou", "score",
    "gt_x1", "gt_y1", "gt_x2", "gt_y2", "pred_x1", "pred_y1", "pred_x2", "pred_y2",
]  # fmt: skip
PR_CURVE_COLUMNS = ["fold", "part", "recall", "precision", "score"]

# Files of a trained model folder (see stages.detector) and the type of each model.json key.
MODEL_CONFIG_FILE = "model.json"
MODEL_WEIGHTS_FILE = "weights.h5"
MODEL_CONFIG_TYPES = {"backbone": str, "image_min_side": int, "image_max_side": int, "feature_size": int}

# Points kept per precision-recall curve in the CSV, enough to plot it. AP uses every point.
PR_CURVE_MAX_POINTS = 200
# Decimal places of the floats in the metrics JSON.
JSON_DECIMALS = 4
# Metrics summarized across folds with a mean and a confidence interval.
ACROSS_FOLD_METRICS = ("mean_iou", "ap50", "ap50_95", "recall50")

# Returns (boxes (K, 4) in original-image pixels [x1, y1, x2, y2], scores (K,)) for one image path.
Predictor = Callable[[Path], tuple[np.ndarray, np.ndarray]]
# Returns the predictor of the model trained for the given fold.
PredictorLoader = Callable[[int], Predictor]


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the evaluate stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.evaluate_detector",
        description="Run each fold's face detector on its held-out and training images and report IoU, AP and recall.",
    )
    add_params_arguments(parser)
    options = {
        "--splits": "folder with folds.csv and fold<k>/{train,test}.csv",
        "--models": "folder with one trained model folder per fold, fold<k>/",
        "--predictions": "output folder for the detections of each fold, fold<k>.csv",
        "--metrics": "output JSON with per-fold, pooled and across-fold metrics",
        "--per-image": "output CSV with the best-matching detection of each image",
        "--pr-curves": "output CSV with precision-recall curves at IoU 0.5",
        "--data-summary": "JSON from the convert stage with the image counts",
    }
    for option, help_text in options.items():
        parser.add_argument(option, type=Path, required=True, help=help_text)
    return parser


def check_evaluate_params(evaluate_params: Mapping[str, Any], source: str = "params.yaml") -> None:
    """Raise ParamsError when the per-image IoU would need detections that prediction drops.

    Prediction keeps only detections with score >= ap_score_threshold, so a lower
    iou_score_threshold would silently act as ap_score_threshold.
    """
    iou_threshold = evaluate_params["iou_score_threshold"]
    ap_threshold = evaluate_params["ap_score_threshold"]
    if iou_threshold < ap_threshold:
        raise ParamsError(
            f"{source}: evaluate.iou_score_threshold ({iou_threshold}) is below evaluate.ap_score_threshold "
            f"({ap_threshold}); detections under the AP threshold are not kept, so raise iou_score_threshold "
            "or lower ap_score_threshold"
        )


# --- Input files ---------------------------------------------------------------------


def read_folds_table(path: Path) -> pd.DataFrame:
    """Read folds.csv (columns image, person, fold, path) and check its columns and values."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the split stage first")
    # Persons keep their inferred type, so numbered persons sort as numbers in the report.
    table = pd.read_csv(path, dtype={"image": str, "path": str})

    missing = [column for column in FOLDS_COLUMNS if column not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected {', '.join(FOLDS_COLUMNS)}")
    if table.empty:
        raise DataError(f"{path}: no images listed; rerun the split stage")
    if not pd.api.types.is_integer_dtype(table["fold"]) or (table["fold"] < 0).any():
        examples = table["fold"].unique()[:5].tolist()
        raise DataError(f"{path}: column fold must contain whole numbers >= 0, got for example {examples}")
    if table[["image", "person", "path"]].isna().any().any():
        line = int(table[table[["image", "person", "path"]].isna().any(axis=1)].index[0]) + 2
        raise DataError(f"{path}: line {line}: empty image, person or path")

    for column in ("image", "path"):
        duplicated = table[column][table[column].duplicated()]
        if not duplicated.empty:
            line = int(duplicated.index[0]) + 2
            raise DataError(f"{path}: line {line}: {column} {duplicated.iloc[0]!r} is listed more than once")
    return table


def _parse_coordinate(csv_path: Path, line: int, name: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise DataError(f"{csv_path}: line {line}: {name} ({text!r}) is not a number") from None
    if not math.isfinite(value):
        raise DataError(f"{csv_path}: line {line}: {name} ({text!r}) is not a finite number")
    return value


def _parse_annotation_row(csv_path: Path, line: int, fields: list[str]) -> dict[str, Any]:
    """Parse one row. A background row ``path,,,,,`` gets NaN coordinates."""
    if len(fields) != 6:
        raise DataError(f"{csv_path}: line {line}: expected 6 fields 'path,x1,y1,x2,y2,class_name', got {len(fields)}")
    raw_path, *coordinates, class_name = (field.strip() for field in fields)
    if not raw_path:
        raise DataError(f"{csv_path}: line {line}: empty image path")
    image_path = csv_path.parent / raw_path
    if not image_path.is_file():
        raise DataError(f"{csv_path}: line {line}: image file {image_path} not found")
    row = {"image": _normalize_path(raw_path), "path": str(image_path), "line": line}

    if not any(coordinates) and not class_name:
        return {**row, **dict.fromkeys(BOX_COLUMNS, math.nan)}
    if not all(coordinates) or not class_name:
        raise DataError(
            f"{csv_path}: line {line}: missing box or class name for {raw_path}; expected "
            "'path,x1,y1,x2,y2,class_name', or 'path,,,,,' for an image without faces"
        )

    x1, y1, x2, y2 = (_parse_coordinate(csv_path, line, name, text) for name, text in zip(BOX_COLUMNS, coordinates))
    if x2 <= x1:
        raise DataError(f"{csv_path}: line {line}: x2 ({x2:g}) must be higher than x1 ({x1:g})")
    if y2 <= y1:
        raise DataError(f"{csv_path}: line {line}: y2 ({y2:g}) must be higher than y1 ({y1:g})")
    return {**row, "x1": x1, "y1": y1, "x2": x2, "y2": y2}


def _normalize_path(path: str) -> str:
    """Return ``path`` with "/" separators and without "." and ".." parts, so that one file has one spelling."""
    return PurePath(os.path.normpath(path.replace("\\", "/"))).as_posix()


def _check_row_of_image(csv_path: Path, line: int, row: dict[str, Any], earlier: dict[str, tuple[int, bool]],
                        one_face_per_image: bool) -> None:
    """Raise DataError for a row that adds to an image listed before, unless that is a further face.

    ``earlier`` maps image path -> (first line, whether that line was a background row).
    """
    image = row["image"]
    is_background = math.isnan(row["x1"])
    if image not in earlier:
        if is_background and one_face_per_image:
            raise DataError(
                f"{csv_path}: line {line}: background row (no face) for image {image}; this stage "
                "expects one face box per image"
            )
        earlier[image] = (line, is_background)
        return
    first_line, first_is_background = earlier[image]
    if one_face_per_image:
        raise DataError(
            f"{csv_path}: line {line}: second box for image {image} (first on line {first_line}); "
            "this stage expects one face box per image"
        )
    if is_background or first_is_background:
        raise DataError(
            f"{csv_path}: line {line}: image {image} is listed as a background row (no face) and "
            f"with a face box (first on line {first_line}); list it either way, not both"
        )


def read_annotations(csv_path: Path, one_face_per_image: bool = True) -> pd.DataFrame:
    """Read a keras-retinanet annotation CSV.

    The file has no header and rows ``path,x1,y1,x2,y2,class_name``, with paths relative to
    the CSV's folder. An image with several faces has one row per face. A background row
    ``path,,,,,`` lists an image without faces. Returns columns image (the path as written in the
    CSV, with "/" separators and without "." and ".." parts), path (resolved against the CSV's
    folder), line (of the CSV, from 1) and x1, y1, x2, y2 in pixels, one row per face in file
    order. A background image has one row with NaN coordinates.

    Args:
        csv_path: the annotation CSV.
        one_face_per_image: reject background rows and second boxes, for callers whose
            metrics assume one face per image.

    Raises:
        DataError: naming the file and line of a malformed row, a missing image file, an
            image listed both as background and with a face, or (with ``one_face_per_image``)
            a background row or a second box for the same image.
    """
    if not csv_path.is_file():
        raise DataError(f"{csv_path}: file not found; run the split stage first")

    rows: list[dict[str, Any]] = []
    earlier: dict[str, tuple[int, bool]] = {}
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        for fields in reader:
            if not fields or all(not field.strip() for field in fields):
                continue
            row = _parse_annotation_row(csv_path, reader.line_num, fields)
            _check_row_of_image(csv_path, reader.line_num, row, earlier, one_face_per_image)
            rows.append(row)
    return pd.DataFrame(rows, columns=["image", "path", "line", *BOX_COLUMNS])


def check_fold_parts(fold: int, parts: Mapping[str, pd.DataFrame], folds_table: pd.DataFrame, splits_dir: Path) -> None:
    """Check that a fold's CSVs agree with folds.csv and that no person is in both parts.

    Raises:
        DataError: for an image missing from folds.csv, a held-out image of
            another fold, a training image of this fold, or a person in both parts.
    """
    folds_csv = splits_dir / "folds.csv"
    fold_of_image = dict(zip(folds_table["image"], folds_table["fold"]))
    for part, annotations in parts.items():
        csv_path = splits_dir / f"fold{fold}" / PART_FILES[part]
        for image in annotations["image"]:
            if image not in fold_of_image:
                raise DataError(f"{csv_path}: image {image!r} is not listed in {folds_csv} (column image)")
            in_test_fold = fold_of_image[image] == fold
            if part == "heldout" and not in_test_fold:
                raise DataError(
                    f"{csv_path}: image {image} belongs to fold {fold_of_image[image]} in {folds_csv}, not fold {fold}"
                )
            if part == "train" and in_test_fold:
                raise DataError(f"{csv_path}: training image {image} belongs to test fold {fold} in {folds_csv}")

    person_of_image = dict(zip(folds_table["image"], folds_table["person"]))
    persons = {part: {person_of_image[image] for image in parts[part]["image"]} for part in PARTS}
    shared = sorted(persons["heldout"] & persons["train"])
    if shared:
        raise DataError(
            f"fold {fold}: persons {', '.join(map(str, shared))} have images in both train.csv and test.csv; "
            "the folds must group images by person"
        )

    listed = int((folds_table["fold"] == fold).sum())
    if listed != parts["heldout"]["image"].nunique():
        logger.warning(
            "fold %d: %s lists %d images for this fold but test.csv has %d",
            fold, folds_csv, listed, parts["heldout"]["image"].nunique(),
        )  # fmt: skip


def name_images(annotations: pd.DataFrame, csv_path: Path, folds_table: pd.DataFrame, splits_dir: Path) -> pd.DataFrame:
    """Replace the image column of ``read_annotations`` output by the image's name in folds.csv.

    An image is found by its file path: the row's path, resolved against the folder of
    ``csv_path``, must equal a path of folds.csv resolved against ``splits_dir``, after removing
    "." and ".." parts. So two images with the same file name in different folders (FDDB has
    such pairs) stay apart, and the names are those that the split stage wrote into folds.csv.

    Raises:
        DataError: naming the file, the line and the path of a row whose image folds.csv does not list.
    """
    name_of_path = {
        os.path.normpath(splits_dir / path): image for image, path in zip(folds_table["image"], folds_table["path"])
    }
    names = []
    for raw_path, path, line in zip(annotations["image"], annotations["path"], annotations["line"]):
        name = name_of_path.get(os.path.normpath(path))
        if name is None:
            raise DataError(
                f"{csv_path}: line {line}: image {raw_path} ({path}) is not listed in "
                f"{splits_dir / 'folds.csv'} (column path); rerun the split stage"
            )
        names.append(name)
    return annotations.assign(image=names)


def read_split_annotations(splits_dir: Path, folds_table: pd.DataFrame, one_face_per_image: bool = True) -> pd.DataFrame:
    """Read and check every fold's test.csv and train.csv into one table (see ``read_annotations``).

    Returns columns fold, part ("heldout" or "train"), image (the name in folds.csv, see
    ``name_images``), person, path, x1, y1, x2, y2 and source (the CSV file), one row per face
    and one row with NaN coordinates per background image.
    """
    person_of_image = dict(zip(folds_table["image"], folds_table["person"]))
    frames = []
    for fold in sorted(int(fold) for fold in folds_table["fold"].unique()):
        paths = {part: splits_dir / f"fold{fold}" / name for part, name in PART_FILES.items()}
        parts = {
            part: name_images(read_annotations(path, one_face_per_image), path, folds_table, splits_dir)
            for part, path in paths.items()
        }
        check_fold_parts(fold, parts, folds_table, splits_dir)
        for part, annotations in parts.items():
            frame = annotations.assign(fold=fold, part=part, source=str(paths[part]))
            frame["person"] = frame["image"].map(person_of_image)
            frames.append(frame)
    columns = ["fold", "part", "image", "person", "path", *BOX_COLUMNS, "source"]
    return pd.concat(frames, ignore_index=True)[columns]


def read_data_summary(path: Path) -> dict[str, Any]:
    """Read the convert stage's JSON summary and check that it has the image counts."""
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the convert stage first")
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise DataError(f"{path}: invalid JSON: {error}") from None
    for key in ("images_annotated", "images_missing"):
        if not isinstance(summary, dict) or key not in summary:
            raise DataError(f"{path}: missing key {key!r}")
    return summary


def read_json_object(path: Path, remedy: str = "") -> dict:
    """Read a JSON file whose top level must be an object; errors name ``path`` and end with ``remedy``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found{remedy}")
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path}: invalid JSON: {error}{remedy}") from None
    if not isinstance(value, dict):
        raise DataError(f"{path}: expected a JSON object, found {type(value).__name__}{remedy}")
    return value


def check_model_config(path: Path) -> None:
    """Raise DataError naming ``path`` unless it is a JSON object with the model keys of valid types.

    This repeats the checks of stages.detector.read_model_config with plain json, because
    importing stages.detector starts TensorFlow.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the train stage first")
    config = read_json_object(path, remedy="; retrain this fold")
    missing = [key for key in MODEL_CONFIG_TYPES if key not in config]
    if missing:
        raise DataError(f"{path}: missing keys {', '.join(missing)}; retrain this fold")
    for key, expected in MODEL_CONFIG_TYPES.items():
        value = config[key]
        if expected is str:
            valid = isinstance(value, str) and value != ""
        else:
            valid = isinstance(value, int) and not isinstance(value, bool) and value > 0
        if not valid:
            description = "a backbone name" if expected is str else "a positive integer"
            raise DataError(f"{path}: {key} is {value!r}, expected {description}")


def check_model_folders(models_dir: Path, folds: Sequence[int]) -> None:
    """Raise DataError unless every fold's model folder has a valid model.json and a weights.h5.

    Runs before TensorFlow starts, so a broken fold is reported before any fold is predicted.
    """
    missing = [str(models_dir / f"fold{fold}") for fold in folds if not (models_dir / f"fold{fold}").is_dir()]
    if missing:
        raise DataError(f"model folder(s) not found: {', '.join(missing)}; run the train stage first")
    for fold in folds:
        model_dir = models_dir / f"fold{fold}"
        check_model_config(model_dir / MODEL_CONFIG_FILE)
        weights = model_dir / MODEL_WEIGHTS_FILE
        if not weights.is_file():
            raise DataError(f"{weights}: file not found; run the train stage first")


def model_predictor_loader(
    models_dir: Path, detector_params: Mapping[str, Any], evaluate_params: Mapping[str, Any]
) -> PredictorLoader:
    """Return a loader of the trained model of each fold, wrapped as a Predictor.

    stages.detector is imported here because it starts TensorFlow, which the tests and
    ``--help`` do not need.
    """
    from stages import detector

    def load(fold: int) -> Predictor:
        model_dir = models_dir / f"fold{fold}"
        try:
            model = detector.load_prediction_model(
                model_dir,
                dict(detector_params),
                max_detections=evaluate_params["max_detections"],
                score_threshold=evaluate_params["ap_score_threshold"],
            )
        except (OSError, ValueError) as error:
            # h5py raises OSError for a truncated file, and Keras raises ValueError when the
            # weights do not fit the network that model.json describes.
            raise DataError(
                f"{model_dir / MODEL_WEIGHTS_FILE}: cannot load the weights: {error}; "
                f"retrain fold {fold} (python -m stages.train_detector)"
            ) from error

        def predict(image_path: Path) -> tuple[np.ndarray, np.ndarray]:
            image = detector.read_image_bgr(image_path)
            return detector.predict_image(
                model,
                image,
                dict(detector_params),
                max_detections=evaluate_params["max_detections"],
                score_threshold=evaluate_params["ap_score_threshold"],
            )

        # NOTE: the previous fold's model is freed only when its predictor is garbage collected.
        # If TensorFlow keeps that memory, stages.detector should offer a way to release it.
        return predict

    return load


# --- Prediction ----------------------------------------------------------------------


def clean_prediction(
    image: str, boxes: np.ndarray, scores: np.ndarray, min_score: float, max_detections: int
) -> tuple[np.ndarray, np.ndarray]:
    """Check a predictor's output and keep the ``max_detections`` best boxes with score >= ``min_score``.

    Returns float32 boxes (K, 4) and scores (K,) sorted by descending score (ties in input order).

    Raises:
        ValueError: naming the image, for wrong shapes, non-finite values or x2 < x1 or y2 < y1.
    """
    box_array = np.asarray(boxes, dtype=np.float32)
    score_array = np.asarray(scores, dtype=np.float32).reshape(-1)
    if box_array.size == 0:
        box_array = box_array.reshape(0, 4)
    if box_array.ndim != 2 or box_array.shape[1] != 4 or len(box_array) != len(score_array):
        raise ValueError(
            f"prediction for image {image}: expected boxes of shape (K, 4) and scores of shape (K,), "
            f"got {box_array.shape} and {score_array.shape}"
        )
    metrics.as_boxes(box_array, f"prediction for image {image}")
    if not np.isfinite(score_array).all():
        raise ValueError(f"prediction for image {image}: non-finite score in {score_array.tolist()}")

    keep = np.flatnonzero(score_array >= min_score)
    order = keep[np.argsort(-score_array[keep], kind="stable")][:max_detections]
    return box_array[order], score_array[order]


def empty_predictions() -> pd.DataFrame:
    """Return a predictions table with no rows and the columns of ``predict_images``."""
    columns = {"part": pd.Series(dtype=str), "image": pd.Series(dtype=str)}
    columns.update({name: pd.Series(dtype=np.float32) for name in [*BOX_COLUMNS, "score"]})
    return pd.DataFrame(columns)


def predict_images(
    predict: Predictor, annotations: pd.DataFrame, part: str, min_score: float, max_detections: int, description: str,
    seconds: list[float] | None = None,
) -> pd.DataFrame:
    """Run ``predict`` on every image of ``annotations`` with a progress bar.

    Returns one row per kept detection (see ``clean_prediction``) with columns part, image,
    x1, y1, x2, y2 (float32 pixels) and score (float32). Images without detections have no row.
    When ``seconds`` is a list, the wall time of each ``predict`` call is appended to it.
    """
    images: list[str] = []
    box_arrays = [np.zeros((0, 4), dtype=np.float32)]
    score_arrays = [np.zeros(0, dtype=np.float32)]
    # An image with several faces has several annotation rows but is predicted once.
    images_to_predict = annotations.drop_duplicates("image")
    rows = zip(images_to_predict["image"], images_to_predict["path"])
    for image, path in tqdm(rows, total=len(images_to_predict), desc=description, unit="image"):
        start = time.perf_counter()
        raw_boxes, raw_scores = predict(Path(path))
        if seconds is not None:
            seconds.append(time.perf_counter() - start)
        boxes, scores = clean_prediction(image, raw_boxes, raw_scores, min_score, max_detections)
        images.extend([image] * len(scores))
        box_arrays.append(boxes)
        score_arrays.append(scores)

    if not images:
        return empty_predictions()
    table = pd.DataFrame(np.concatenate(box_arrays), columns=BOX_COLUMNS)
    table.insert(0, "image", images)
    table.insert(0, "part", part)
    table["score"] = np.concatenate(score_arrays)
    return table


def predict_fold(
    predict: Predictor, fold: int, annotations: pd.DataFrame, evaluate_params: Mapping[str, Any],
    heldout_seconds: list[float] | None = None,
) -> pd.DataFrame:
    """Predict both parts of one fold; ``annotations`` is that fold's rows of the annotation table.

    When ``heldout_seconds`` is a list, the time of each held-out prediction but the fold's first
    is appended to it. The first call of a freshly loaded model is its warm-up (TensorFlow
    builds the graph then), so it is left out, as stages.baselines leaves out its warm-up call.
    NOTE: a Predictor takes an image path, so these times include reading and decoding the image.
    The baselines' times leave that out. Splitting the Predictor into read and detect would fix it.
    """
    frames = []
    for part in PARTS:
        seconds: list[float] = []
        frames.append(
            predict_images(
                predict,
                annotations[annotations["part"] == part],
                part,
                min_score=evaluate_params["ap_score_threshold"],
                max_detections=evaluate_params["max_detections"],
                description=f"fold {fold} {part}",
                seconds=seconds,
            )
        )
        if part == "heldout" and heldout_seconds is not None:
            heldout_seconds.extend(seconds[1:])
    return pd.concat(frames, ignore_index=True)


def timing_block(seconds: Sequence[float]) -> dict[str, Any]:
    """Summarize per-image prediction times: mean and median in milliseconds, and the number of timed images.

    The mean is the statistic that stages.baselines reports as ms_per_image. Both are None when
    no image was timed.
    """
    if not seconds:
        return {"ms_per_image_mean": None, "ms_per_image_median": None, "images": 0}
    milliseconds = 1000.0 * np.asarray(seconds, dtype=np.float64)
    return {"ms_per_image_mean": float(milliseconds.mean()), "ms_per_image_median": float(np.median(milliseconds)),
            "images": len(milliseconds)}


# --- Metrics -------------------------------------------------------------------------


def _image_keys(table: pd.DataFrame) -> list[tuple[int, str, str]]:
    rows = zip(table["fold"], table["part"], table["image"])
    return [(int(fold), str(part), str(image)) for fold, part, image in rows]


def group_face_boxes(keys: Sequence[Hashable], annotations: pd.DataFrame) -> dict[Hashable, np.ndarray]:
    """Group the face boxes of ``annotations`` by image, as ``metrics.summarize_fold`` takes them.

    ``keys`` gives the image of each row. Returns key -> (G, 4) boxes [x1, y1, x2, y2] in row
    order, in the order in which the keys first appear. The NaN row of a background image adds
    its key with a (0, 4) array.
    """
    truth: dict[Hashable, list[np.ndarray]] = {}
    boxes = annotations[BOX_COLUMNS].to_numpy(dtype=np.float64)
    for key, box in zip(keys, boxes):
        faces = truth.setdefault(key, [])
        if not np.isnan(box).any():
            faces.append(box)
    return {key: np.reshape(np.asarray(faces, dtype=np.float64), (-1, 4)) for key, faces in truth.items()}


def _ground_truth(annotations: pd.DataFrame) -> dict[Hashable, np.ndarray]:
    return group_face_boxes(_image_keys(annotations), annotations)


def _detections(predictions: pd.DataFrame) -> metrics.Detections:
    return metrics.Detections(
        tuple(_image_keys(predictions)),
        predictions[BOX_COLUMNS].to_numpy(dtype=np.float64),
        predictions["score"].to_numpy(dtype=np.float64),
    )


def summarize_images(
    annotations: pd.DataFrame, predictions: pd.DataFrame, evaluate_params: Mapping[str, Any]
) -> dict[str, Any]:
    """Compute ``metrics.summarize_fold`` for the images in ``annotations``, background images included.

    Both tables need a fold and a part column, so that one image evaluated by several
    fold models counts once per model.
    """
    return metrics.summarize_fold(
        _ground_truth(annotations),
        _detections(predictions),
        iou_score_threshold=evaluate_params["iou_score_threshold"],
        ap_score_threshold=evaluate_params["ap_score_threshold"],
    )


def _rows_of(table: pd.DataFrame, part: str, fold: int | None = None) -> pd.DataFrame:
    selected = table["part"] == part
    if fold is not None:
        selected &= table["fold"] == fold
    return table[selected]


def across_folds(fold_summaries: Sequence[Mapping[str, Any]], part: str) -> dict[str, dict[str, Any]]:
    """Aggregate each metric of ACROSS_FOLD_METRICS over the folds (``metrics.aggregate_folds``).

    Folds whose part had no images (null metrics) are left out, with a warning.
    """
    aggregated = {}
    for name in ACROSS_FOLD_METRICS:
        values = [summary[name] for summary in fold_summaries if summary[name] is not None]
        if len(values) < len(fold_summaries):
            logger.warning(
                "%s %s: %d of %d folds have no value and are left out of the across-fold statistics",
                part, name, len(fold_summaries) - len(values), len(fold_summaries),
            )  # fmt: skip
        aggregated[name] = metrics.aggregate_folds(values)
    return aggregated


def build_metrics_report(
    annotations: pd.DataFrame,
    predictions: pd.DataFrame,
    folds: Sequence[int],
    evaluate_params: Mapping[str, Any],
) -> dict[str, Any]:
    """Compute the heldout, train and folds blocks of the metrics JSON.

    ``annotations`` comes from ``read_split_annotations`` and ``predictions`` has one row per
    detection with columns fold, part, image, x1, y1, x2, y2 and score. A part is pooled over
    all folds: each held-out image counts once and each training image once per fold that
    trains on it, ranked together for AP although the detections come from different models.
    """
    fold_blocks: dict[str, dict[str, Any]] = {}
    fold_summaries: dict[str, list[dict[str, Any]]] = {part: [] for part in PARTS}
    for fold in folds:
        block: dict[str, Any] = {}
        for part in PARTS:
            rows = _rows_of(annotations, part, fold)
            summary = summarize_images(rows, _rows_of(predictions, part, fold), evaluate_params)
            _log_undefined_metrics(f"fold {fold} {part}", rows, summary)
            block[part] = summary
            fold_summaries[part].append(summary)

        heldout = _rows_of(annotations, "heldout", fold)
        block["test_persons"] = sorted(heldout["person"].unique().tolist())
        block["test_images"] = int(heldout["image"].nunique())
        fold_blocks[f"fold{fold}"] = block

    report: dict[str, Any] = {"folds": fold_blocks}
    for part in PARTS:
        rows = _rows_of(annotations, part)
        pooled = summarize_images(rows, _rows_of(predictions, part), evaluate_params)
        _log_undefined_metrics(f"{part} (all folds)", rows, pooled)
        pooled["across_folds"] = across_folds(fold_summaries[part], part)
        report[part] = pooled
    return report


def _log_undefined_metrics(name: str, rows: pd.DataFrame, summary: Mapping[str, Any]) -> None:
    """Log why a summary's metrics are null, naming the annotation files, and count background images."""
    files = ", ".join(sorted(rows["source"].unique())) if "source" in rows.columns else "its annotation file"
    if summary["images"] == 0:
        logger.warning("%s: no images in %s, so its metrics are null", name, files)
    elif summary["faces"] == 0:
        logger.warning(
            "%s: none of its %d images in %s has a face box, so IoU, AP, AP50:95 and recall are null "
            "(reported as null_reason in the metrics JSON)", name, summary["images"], files,
        )  # fmt: skip
    if summary["background_images"]:
        logger.info(
            "%s: %d of %d images are background images without faces. Their detections count as false "
            "positives for AP, and the images do not enter the IoU statistics",
            name, summary["background_images"], summary["images"],
        )  # fmt: skip


def dataset_block(annotations: pd.DataFrame, folds: Sequence[int], data_summary: Mapping[str, Any]) -> dict[str, Any]:
    """Describe the evaluated data: held-out images, image counts of the convert stage, folds and persons."""
    heldout = _rows_of(annotations, "heldout")
    return {
        "images": int(heldout["image"].nunique()),
        "faces": int(heldout["x1"].notna().sum()),
        "background_images": int(heldout.loc[heldout["x1"].isna(), "image"].nunique()),
        "images_annotated": data_summary["images_annotated"],
        "images_missing": data_summary["images_missing"],
        "folds": len(folds),
        "grouped_by": "person",
        "persons": int(annotations["person"].nunique()),
    }


def per_image_table(
    annotations: pd.DataFrame, predictions: pd.DataFrame, iou_score_threshold: float
) -> pd.DataFrame:
    """List each evaluated face with its best-matching detection (score >= ``iou_score_threshold``).

    Returns PER_IMAGE_COLUMNS, one row per face in the order of ``annotations``, so an image
    with several faces has several rows and a background image has none. Faces without such a
    detection get IoU 0 and empty score and pred_* cells.
    """
    predictions = predictions.reset_index(drop=True)
    matches = metrics.best_match_per_face(_ground_truth(annotations), _detections(predictions), iou_score_threshold)
    faces = annotations[annotations["x1"].notna()].reset_index(drop=True)
    # _ground_truth keeps each image's faces in row order, so this is each face's index in its image.
    face_index = faces.groupby(["fold", "part", "image"], sort=False).cumcount()
    face_matches = [matches[(key, int(index))] for key, index in zip(_image_keys(faces), face_index)]
    matched = predictions.reindex([-1 if row is None else row for row, _ in face_matches])

    table = faces[["fold", "part", "image", "person"]].copy()
    table["iou"] = [iou for _, iou in face_matches]
    table["score"] = matched["score"].to_numpy()
    for name in BOX_COLUMNS:
        table[f"gt_{name}"] = faces[name].to_numpy()
    for name in BOX_COLUMNS:
        table[f"pred_{name}"] = matched[name].to_numpy()
    return table[PER_IMAGE_COLUMNS]


def curve_point_indices(count: int, max_points: int = PR_CURVE_MAX_POINTS) -> np.ndarray:
    """Pick at most ``max_points`` evenly spaced indices of a curve of ``count`` points, first and last included."""
    if count <= max_points:
        return np.arange(count)
    return np.unique(np.round(np.linspace(0, count - 1, max_points)).astype(np.intp))


def pr_curve_table(
    annotations: pd.DataFrame, predictions: pd.DataFrame, folds: Sequence[int], ap_score_threshold: float
) -> pd.DataFrame:
    """Compute each fold's precision-recall curve per part at IoU 0.5, thinned by ``curve_point_indices``.

    Returns PR_CURVE_COLUMNS. A part without face boxes or without detections has no rows.
    """
    frames = []
    for fold in folds:
        for part in PARTS:
            truth = _ground_truth(_rows_of(annotations, part, fold))
            if not any(len(boxes) for boxes in truth.values()):
                continue
            ranked = _detections(_rows_of(predictions, part, fold)).with_min_score(ap_score_threshold)
            recall, precision, scores = metrics.precision_recall_curve(ranked, truth, metrics.VOC_IOU_THRESHOLD)
            keep = curve_point_indices(len(recall))
            # Scores go back to the predictor's float32 so the CSV shows 0.95, not 0.949999988.
            curve = {"recall": recall[keep], "precision": precision[keep], "score": scores[keep].astype(np.float32)}
            frames.append(pd.DataFrame({"fold": fold, "part": part, **curve}))
    if not frames:
        return pd.DataFrame(columns=PR_CURVE_COLUMNS)
    return pd.concat(frames, ignore_index=True)


def json_ready(value: Any, decimals: int = JSON_DECIMALS) -> Any:
    """Convert NumPy numbers to Python ones and round floats to ``decimals`` places, recursively.

    Raises:
        ValueError: for a NaN or infinite float, which JSON cannot represent.
    """
    if isinstance(value, Mapping):
        return {str(key): json_ready(item, decimals) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_ready(item, decimals) for item in value]
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise ValueError(f"cannot write the non-finite value {value} to JSON")
        return round(float(value), decimals)
    return value


# --- Output files --------------------------------------------------------------------


def _check_number(value: Any, source: str, key: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
        raise DataError(f"{source}: {key} is {value!r}, expected a number or null")


def _check_object(value: Any, source: str, key: str) -> dict:
    """Return ``value``, or {} for null; raise DataError naming ``key`` for any other non-object."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{source}: {key} is {json.dumps(value)}, expected a JSON object or null")
    return value


def _check_part_metrics(part: Any, source: str, key: str) -> None:
    for name, value in _check_object(part, source, key).items():
        if name == "null_reason":
            if value is not None and not isinstance(value, str):
                raise DataError(f"{source}: {key}.null_reason is {json.dumps(value)}, expected a string or null")
            continue
        if name != "across_folds":
            _check_number(value, source, f"{key}.{name}")
            continue
        for metric, statistics in _check_object(value, source, f"{key}.across_folds").items():
            for statistic, number in _check_object(statistics, source, f"{key}.across_folds.{metric}").items():
                _check_number(number, source, f"{key}.across_folds.{metric}.{statistic}")


def check_metrics_layout(report: Any, source: str) -> None:
    """Raise DataError naming ``source`` and the key where a metrics report departs from this stage's layout.

    The report must be a JSON object. ``heldout``, ``train``, ``folds``, each ``folds.fold<k>``
    and its ``heldout`` and ``train`` must be objects or null, and their metrics numbers or
    null. Null stands for a value that could not be computed, which readers show as n/a.
    A part's ``null_reason`` is a string that gives the reason, or null.
    """
    if not isinstance(report, dict):
        raise DataError(f"{source}: expected a JSON object, found {type(report).__name__}")
    _check_object(report.get("dataset"), source, "dataset")
    for key, value in _check_object(report.get("timing"), source, "timing").items():
        _check_number(value, source, f"timing.{key}")
    for part in PARTS:
        _check_part_metrics(report.get(part), source, part)
    for fold_name, fold in _check_object(report.get("folds"), source, "folds").items():
        fold = _check_object(fold, source, f"folds.{fold_name}")
        for part in PARTS:
            _check_part_metrics(fold.get(part), source, f"folds.{fold_name}.{part}")


def write_csv_atomic(table: pd.DataFrame, path: Path) -> None:
    """Write ``table`` to ``path`` as CSV with a header and no index, atomically."""
    write_text_atomic(path, table.to_csv(index=False))


def write_json_atomic(value: Any, path: Path) -> None:
    """Write ``value`` to ``path`` as indented JSON with sorted keys, atomically."""
    write_text_atomic(path, json.dumps(value, sort_keys=True, indent=2, allow_nan=False) + "\n")


def read_predictions(path: Path) -> pd.DataFrame:
    """Read a fold<k>.csv written by this stage: columns part, image, x1, y1, x2, y2, score (float32)."""
    dtypes = {"part": str, "image": str, **{name: np.float32 for name in [*BOX_COLUMNS, "score"]}}
    table = pd.read_csv(path, dtype=dtypes)
    if list(table.columns) != PREDICTION_COLUMNS:
        raise DataError(
            f"{path}: expected columns {','.join(PREDICTION_COLUMNS)}, got {','.join(map(str, table.columns))}"
        )
    return table


# --- Command line --------------------------------------------------------------------


def run(args: argparse.Namespace, load_predictor: PredictorLoader | None) -> None:
    """Evaluate every fold and write the predictions, metrics, per-image and curve files."""
    params = load_params(args.params, args.profile)
    evaluate_params = params["evaluate"]
    check_evaluate_params(evaluate_params, source=str(args.params))

    folds_table = read_folds_table(args.splits / "folds.csv")
    annotations = read_split_annotations(args.splits, folds_table, one_face_per_image=False)
    data_summary = read_data_summary(args.data_summary)
    folds = sorted(int(fold) for fold in folds_table["fold"].unique())
    if load_predictor is None:
        check_model_folders(args.models, folds)
        load_predictor = model_predictor_loader(args.models, params["detector"], evaluate_params)

    fold_predictions = []
    heldout_seconds: list[float] = []
    with atomic_directory(args.predictions) as staging:
        for fold in folds:
            logger.info("fold %d: loading the model", fold)
            predict = load_predictor(fold)
            predictions = predict_fold(predict, fold, annotations[annotations["fold"] == fold], evaluate_params,
                                       heldout_seconds)
            write_csv_atomic(predictions[PREDICTION_COLUMNS], staging / f"fold{fold}.csv")
            fold_predictions.append(predictions.assign(fold=fold))
    all_predictions = pd.concat(fold_predictions, ignore_index=True)

    report = build_metrics_report(annotations, all_predictions, folds, evaluate_params)
    report["profile"] = params["profile"]
    report["dataset"] = dataset_block(annotations, folds, data_summary)
    report["timing"] = timing_block(heldout_seconds)
    write_json_atomic(json_ready(report), args.metrics)
    per_image = per_image_table(annotations, all_predictions, evaluate_params["iou_score_threshold"])
    write_csv_atomic(per_image, args.per_image)
    curves = pr_curve_table(annotations, all_predictions, folds, evaluate_params["ap_score_threshold"])
    write_csv_atomic(curves, args.pr_curves)

    heldout = report["heldout"]
    logger.info(
        "held-out images: %d (%d faces, %d background images), mean IoU %s, AP50 %s, AP50:95 %s; wrote %s",
        heldout["images"], heldout["faces"], heldout["background_images"], heldout["mean_iou"], heldout["ap50"],
        heldout["ap50_95"], args.metrics,
    )  # fmt: skip


def main(argv: Sequence[str] | None = None, load_predictor: PredictorLoader | None = None) -> int:
    """Run the evaluate stage; return 0 on success and 1 on a known error.

    ``load_predictor`` replaces the trained models, for tests. By default each fold's model
    is loaded from ``--models`` through stages.detector.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(functools.partial(run, load_predictor=load_predictor), args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
