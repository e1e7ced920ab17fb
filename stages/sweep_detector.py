"""Train and evaluate the detector with one focal-loss setting on every cross-validation fold.

One cell of the focal-loss sweep (params section ``focal_sweep``): the detector settings of
params.yaml with ``detector.focal`` replaced by ``--gamma`` and ``--alpha`` and
``detector.epochs`` by ``focal_sweep.epochs``. It trains one model per fold, resumably as
stages.train_detector does, then scores the held-out and training images of each fold as
stages.evaluate_detector does. It writes

- ``<out>/models/fold{k}/``, ``<out>/curves/fold{k}-{steps,epochs}.csv`` and
  ``<out>/predictions/fold{k}.csv``, published together as one folder;
- ``--metrics``: a JSON file in the layout of reports/metrics/detector.json with an extra
  ``setting`` block (gamma, alpha, epochs), which stages.focal_sweep gathers.

    python -m stages.sweep_detector --params params.yaml --gamma 0.5 --alpha 0.25 \\
        --splits data/splits --classes data/interim/classes.csv \\
        --data-summary reports/metrics/data.json --out data/sweep/gamma0.5-alpha0.25 \\
        --metrics reports/sweep/gamma0.5-alpha0.25.json
"""

from __future__ import annotations

import argparse
import copy
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from stages import evaluate_detector, train_detector
from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.download import MIRROR_ENV, resolve_mirror_root
from stages.errors import DataError, TrainingError
from stages.params import add_params_arguments, load_params, validate_params

log = logging.getLogger(__name__)


def sweep_detector_params(params: dict, gamma: float, alpha: float, source: str) -> dict:
    """Return the detector settings of one sweep cell, checked against the schema.

    ``params`` is the output of load_params; the copy gets ``focal`` = (gamma, alpha) and the
    sweep's epoch count (``focal_sweep.epochs``; null keeps ``detector.epochs``).
    """
    checked = copy.deepcopy(params)
    detector = checked["detector"]
    detector["focal"] = {"gamma": gamma, "alpha": alpha}
    epochs = params["focal_sweep"]["epochs"]
    if epochs is not None:
        detector["epochs"] = epochs
    validate_params(checked, source=f"{source} with --gamma {gamma} --alpha {alpha}")
    return detector


def limit_threads(threads: int) -> None:
    """Let TensorFlow use ``threads`` CPU threads (0 keeps its default: all cores).

    On a 2-core CPU two one-thread cells side by side trained about 1.6 times as many steps per
    second as one two-thread cell (benchmarks/README.md); Snakemake runs them side by side.
    """
    if threads == 0:
        return
    import tensorflow as tf

    try:
        tf.config.threading.set_intra_op_parallelism_threads(threads)
        tf.config.threading.set_inter_op_parallelism_threads(threads)
    except RuntimeError as error:
        # TensorFlow fixes its thread pools when it runs its first operation.
        raise TrainingError(f"focal_sweep.threads is {threads}, but TensorFlow has already started in this process "
                            f"({error}); run the cell in a new process or set focal_sweep.threads to 0") from error


@dataclass(frozen=True)
class EvaluationInputs:
    """The checked split and convert-stage files that a sweep cell is scored on."""

    annotations: pd.DataFrame
    folds: list[int]
    data_summary: dict[str, Any]


def read_evaluation_inputs(splits_dir: Path, data_summary_path: Path, evaluate_params: dict,
                           training_folds: list[train_detector.FoldData]) -> EvaluationInputs:
    """Read and check folds.csv, every fold's test.csv and train.csv, and data.json.

    It runs before training, so a damaged split folder fails the cell before hours of training.
    Raises DataError when the folds that have a train.csv differ from the folds of folds.csv.
    """
    evaluate_detector.check_evaluate_params(evaluate_params)
    folds_table = evaluate_detector.read_folds_table(splits_dir / "folds.csv")
    annotations = evaluate_detector.read_split_annotations(splits_dir, folds_table, one_face_per_image=False)
    data_summary = evaluate_detector.read_data_summary(data_summary_path)
    folds = sorted(int(fold) for fold in folds_table["fold"].unique())
    trained = [fold.index for fold in training_folds]
    if trained != folds:
        raise DataError(f"{splits_dir}: fold*/train.csv exists for folds {trained}, but folds.csv lists folds "
                        f"{folds}; rerun the split stage")
    return EvaluationInputs(annotations, folds, data_summary)


def evaluate_models(models_dir: Path, inputs: EvaluationInputs, params: dict, detector_params: dict,
                    predictions_dir: Path) -> dict[str, Any]:
    """Score every fold's model on its held-out and training images; return the metrics report."""
    evaluate_params = params["evaluate"]
    annotations, folds = inputs.annotations, inputs.folds
    evaluate_detector.check_model_folders(models_dir, folds)
    load_predictor = evaluate_detector.model_predictor_loader(models_dir, detector_params, evaluate_params)

    predictions_dir.mkdir(parents=True, exist_ok=True)
    fold_predictions = []
    for fold in folds:
        predict = load_predictor(fold)
        predictions = evaluate_detector.predict_fold(
            predict, fold, annotations[annotations["fold"] == fold], evaluate_params)
        evaluate_detector.write_csv_atomic(
            predictions[evaluate_detector.PREDICTION_COLUMNS], predictions_dir / f"fold{fold}.csv")
        fold_predictions.append(predictions.assign(fold=fold))
    all_predictions = pd.concat(fold_predictions, ignore_index=True)

    report = evaluate_detector.build_metrics_report(annotations, all_predictions, folds, evaluate_params)
    report["profile"] = params["profile"]
    report["dataset"] = evaluate_detector.dataset_block(annotations, folds, inputs.data_summary)
    return report


def _is_same_or_inside(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def _file_among_parents(path: Path) -> Path | None:
    """Return the nearest existing parent of ``path`` when it is a file, which blocks creating ``path``."""
    for parent in path.resolve().parents:
        if parent.exists():
            return None if parent.is_dir() else parent
    return None


def output_path_problem(args: argparse.Namespace) -> str | None:
    """Return why the output paths of the command would fail or overwrite an input, or None when they are fine.

    ``--out`` is replaced as a whole when the cell finishes, so it must not be, contain or lie
    inside the split folder, and must not contain the other inputs, the metrics file or the
    checkpoints. ``--metrics`` must not be a folder, and no output may lie below a file, because
    these would fail only after training.
    """
    out = args.out.resolve()
    splits = args.splits.resolve()
    if _is_same_or_inside(out, splits) or _is_same_or_inside(splits, out):
        return f"--out {args.out} overlaps --splits {args.splits}; --out is replaced as a whole, so choose a separate folder"
    for option, path in (("--classes", args.classes), ("--data-summary", args.data_summary),
                         ("--metrics", args.metrics), ("--checkpoints", args.checkpoints)):
        if _is_same_or_inside(path.resolve(), out):
            return f"{option} {path} is inside --out {args.out}, which is replaced as a whole; choose a path outside it"
    if args.metrics.is_dir():
        return f"--metrics {args.metrics} is a folder; expected the path of a JSON file"
    for option, path in (("--out", args.out), ("--metrics", args.metrics), ("--checkpoints", args.checkpoints)):
        blocking = _file_among_parents(path)
        if blocking is not None:
            return f"{option} {path} cannot be created because {blocking} is a file, not a folder"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.sweep_detector", description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    parser.add_argument("--gamma", type=float, required=True, help="focal loss gamma of this cell")
    parser.add_argument("--alpha", type=float, required=True, help="focal loss alpha of this cell")
    parser.add_argument("--splits", type=Path, required=True, help="split folder with folds.csv and fold*/")
    parser.add_argument("--classes", type=Path, required=True, help="keras-retinanet class mapping CSV")
    parser.add_argument("--data-summary", type=Path, required=True, help="data.json of the convert stage")
    parser.add_argument("--out", type=Path, required=True, help="folder for models, curves and predictions")
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON of this cell")
    parser.add_argument("--checkpoints", type=Path, default=Path("data/checkpoints/sweep"),
                        help="folder for resumable checkpoints (default: data/checkpoints/sweep)")
    parser.add_argument("--mirror", type=Path, default=None,
                        help=f"local mirror folder with keras-weights/ (default: ${MIRROR_ENV} if set)")
    return parser


def run(args: argparse.Namespace) -> None:
    """Train and evaluate one sweep cell with the settings and paths in ``args``."""
    mirror = resolve_mirror_root(args.mirror, os.environ)
    params = load_params(args.params, args.profile)
    detector_params = sweep_detector_params(params, args.gamma, args.alpha, str(args.params))
    folds = train_detector.find_folds(args.splits)
    inputs = read_evaluation_inputs(args.splits, args.data_summary, params["evaluate"], folds)
    if not args.classes.is_file():
        raise DataError(f"{args.classes}: file not found; run the convert stage first")
    limit_threads(params["focal_sweep"]["threads"])
    name = f"gamma {args.gamma:g}, alpha {args.alpha:g}"
    log.info("%s: %d folds, %d epochs each", name, len(folds), detector_params["epochs"])

    with atomic_directory(args.out) as staging:
        train_detector.train_all(folds, args.classes, detector_params, mirror, args.checkpoints,
                                 staging / "models", staging / "curves")
        report = evaluate_models(staging / "models", inputs, params, detector_params, staging / "predictions")
        report["setting"] = {"gamma": args.gamma, "alpha": args.alpha, "epochs": detector_params["epochs"]}
        report = evaluate_detector.json_ready(report)
    # The metrics file is written only after --out is in place, so it never describes models
    # that were not published.
    evaluate_detector.write_json_atomic(report, args.metrics)

    heldout = report["heldout"]
    log.info("%s: held-out mean IoU %s, AP50 %s, AP50:95 %s; train mean IoU %s; wrote %s", name,
             heldout["mean_iou"], heldout["ap50"], heldout["ap50_95"], report["train"]["mean_iou"], args.metrics)


def main(argv: list[str] | None = None) -> int:
    """Run one sweep cell; return 0 on success and 1 on a known error. Invalid paths exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = output_path_problem(args)
    if problem is not None:
        parser.error(problem)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
