"""Evaluate the cross-validated happy / non-happy classifiers and the OpenCV smile-cascade baseline.

For each dataset (GENKI-4K crops and SMILEsmileD) and each fold k, the classifier trained
without fold k predicts P(happy) for the samples of fold k, so every sample is scored once,
by a model that never saw it. The Haar smile cascade of ``stages.smile_baseline`` scores the
same samples. It has no training, but when ``evaluate_classifier.haar_min_neighbors`` is null
its decision threshold is chosen on each fold's training part and applied to its test part.

Metrics (scikit-learn, happy = positive class): accuracy, balanced accuracy, ROC AUC, F1,
precision, recall and the confusion matrix. They are given pooled over all held-out
predictions ("heldout"), per fold ("per_fold"), and as a mean with a Student-t 95% confidence
interval across folds ("folds", via stages.metrics.aggregate_folds).

    python -m stages.evaluate_classifier --params params.yaml --profile P --splits data/smiles/splits \\
        --models data/models/classifier --metrics reports/metrics/classifier.json \\
        --predictions reports/classifier/predictions.csv
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import cv2
import numpy as np
import pandas as pd
from sklearn import metrics as skmetrics
from tqdm import tqdm

from stages import metrics, smile_baseline
from stages.cli import run_stage
from stages.errors import DataError, ModelError
from stages.evaluate_detector import json_ready, write_csv_atomic, write_json_atomic
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

DATASETS = ("genki4k", "smilesmiled")
SAMPLES_FILE = "samples.csv"
SAMPLE_COLUMNS = ("sample", "path", "label", "fold")
# Files of a trained classifier folder (see stages.classifier).
MODEL_FILES = ("model.json", "weights.h5")

PREDICTION_COLUMNS = [
    "dataset", "sample", "path", "fold", "label", "probability", "predicted", "haar_score", "haar_predicted",
]  # fmt: skip
# The headline metrics: logged, and shown first in the report.
MAIN_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1")
# Metrics summarized across folds with mean, SD and a 95% confidence interval.
ACROSS_FOLD_METRICS = ("accuracy", "balanced_accuracy", "roc_auc", "f1", "precision", "recall")
# Images per call of the classifier's predict_proba: bounds the decoded images held at once.
PREDICT_BATCH = 256
# Largest fold number accepted in samples.csv. It is far above any fold count of the
# pipeline and keeps inf or 1e30 from wrapping around in the conversion to int64.
MAX_FOLD = 2**31 - 1


class ProbabilityModel(Protocol):
    """Anything with stages.classifier.Classifier's predict_proba."""

    def predict_proba(self, images: Sequence[np.ndarray]) -> np.ndarray: ...


# Returns the classifier stored in a model folder.
ModelLoader = Callable[[Path], ProbabilityModel]


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the evaluate_classifier stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.evaluate_classifier",
        description="Score each fold's held-out smile samples with its classifier and with the Haar smile "
        "cascade, and report accuracy, balanced accuracy, ROC AUC and F1.",
    )
    add_params_arguments(parser)
    options = {
        "--splits": "folder with <dataset>/samples.csv for genki4k and smilesmiled",
        "--models": "folder with <dataset>/fold<k>/ classifier folders (model.json, weights.h5)",
        "--metrics": "output JSON with pooled, per-fold and across-fold metrics",
        "--predictions": "output CSV with the probability and Haar score of every held-out sample",
    }
    for option, help_text in options.items():
        parser.add_argument(option, type=Path, required=True, help=help_text)
    return parser


# --- Input files ---------------------------------------------------------------------


def read_samples(path: Path) -> pd.DataFrame:
    """Read a dataset's samples.csv and check columns sample, path, label (0 or 1) and fold (>= 0).

    Raises:
        DataError: naming the file, and the line where one applies, for a missing file or
            column, an empty table, a label other than 0 or 1, a negative or non-integer fold,
            an empty path or a repeated sample id.
    """
    if not path.is_file():
        raise DataError(f"{path}: file not found; run the split_smiles stage first")
    try:
        # Labels and folds are read as text, so an error shows them as the file spells them.
        # Blank lines are read as empty rows and dropped below, so that errors give true line numbers.
        table = pd.read_csv(path, dtype={"sample": str, "path": str, "label": str, "fold": str},
                            skip_blank_lines=False, encoding="utf-8")
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: invalid CSV: {error}") from None
    except UnicodeDecodeError as error:
        raise DataError(f"{path}: not UTF-8 text ({error})") from None

    missing = [column for column in SAMPLE_COLUMNS if column not in table.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected at least {', '.join(SAMPLE_COLUMNS)}")
    blank = table.isna().all(axis=1).to_numpy()
    lines = np.arange(len(table))[~blank] + 2
    table = table[~blank].reset_index(drop=True)
    if table.empty:
        raise DataError(f"{path}: no samples listed; rerun the split_smiles stage")

    for column, allowed in (("label", "0 or 1"), ("fold", f"a whole number from 0 to {MAX_FOLD}")):
        values = pd.to_numeric(table[column], errors="coerce")
        if column == "label":
            valid = values.isin([0, 1])
        else:
            valid = (values >= 0) & (values <= MAX_FOLD) & (values == values.round())
        if not valid.all():
            row = int(np.flatnonzero(~valid.to_numpy())[0])
            raise DataError(f"{path}: line {lines[row]}: {column} is {table[column].iloc[row]!r}, expected {allowed}")
        table[column] = values.astype(np.int64)

    empty = table["sample"].isna() | table["path"].isna()
    if empty.any():
        raise DataError(f"{path}: line {lines[int(np.flatnonzero(empty.to_numpy())[0])]}: empty sample or path")
    repeated = table["sample"].duplicated()
    if repeated.any():
        row = int(np.flatnonzero(repeated.to_numpy())[0])
        raise DataError(f"{path}: line {lines[row]}: sample {table['sample'].iloc[row]!r} is listed more than once")
    return table


def dataset_folds(samples: pd.DataFrame) -> list[int]:
    """Return the sorted fold numbers that ``samples`` uses."""
    return sorted(int(fold) for fold in samples["fold"].unique())


def check_model_folders(models_dir: Path, folds: Sequence[int]) -> None:
    """Raise ModelError unless ``models_dir/fold<k>`` contains model.json and weights.h5 for every fold.

    Runs before TensorFlow starts, so a missing fold stops the stage before any prediction.
    """
    missing = [
        str(models_dir / f"fold{fold}" / name)
        for fold in folds
        for name in MODEL_FILES
        if not (models_dir / f"fold{fold}" / name).is_file()
    ]
    if missing:
        raise ModelError(
            f"classifier model file(s) not found: {', '.join(missing)}; samples.csv lists folds "
            f"{', '.join(map(str, folds))}, so train every fold first (python -m stages.train_classifier)"
        )


def read_crop(path: Path) -> np.ndarray:
    """Read a crop as uint8 grayscale (H, W) or BGR (H, W, 3), as OpenCV decodes it."""
    image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if image is None:
        raise DataError(f"{path}: image not found or not readable")
    if image.dtype != np.uint8:
        raise DataError(f"{path}: expected an 8-bit image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 4:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    return image


def default_model_loader() -> ModelLoader:
    """Return stages.classifier.load_classifier, imported only now because it starts TensorFlow."""
    from stages import classifier

    return classifier.load_classifier


# --- Metrics -------------------------------------------------------------------------


def _rounded(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _defined(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


def classification_metrics(labels: Sequence[int], scores: Sequence[float], predicted: Sequence[int]) -> dict[str, Any]:
    """Compute the metrics of binary predictions, with happy (label 1) as the positive class.

    Args:
        labels: (N,) true labels, 0 or 1.
        scores: (N,) continuous scores for ROC AUC, higher meaning more likely happy.
        predicted: (N,) predicted labels, 0 or 1.

    Returns:
        n, positives, prevalence (positives / n), accuracy, balanced_accuracy (mean of the
        recalls of both classes), roc_auc, f1, precision, recall, tn, fp, fn, tp. A metric
        that is undefined for these samples is None: balanced accuracy and ROC AUC when one
        class is absent, recall without positives, precision without predicted positives, F1
        when there are neither. With N = 0 every metric is None.
    """
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    predicted = np.asarray(predicted, dtype=np.int64).reshape(-1)
    if not len(labels) == len(scores) == len(predicted):
        raise ValueError(f"labels, scores and predictions differ in length: {len(labels)}, {len(scores)}, "
                         f"{len(predicted)}")
    count = len(labels)
    names = ("prevalence", "accuracy", "balanced_accuracy", "roc_auc", "f1", "precision", "recall",
             "tn", "fp", "fn", "tp")
    if count == 0:
        return {"n": 0, "positives": 0, **{name: None for name in names}}

    positives = int(labels.sum())
    tn, fp, fn, tp = (int(value) for value in skmetrics.confusion_matrix(labels, predicted, labels=[0, 1]).ravel())
    both_classes = 0 < positives < count
    return {
        "n": count,
        "positives": positives,
        "prevalence": positives / count,
        "accuracy": float(skmetrics.accuracy_score(labels, predicted)),
        "balanced_accuracy": float(skmetrics.balanced_accuracy_score(labels, predicted)) if both_classes else None,
        "roc_auc": float(skmetrics.roc_auc_score(labels, scores)) if both_classes else None,
        "f1": _defined(skmetrics.f1_score(labels, predicted, labels=[0, 1], zero_division=np.nan)),
        "precision": _defined(skmetrics.precision_score(labels, predicted, labels=[0, 1], zero_division=np.nan)),
        "recall": _defined(skmetrics.recall_score(labels, predicted, labels=[0, 1], zero_division=np.nan)),
        "tn": tn,
        "fp": fp,
        "fn": fn,
        "tp": tp,
    }


def across_folds(per_fold: Sequence[Mapping[str, Any]], description: str) -> dict[str, dict[str, Any]]:
    """Aggregate ACROSS_FOLD_METRICS over folds with ``metrics.aggregate_folds``.

    Folds where a metric is None are left out of that metric's statistics, with a warning.
    """
    aggregated = {}
    for name in ACROSS_FOLD_METRICS:
        values = [fold[name] for fold in per_fold if fold[name] is not None]
        if len(values) < len(per_fold):
            logger.warning("%s %s: %d of %d folds have no value and are left out of the across-fold statistics",
                           description, name, len(per_fold) - len(values), len(per_fold))
        aggregated[name] = metrics.aggregate_folds(values)
    return aggregated


def warn_undefined(block: Mapping[str, Any], description: str) -> None:
    """Log a warning for each metric of ``block`` that is None although samples exist."""
    if block["n"] == 0:
        logger.warning("%s: no samples, so every metric is null", description)
        return
    if block["roc_auc"] is None:
        logger.warning("%s: only one class among %d samples (%d happy), so ROC AUC and balanced accuracy are null",
                       description, block["n"], block["positives"])


def metric_blocks(table: pd.DataFrame, folds: Sequence[int], score: str, decision: str,
                  description: str) -> dict[str, Any]:
    """Compute heldout (pooled), folds (across-fold statistics) and per_fold for one scorer.

    ``table`` has columns fold, label, and the ``score`` and ``decision`` columns of that scorer.
    """
    per_fold = []
    for fold in folds:
        rows = table[table["fold"] == fold]
        block = classification_metrics(rows["label"], rows[score], rows[decision])
        warn_undefined(block, f"{description} fold {fold}")
        per_fold.append({"fold": fold, **block})
    pooled = classification_metrics(table["label"], table[score], table[decision])
    warn_undefined(pooled, f"{description} pooled")
    return {"heldout": pooled, "folds": across_folds(per_fold, description), "per_fold": per_fold}


# --- Prediction ----------------------------------------------------------------------


def check_probabilities(values: Any, count: int, source: str) -> np.ndarray:
    """Return ``values`` as float64 (count,), or raise ModelError unless they are finite numbers in [0, 1]."""
    array = np.asarray(values, dtype=np.float64)
    if array.shape != (count,):
        raise ModelError(f"{source}: predict_proba returned shape {array.shape} for {count} images, expected ({count},)")
    if not np.isfinite(array).all() or (array < 0).any() or (array > 1).any():
        raise ModelError(f"{source}: predict_proba returned values outside [0, 1], e.g. "
                         f"{array[~((array >= 0) & (array <= 1))][:3].tolist()}")
    return array


def score_fold(model: ProbabilityModel, cascade, rows: pd.DataFrame, sample_dir: Path, scale_factor: float,
               description: str) -> tuple[np.ndarray, np.ndarray]:
    """Return the classifier's P(happy) and the Haar smile score of each sample in ``rows``.

    Images are read from ``sample_dir / path`` in batches of PREDICT_BATCH.
    """
    probabilities = np.zeros(len(rows), dtype=np.float64)
    haar_scores = np.zeros(len(rows), dtype=np.int64)
    paths = rows["path"].tolist()
    with tqdm(total=len(paths), desc=description, unit="sample") as bar:
        for start in range(0, len(paths), PREDICT_BATCH):
            images = [read_crop(sample_dir / path) for path in paths[start:start + PREDICT_BATCH]]
            batch = slice(start, start + len(images))
            probabilities[batch] = check_probabilities(model.predict_proba(images), len(images), description)
            haar_scores[batch] = smile_baseline.smile_scores(cascade, images, scale_factor)
            bar.update(len(images))
    return probabilities, haar_scores


def haar_decisions(table: pd.DataFrame, folds: Sequence[int], min_neighbors: int | None,
                   description: str) -> dict[int, int]:
    """Return the ``min_neighbors`` of each fold and fill table["haar_predicted"] in place.

    A fixed ``min_neighbors`` applies to every fold. With None it is chosen per fold on that
    fold's training part (the samples of the other folds), by balanced accuracy, and applied
    to the fold's test part.
    """
    chosen = {}
    for fold in folds:
        if min_neighbors is not None:
            chosen[fold] = min_neighbors
        else:
            training = table[table["fold"] != fold]
            if training.empty:
                raise DataError(f"{description} fold {fold}: no training samples to choose the Haar min_neighbors "
                                "on; set evaluate_classifier.haar_min_neighbors or use at least two folds")
            if training["label"].nunique() < 2:
                logger.warning("%s fold %d: the training part has only label %d, so the Haar min_neighbors is "
                               "chosen by plain accuracy", description, fold, int(training["label"].iloc[0]))
            chosen[fold] = smile_baseline.choose_min_neighbors(training["haar_score"], training["label"])
            logger.info("%s fold %d: Haar min_neighbors %d, chosen on the training part", description, fold,
                        chosen[fold])
        test = table["fold"] == fold
        table.loc[test, "haar_predicted"] = smile_baseline.predict_smiles(table.loc[test, "haar_score"], chosen[fold])
    table["haar_predicted"] = table["haar_predicted"].astype(np.int64)
    return chosen


def predict_dataset(name: str, samples: pd.DataFrame, sample_dir: Path, models_dir: Path,
                    load_model: ModelLoader, settings: Mapping[str, Any]) -> pd.DataFrame:
    """Score every sample with its fold's classifier and the Haar cascade; return PREDICTION_COLUMNS."""
    cascade = smile_baseline.load_smile_cascade()
    frames = []
    for fold in dataset_folds(samples):
        model_dir = models_dir / f"fold{fold}"
        logger.info("%s fold %d: loading %s", name, fold, model_dir)
        model = load_model(model_dir)
        rows = samples[samples["fold"] == fold]
        probabilities, haar_scores = score_fold(model, cascade, rows, sample_dir, settings["haar_scale_factor"],
                                                f"{name} fold {fold}")
        frame = rows[["sample", "path", "fold", "label"]].copy()
        frame["probability"] = probabilities
        frame["predicted"] = (probabilities >= settings["threshold"]).astype(np.int64)
        frame["haar_score"] = haar_scores
        frame["haar_predicted"] = 0
        frames.append(frame)
        del model
    table = pd.concat(frames, ignore_index=True)
    table.insert(0, "dataset", name)
    return table


def dataset_report(name: str, table: pd.DataFrame, settings: Mapping[str, Any]) -> dict[str, Any]:
    """Build the metrics block of one dataset, filling table["haar_predicted"] on the way."""
    folds = sorted(int(fold) for fold in table["fold"].unique())
    positives = int(table["label"].sum())
    if positives in (0, len(table)):
        logger.warning("%s: all %d samples have label %d", name, len(table), int(table["label"].iloc[0]))
    logger.info("%s: %d samples, %d happy (%.1f%%), %d folds", name, len(table), positives,
                100.0 * positives / len(table), len(folds))

    min_neighbors = haar_decisions(table, folds, settings["haar_min_neighbors"], name)
    model_blocks = metric_blocks(table, folds, "probability", "predicted", f"{name} classifier")
    haar_blocks = metric_blocks(table, folds, "haar_score", "haar_predicted", f"{name} Haar")
    for entry in haar_blocks["per_fold"]:
        entry["min_neighbors"] = min_neighbors[entry["fold"]]
    return {
        "dataset": {
            "samples": len(table),
            "positives": positives,
            "negatives": len(table) - positives,
            "prevalence": positives / len(table),
            "folds": len(folds),
        },
        "threshold": settings["threshold"],
        **model_blocks,
        "haar": {"min_neighbors_tuned": settings["haar_min_neighbors"] is None,
                 "scale_factor": settings["haar_scale_factor"], **haar_blocks},
    }


# --- Output layout -------------------------------------------------------------------


def _object_or_empty(value: Any, source: str, key: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise DataError(f"{source}: {key} is {value!r}, expected a JSON object or null")
    return value


def _check_numbers(block: Any, source: str, key: str) -> None:
    for name, value in _object_or_empty(block, source, key).items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise DataError(f"{source}: {key}.{name} is {value!r}, expected a number or null")


def check_classifier_layout(report: Any, source: str) -> None:
    """Raise DataError naming ``source`` and the key where a classifier.json departs from this stage's layout.

    Each dataset block, its ``heldout``, ``folds``, ``haar``, ``haar.heldout`` and
    ``haar.folds`` must be objects or null; metrics and fold statistics must be numbers or
    null. Null stands for a value that could not be computed.
    """
    if not isinstance(report, dict):
        raise DataError(f"{source}: expected a JSON object, found {type(report).__name__}")
    for name in DATASETS:
        block = _object_or_empty(report.get(name), source, name)
        haar = _object_or_empty(block.get("haar"), source, f"{name}.haar")
        for prefix, scorer in ((name, block), (f"{name}.haar", haar)):
            _check_numbers(scorer.get("heldout"), source, f"{prefix}.heldout")
            for metric, statistics in _object_or_empty(scorer.get("folds"), source, f"{prefix}.folds").items():
                _check_numbers(statistics, source, f"{prefix}.folds.{metric}")


# --- Command line --------------------------------------------------------------------


def run(args: argparse.Namespace, load_model: ModelLoader | None) -> None:
    """Evaluate both datasets and write the metrics JSON and the predictions CSV."""
    params = load_params(args.params, args.profile)
    settings = params["evaluate_classifier"]

    samples = {name: read_samples(args.splits / name / SAMPLES_FILE) for name in DATASETS}
    for name, table in samples.items():
        check_model_folders(args.models / name, dataset_folds(table))
    if load_model is None:
        load_model = default_model_loader()

    report: dict[str, Any] = {"profile": params["profile"]}
    tables = []
    for name in DATASETS:
        table = predict_dataset(name, samples[name], args.splits / name, args.models / name, load_model, settings)
        report[name] = dataset_report(name, table, settings)
        tables.append(table)

    write_json_atomic(json_ready(report), args.metrics)
    write_csv_atomic(pd.concat(tables, ignore_index=True)[PREDICTION_COLUMNS], args.predictions)
    for name in DATASETS:
        model, haar = report[name]["heldout"], report[name]["haar"]["heldout"]
        logger.info("%s held-out: accuracy %s, balanced accuracy %s, ROC AUC %s, F1 %s; Haar baseline: accuracy %s, "
                    "balanced accuracy %s, ROC AUC %s", name, *(_rounded(model[key]) for key in MAIN_METRICS),
                    *(_rounded(haar[key]) for key in MAIN_METRICS[:3]))
    logger.info("wrote %s and %s", args.metrics, args.predictions)


def main(argv: Sequence[str] | None = None, load_model: ModelLoader | None = None) -> int:
    """Run the evaluate_classifier stage; return 0 on success and 1 on a known error.

    ``load_model`` replaces stages.classifier.load_classifier, for tests.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(lambda parsed: run(parsed, load_model), args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
