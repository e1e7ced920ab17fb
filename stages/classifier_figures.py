"""Draw the classifier figures: ROC curves, confusion matrices, example crops and training curves.

Reads the outputs of stages.evaluate_classifier (classifier.json, predictions.csv), the
per-epoch training curves of stages.train_classifier and the face crops, and writes one
folder of PNGs to ``--out`` in one atomic step. From params.yaml it reads
``evaluate_classifier.example_crops`` and ``evaluate_classifier.threshold``.

    python -m stages.classifier_figures --params params.yaml --profile P \\
        --metrics reports/metrics/classifier.json --predictions reports/classifier/predictions.csv \\
        --training reports/training/classifier --splits data/smiles/splits --out reports/classifier/figures
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from sklearn import metrics as skmetrics  # noqa: E402

from stages.atomic import atomic_directory  # noqa: E402
from stages.cli import run_stage  # noqa: E402
from stages.errors import DataError  # noqa: E402
from stages.evaluate_classifier import DATASETS, PREDICTION_COLUMNS, read_crop  # noqa: E402
from stages.evaluate_detector import read_json_object  # noqa: E402
from stages.figures import PALETTE, fold_colour, format_metric, read_csv, save_figure, styled  # noqa: E402
from stages.params import add_params_arguments, load_params  # noqa: E402

log = logging.getLogger(__name__)

ROC_PNG = "roc_curves.png"
CONFUSION_PNG = "confusion_matrices.png"
TRAINING_PNG = "classifier_training.png"
EXAMPLES_PNG = "examples_{dataset}.png"

DATASET_TITLES = {"genki4k": "GENKI-4K", "smilesmiled": "SMILEsmileD"}
CLASS_LABELS = ("not happy", "happy")
MODEL_COLOUR = PALETTE[0]
HAAR_COLOUR = PALETTE[3]
CORRECT_COLOUR = "#009E73"
WRONG_COLOUR = "#D55E00"
TRAINING_COLUMNS = ("epoch", "loss", "accuracy")
# Crops per row of the example figure.
EXAMPLE_COLUMNS = 8


def dataset_title(name: str) -> str:
    return DATASET_TITLES.get(name, name)


def roc_points(labels: pd.Series, scores: pd.Series) -> tuple[np.ndarray, np.ndarray] | None:
    """Return (false positive rate, true positive rate) of the ROC curve, or None with one class."""
    if labels.nunique() < 2:
        return None
    fpr, tpr, _ = skmetrics.roc_curve(labels, scores)
    return fpr, tpr


def operating_point(rows: pd.DataFrame, decision: str) -> tuple[float, float] | None:
    """Return (false positive rate, true positive rate) of the binary decision column, or None with one class."""
    positives, negatives = rows["label"] == 1, rows["label"] == 0
    if not positives.any() or not negatives.any():
        return None
    return float(rows.loc[negatives, decision].mean()), float(rows.loc[positives, decision].mean())


def _draw_roc_panel(ax, rows: pd.DataFrame, block: Mapping) -> None:
    for index, (fold, fold_rows) in enumerate(rows.groupby("fold", sort=True)):
        points = roc_points(fold_rows["label"], fold_rows["probability"])
        if points is not None:
            ax.plot(*points, color=MODEL_COLOUR, alpha=0.25, linewidth=0.9,
                    label="classifier, single folds" if index == 0 else None)
    scorers = (("probability", "predicted", "classifier", block, MODEL_COLOUR, "-"),
               ("haar_score", "haar_predicted", "Haar smile cascade", block.get("haar") or {}, HAAR_COLOUR, "--"))
    for score, decision, name, metrics, colour, style in scorers:
        points = roc_points(rows["label"], rows[score])
        auc = format_metric(((metrics.get("heldout") or {}).get("roc_auc")))
        if points is not None:
            ax.plot(*points, color=colour, linestyle=style, linewidth=2.0, label=f"{name} (AUC {auc})")
        point = operating_point(rows, decision)
        if point is not None:
            ax.plot(*point, marker="o", markersize=7, color=colour, markeredgecolor="white", linestyle="none")
    ax.plot([0, 1], [0, 1], color="0.6", linestyle=":", linewidth=1.0, label="chance")
    ax.set_xlim(-0.01, 1.01)
    ax.set_ylim(-0.01, 1.01)
    ax.set_aspect("equal")
    ax.set_xlabel("False positive rate (not happy called happy)")
    ax.set_ylabel("True positive rate (happy found)")
    ax.legend(loc="lower right")


@styled
def plot_roc_curves(predictions: pd.DataFrame, report: Mapping) -> Figure:
    """Draw the pooled held-out ROC curve of the classifier and the Haar baseline, one panel per dataset.

    Faint lines are the classifier's single folds; dots mark the decisions actually made
    (the probability threshold and the Haar min_neighbors). The AUCs come from ``report``.
    """
    names = [name for name in DATASETS if name in set(predictions["dataset"])]
    fig = Figure(figsize=(4.1 * max(len(names), 1), 4.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, max(len(names), 1), squeeze=False)).ravel()
    for ax, name in zip(axes, names):
        rows = predictions[predictions["dataset"] == name]
        _draw_roc_panel(ax, rows, report.get(name) or {})
        ax.set_title(f"{dataset_title(name)}: {len(rows)} held-out crops")
    fig.suptitle("ROC curves on held-out crops (dots: the decisions made)")
    return fig


def confusion_counts(rows: pd.DataFrame, decision: str) -> np.ndarray:
    """Return the 2 x 2 confusion matrix (rows: true label 0, 1; columns: predicted 0, 1)."""
    return skmetrics.confusion_matrix(rows["label"], rows[decision], labels=[0, 1])


def _draw_confusion(ax, counts: np.ndarray, title: str) -> None:
    totals = counts.sum(axis=1, keepdims=True)
    shares = np.divide(counts, totals, out=np.zeros_like(counts, dtype=float), where=totals > 0)
    ax.imshow(shares, cmap="Blues", vmin=0.0, vmax=1.0)
    for (row, column), count in np.ndenumerate(counts):
        colour = "white" if shares[row, column] > 0.6 else "black"
        ax.text(column, row, f"{shares[row, column]:.1%}\n({count})", ha="center", va="center", color=colour,
                fontsize=10)
    ax.set_xticks([0, 1], CLASS_LABELS)
    ax.set_yticks([0, 1], CLASS_LABELS)
    ax.set_xlabel("Predicted")
    ax.set_ylabel("True")
    ax.set_title(title)
    ax.grid(False)


@styled
def plot_confusion_matrices(predictions: pd.DataFrame) -> Figure:
    """Draw the pooled held-out confusion matrices: one row per dataset, classifier and Haar side by side.

    Cells show the share of the true class (row-normalized) and the count in brackets.
    """
    names = [name for name in DATASETS if name in set(predictions["dataset"])]
    fig = Figure(figsize=(7.6, 3.5 * max(len(names), 1) + 0.5), layout="constrained")
    axes = fig.subplots(max(len(names), 1), 2, squeeze=False)
    for row_axes, name in zip(axes, names):
        rows = predictions[predictions["dataset"] == name]
        title = dataset_title(name)
        _draw_confusion(row_axes[0], confusion_counts(rows, "predicted"), f"{title}: classifier")
        _draw_confusion(row_axes[1], confusion_counts(rows, "haar_predicted"), f"{title}: Haar smile cascade")
    fig.suptitle("Held-out confusion matrices (share of each true class, count)")
    return fig


def select_examples(rows: pd.DataFrame, count: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Return the ``count`` most confident correct and the ``count`` most confident wrong predictions.

    Confidence is the probability given to the predicted class, max(p, 1 - p). Ties are
    broken by sample id, so the choice is deterministic.
    """
    ranked = rows.assign(confidence=np.maximum(rows["probability"], 1.0 - rows["probability"]))
    ranked = ranked.sort_values(["confidence", "sample"], ascending=[False, True], kind="mergesort")
    correct = ranked["predicted"] == ranked["label"]
    return ranked[correct].head(count), ranked[~correct].head(count)


def _draw_crop_row(axes, chosen: pd.DataFrame, crops: Mapping[str, np.ndarray], correct: bool) -> None:
    colour = CORRECT_COLOUR if correct else WRONG_COLOUR
    for ax, (_, row) in zip(axes, chosen.iterrows()):
        image = crops[row["sample"]]
        if image.ndim == 2:
            ax.imshow(image, cmap="gray", vmin=0, vmax=255)
        else:
            ax.imshow(image[:, :, ::-1])
        truth = CLASS_LABELS[int(row["label"])]
        ax.set_title(f"true: {truth}\nP(happy) {row['probability']:.2f}", fontsize=8.5, color=colour)
        for spine in ax.spines.values():
            spine.set_visible(True)
            spine.set_color(colour)
            spine.set_linewidth(2.5)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.grid(False)
    for ax in axes[len(chosen):]:
        ax.set_axis_off()
    if chosen.empty:
        axes[0].text(0.0, 0.5, "none", transform=axes[0].transAxes, va="center")


@styled
def plot_examples(name: str, correct: pd.DataFrame, wrong: pd.DataFrame, crops: Mapping[str, np.ndarray],
                  count: int) -> Figure:
    """Draw the most confident correct (top rows) and most confident wrong (bottom rows) held-out crops."""
    columns = min(max(count, 1), EXAMPLE_COLUMNS)
    rows_per_group = max(1, -(-count // columns))
    fig = Figure(figsize=(1.45 * columns + 0.4, 2.0 * 2 * rows_per_group + 0.9), layout="constrained")
    groups = fig.subfigures(2, 1)
    for group, chosen, is_correct, title in ((groups[0], correct, True, "Most confident correct"),
                                             (groups[1], wrong, False, "Most confident wrong")):
        axes = np.atleast_1d(group.subplots(rows_per_group, columns, squeeze=False)).ravel()
        _draw_crop_row(axes, chosen, crops, is_correct)
        group.suptitle(f"{title} ({len(chosen)})", fontsize=10,
                       color=CORRECT_COLOUR if is_correct else WRONG_COLOUR)
    fig.suptitle(f"{dataset_title(name)}: held-out crops with the classifier's P(happy)")
    return fig


@styled
def plot_training_curves(curves: Mapping[str, Mapping[int, pd.DataFrame]]) -> Figure:
    """Draw training loss and accuracy per epoch of every fold; one row per dataset.

    ``curves`` maps a dataset to {fold: table with columns epoch, loss, accuracy}.
    """
    names = list(curves)
    fig = Figure(figsize=(9.0, 3.3 * max(len(names), 1) + 0.6), layout="constrained")
    axes = fig.subplots(max(len(names), 1), 2, squeeze=False)
    for (loss_ax, accuracy_ax), name in zip(axes, names):
        for index, (fold, table) in enumerate(sorted(curves[name].items())):
            table = table.sort_values("epoch")
            style = {"color": fold_colour(index), "marker": "o", "markersize": 3, "linewidth": 1.5}
            loss_ax.plot(table["epoch"], table["loss"], label=f"fold {fold}", **style)
            accuracy_ax.plot(table["epoch"], table["accuracy"], **style)
        loss_ax.set_title(f"{dataset_title(name)}: training loss")
        loss_ax.set_ylabel("Loss (binary cross-entropy)")
        accuracy_ax.set_title(f"{dataset_title(name)}: training accuracy")
        accuracy_ax.set_ylabel("Accuracy")
        for ax in (loss_ax, accuracy_ax):
            ax.set_xlabel("Epoch")
            ax.xaxis.get_major_locator().set_params(integer=True)
        loss_ax.legend(loc="upper right", ncols=2)
    fig.suptitle("Classifier training per epoch (training part of each fold, augmented)")
    return fig


# Allowed values of each numeric column of predictions.csv, as a check and its description.
PREDICTION_VALUES = {
    "label": (lambda values: values.isin([0, 1]), "0 or 1"),
    "predicted": (lambda values: values.isin([0, 1]), "0 or 1"),
    "haar_predicted": (lambda values: values.isin([0, 1]), "0 or 1"),
    "probability": (lambda values: (values >= 0) & (values <= 1), "a probability from 0 to 1"),
    "haar_score": (lambda values: (values >= 0) & (values == values.round()), "a whole number >= 0"),
    "fold": (lambda values: (values >= 0) & (values == values.round()), "a whole number >= 0"),
}


def read_predictions(path: Path) -> pd.DataFrame:
    """Read predictions.csv of stages.evaluate_classifier.

    Raises DataError naming the file, the line and the value for a missing column, no rows,
    or a value outside PREDICTION_VALUES (line numbers count the header as line 1 and
    assume no blank lines, as evaluate_classifier writes the file).
    """
    table = read_csv(path, PREDICTION_COLUMNS)
    table["sample"] = table["sample"].astype(str)
    if table.empty:
        raise DataError(f"{path}: no predictions; rerun the evaluate_classifier stage")
    for column, (check, expected) in PREDICTION_VALUES.items():
        values = pd.to_numeric(table[column], errors="coerce")
        valid = check(values) & values.notna()
        if not valid.all():
            row = int(np.flatnonzero(~valid.to_numpy())[0])
            value = table[column].iloc[row]
            shown = "empty" if pd.isna(value) else repr(str(value))
            raise DataError(f"{path}: line {row + 2}: {column} is {shown}, expected {expected}; "
                            "rerun the evaluate_classifier stage")
        table[column] = values
    return table


def read_training_curves(folder: Path, names: Sequence[str]) -> dict[str, dict[int, pd.DataFrame]]:
    """Read ``folder/<dataset>/fold<k>-epochs.csv`` for each dataset in ``names``."""
    curves: dict[str, dict[int, pd.DataFrame]] = {}
    for name in names:
        files = {}
        for path in (folder / name).glob("fold*-epochs.csv"):
            match = re.fullmatch(r"fold(\d+)-epochs\.csv", path.name)
            if match:
                files[int(match.group(1))] = path
        if not files:
            raise DataError(f"{folder / name}: no training curves found (expected fold<k>-epochs.csv); "
                            "run the train_classifier stage first")
        curves[name] = {fold: read_csv(path, TRAINING_COLUMNS) for fold, path in sorted(files.items())}
    return curves


def load_crops(chosen: pd.DataFrame, sample_dir: Path) -> dict[str, np.ndarray]:
    """Read the crops of the ``chosen`` prediction rows; paths are relative to ``sample_dir``."""
    return {row["sample"]: read_crop(sample_dir / row["path"]) for _, row in chosen.iterrows()}


def draw_figures(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.profile)
    count = params["evaluate_classifier"]["example_crops"]
    report = read_json_object(args.metrics, remedy="; rerun the evaluate_classifier stage")
    predictions = read_predictions(args.predictions)
    names = [name for name in DATASETS if name in set(predictions["dataset"])]
    curves = read_training_curves(args.training, names)

    figures = {
        ROC_PNG: lambda: plot_roc_curves(predictions, report),
        CONFUSION_PNG: lambda: plot_confusion_matrices(predictions),
        TRAINING_PNG: lambda: plot_training_curves(curves),
    }
    for name in names:
        correct, wrong = select_examples(predictions[predictions["dataset"] == name], count)
        crops = load_crops(pd.concat([correct, wrong]), args.splits / name)
        figures[EXAMPLES_PNG.format(dataset=name)] = (
            lambda name=name, correct=correct, wrong=wrong, crops=crops: plot_examples(name, correct, wrong, crops,
                                                                                       count))
    # All figures are drawn into a staging folder that replaces --out only when every one succeeds.
    with atomic_directory(args.out) as staging:
        for file_name, draw in figures.items():
            save_figure(draw(), staging / file_name)
    log.info("wrote %d figures to %s", len(figures), args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.classifier_figures", description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    parser.add_argument("--metrics", type=Path, required=True, help="classifier metrics JSON (classifier.json)")
    parser.add_argument("--predictions", type=Path, required=True, help="held-out predictions (predictions.csv)")
    parser.add_argument("--training", type=Path, required=True,
                        help="folder with <dataset>/fold<k>-epochs.csv training curves")
    parser.add_argument("--splits", type=Path, required=True,
                        help="folder with <dataset>/samples.csv; crop paths are relative to <dataset>/")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(draw_figures, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
