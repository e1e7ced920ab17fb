"""Draw the report figures: focal loss, per-image IoU, example detections, PR curves, training loss.

Reads the evaluation outputs of the detector (metrics, per-image IoU, precision-recall curves,
predictions), the training curves and the split table, and writes one PNG per figure into
``--out``. From params.yaml it reads ``figures.example_images``, ``detector.focal.gamma``,
``evaluate.iou_score_threshold``, ``report.paper_train_mean_iou`` and ``dataset.format``
(the original study's line is drawn for Caltech Faces 1999 only).

The plotting functions take DataFrames and dicts and return a ``matplotlib.figure.Figure``.
They build figures without pyplot, so no figure stays registered in a global list, and
``main`` does all file I/O.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")

import cv2  # noqa: E402  (the backend must be chosen before matplotlib draws anything)
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from stages.atomic import atomic_directory  # noqa: E402
from stages.cli import run_stage  # noqa: E402
from stages.errors import DataError  # noqa: E402
from stages.evaluate_detector import check_metrics_layout, read_json_object  # noqa: E402
from stages.params import add_params_arguments, load_params  # noqa: E402

log = logging.getLogger(__name__)

DPI = 150

FOCAL_LOSS_PNG = "focal_loss.png"
PER_IMAGE_IOU_PNG = "per_image_iou.png"
EXAMPLES_PNG = "examples.png"
PR_CURVES_PNG = "pr_curves.png"
TRAINING_CURVES_PNG = "training_curves.png"

# Okabe and Ito's colour-blind-safe palette without its yellow, which is hard to see on white.
# Folds past the seventh reuse the colours in order.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
TRUE_BOX_COLOUR = "#009E73"
PREDICTED_BOX_COLOUR = "#E69F00"
OTHER_BOX_COLOUR = "#56B4E9"
TRAIN_COLOUR = "#8C8C8C"
PAPER_COLOUR = "#D55E00"

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 8.5,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "legend.frameon": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
}

# Lin et al., "Focal Loss for Dense Object Detection" (ICCV 2017), Fig. 1 draws these gammas.
FOCAL_GAMMAS = (0.0, 0.5, 1.0, 2.0, 5.0)
# log(p_t) is -inf at 0, so the curves start just above it.
FOCAL_MIN_PROBABILITY = 1e-3
# Above 0.5 the true class is the more probable of the two, so the example is classified correctly.
WELL_CLASSIFIED_PT = 0.5

IOU_HISTOGRAM_BINS = np.linspace(0.0, 1.0, 41)

# The smoothed training curve is an exponential moving average whose span is this fraction of
# the steps of one fold, so short smoke runs and long runs get the same visual smoothing.
SMOOTHING_FRACTION = 0.05

LOSS_COLUMNS = (
    ("loss", "Total loss"),
    ("classification_loss", "Classification loss (focal)"),
    ("regression_loss", "Regression loss (smooth L1)"),
)

# Fraction of the image height above a box that its score label needs.
LABEL_ROOM = 0.08
PER_IMAGE_COLUMNS = ("fold", "part", "image", "person", "iou", "score",
                     "gt_x1", "gt_y1", "gt_x2", "gt_y2", "pred_x1", "pred_y1", "pred_x2", "pred_y2")
PR_COLUMNS = ("fold", "part", "recall", "precision", "score")
STEP_COLUMNS = ("global_step", "loss", "regression_loss", "classification_loss")
EPOCH_COLUMNS = ("epoch", "loss", "regression_loss", "classification_loss")
SPLIT_COLUMNS = ("image", "person", "fold", "path")
PREDICTION_COLUMNS = ("part", "image", "x1", "y1", "x2", "y2", "score")
PREDICTED_COLUMNS = ["pred_x1", "pred_y1", "pred_x2", "pred_y2"]
# The columns of per_image.csv that identify an evaluated image: one model's held-out image.
EXAMPLE_KEYS = ["fold", "image"]


def styled(plot: Callable[..., Figure]) -> Callable[..., Figure]:
    """Decorate a plotting function so that it draws with the project's matplotlib style."""

    @functools.wraps(plot)
    def wrapper(*args, **kwargs) -> Figure:
        with matplotlib.rc_context(STYLE):
            return plot(*args, **kwargs)

    return wrapper


def fold_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def fold_label(fold: object) -> str:
    """Return "fold 3" for 3, "3" or "fold3"."""
    text = str(fold)
    number = re.fullmatch(r"(?:fold)?\s*(\d+)", text)
    return f"fold {number.group(1)}" if number else text


def fold_key(fold: object) -> str:
    """Return the key of ``fold`` in detector.json's "folds" mapping ("fold3")."""
    return fold_label(fold).replace(" ", "")


def format_metric(value: float | None, digits: int = 3) -> str:
    """Format a metric, or "n/a" when it is missing (None or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def focal_loss(p_t: np.ndarray, gamma: float) -> np.ndarray:
    """Return FL(p_t) = -(1 - p_t)^gamma log(p_t), Lin et al. (2017) eq. 4 without alpha.

    ``p_t`` is the model's probability of the true class, in (0, 1]. gamma 0 gives cross-entropy.
    """
    return -((1.0 - p_t) ** gamma) * np.log(p_t)


@styled
def plot_focal_loss(configured_gamma: float, gammas: Sequence[float] = FOCAL_GAMMAS) -> Figure:
    """Draw focal loss against p_t for several gammas, after Lin et al. (2017) Fig. 1.

    The curve of ``configured_gamma`` (detector.focal.gamma) is drawn thicker and labelled;
    it is added as an extra curve when it is not one of ``gammas``.
    """
    p_t = np.linspace(FOCAL_MIN_PROBABILITY, 1.0, 500)
    curves = sorted(set(gammas) | {configured_gamma})
    fig = Figure(figsize=(6.0, 4.2), layout="constrained")
    ax = fig.add_subplot()
    for index, gamma in enumerate(curves):
        configured = math.isclose(gamma, configured_gamma)
        label = rf"$\gamma$ = {gamma:g}" + (" (this run)" if configured else "")
        ax.plot(p_t, focal_loss(p_t, gamma), color=fold_colour(index),
                linewidth=3.0 if configured else 1.6, label=label, zorder=3 if configured else 2)
    ax.axvspan(WELL_CLASSIFIED_PT, 1.0, color="0.85", alpha=0.5, linewidth=0, zorder=1)
    ax.text((WELL_CLASSIFIED_PT + 1.0) / 2, 4.6, "well-classified\nexamples", ha="center", va="top", fontsize=9,
            color="0.3")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 5)
    ax.set_xlabel(r"Probability of the true class, $p_t$")
    ax.set_ylabel(r"Loss, $-(1-p_t)^\gamma \log p_t$ (nats)")
    ax.set_title(r"Focal loss for several focusing parameters $\gamma$")
    ax.legend(loc="upper right", bbox_to_anchor=(0.6, 1.0))
    return fig


def ranked_positions(count: int) -> np.ndarray:
    """Return the positions of ``count`` sorted values on a 0-100 percentile axis."""
    if count == 1:
        return np.array([50.0])
    return np.linspace(0.0, 100.0, count)


def original_study_mean(params: dict) -> float | None:
    """Return the original study's training mean IoU on Caltech Faces 1999, or None for another dataset."""
    if (params.get("dataset") or {}).get("format", "caltech") != "caltech":
        return None
    return params["report"]["paper_train_mean_iou"]


@styled
def plot_per_image_iou(per_image: pd.DataFrame, heldout_mean: float | None,
                       train_mean: float | None, paper_train_mean: float | None) -> Figure:
    """Draw the sorted IoU of every held-out face by fold, with training IoU in grey.

    ``paper_train_mean`` (the original study's training mean) is drawn as a line when it is not
    None. It is None for datasets other than Caltech Faces 1999, which that study never used.

    ``per_image`` has the columns of per_image.csv, one row per face, so an image with several
    faces gives several values and a background image none. Held-out and training parts have
    different numbers of rows, since each image is in the training part of every fold but one,
    so both are drawn against their percentile rank. The second panel shows both distributions.
    """
    heldout = per_image[per_image["part"] == "heldout"].dropna(subset=["iou"])
    train = per_image[per_image["part"] == "train"].dropna(subset=["iou"])

    fig = Figure(figsize=(9.5, 5.0), layout="constrained")
    ranked, histogram = fig.subplots(1, 2, width_ratios=(2, 1))

    train_iou = np.sort(train["iou"].to_numpy())
    if len(train_iou):
        ranked.plot(ranked_positions(len(train_iou)), train_iou, color=TRAIN_COLOUR, linewidth=2,
                    alpha=0.8, label=f"training faces, all folds (n = {len(train_iou)})", zorder=2)
    heldout = heldout.sort_values("iou", kind="mergesort").assign(rank=ranked_positions(len(heldout)))
    for index, (fold, rows) in enumerate(heldout.groupby("fold", sort=True)):
        ranked.scatter(rows["rank"], rows["iou"], s=10, color=fold_colour(index), zorder=3,
                       label=f"held-out, {fold_label(fold)} (n = {len(rows)})")

    lines = (
        (heldout_mean, "held-out mean (this study)", "black", "-"),
        (train_mean, "training mean (this study)", TRAIN_COLOUR, "--"),
        (paper_train_mean, "training mean (original study)", PAPER_COLOUR, ":"),
    )
    for value, label, colour, style in lines:
        if value is None:
            continue
        ranked.axhline(value, color=colour, linestyle=style, linewidth=1.4, zorder=4,
                       label=f"{label}: {value:.3f}")
    ranked.set_xlim(0, 100)
    # Below 0, so that faces without a detection (IoU 0) are not hidden by the axis.
    ranked.set_ylim(-0.03, 1.02)
    ranked.set_xlabel("Faces sorted by IoU (percentile rank, %)")
    ranked.set_ylabel("IoU of the best-matching detection")
    ranked.set_title("IoU per face, sorted")
    # Below the panels, so that the legend never hides points.
    fig.legend(handles=ranked.get_legend_handles_labels()[0], loc="outside lower center", ncols=3)

    # A density histogram of no values divides by zero, so empty parts are left out.
    if len(train_iou):
        histogram.hist(train_iou, bins=IOU_HISTOGRAM_BINS, density=True, histtype="stepfilled",
                       color=TRAIN_COLOUR, alpha=0.45, label="training")
    if not heldout.empty:
        histogram.hist(heldout["iou"], bins=IOU_HISTOGRAM_BINS, density=True, histtype="step",
                       color="black", linewidth=1.5, label="held-out")
    if paper_train_mean is not None:
        histogram.axvline(paper_train_mean, color=PAPER_COLOUR, linestyle=":", linewidth=1.4,
                          label="original study, training mean")
    histogram.set_xlim(0, 1)
    histogram.set_xlabel("IoU")
    histogram.set_ylabel("Density (per unit IoU)")
    histogram.set_title("Distribution")
    # Without faces and without the original study's line, the panel has nothing to label.
    if histogram.get_legend_handles_labels()[0]:
        histogram.legend(loc="upper left")
    return fig


@dataclass
class Example:
    """One held-out image to draw, with the per_image.csv rows of its faces and all its detections."""

    image: np.ndarray  # RGB, shape (height, width, 3), uint8
    faces: pd.DataFrame  # per_image.csv rows of this image, one per face
    detections: pd.DataFrame  # columns x1, y1, x2, y2, score in image pixels
    caption: str


def select_examples(per_image: pd.DataFrame, count: int) -> pd.DataFrame:
    """Return ``count`` held-out images spread evenly from the best to the worst IoU.

    ``per_image`` has one row per face (columns fold, part, image, person and iou at least).
    An image is ranked by the mean IoU of its faces. Images are ordered by that IoU, highest
    first (missing IoU last), then by image name, so the choice is deterministic. Returns one
    row per chosen image with columns fold, image, person, iou (the mean), faces (their
    number), rank and of (the number of ranked images). Fewer rows come back when there are
    fewer held-out images, and background images, which have no rows, are never chosen.
    """
    heldout = per_image[per_image["part"] == "heldout"]
    images = heldout.drop_duplicates(EXAMPLE_KEYS)[[*EXAMPLE_KEYS, "person"]].reset_index(drop=True)
    faces = heldout.groupby(EXAMPLE_KEYS, sort=False)["iou"]
    index = pd.MultiIndex.from_frame(images[EXAMPLE_KEYS])
    images["iou"] = faces.mean().reindex(index).to_numpy(dtype=float)
    images["faces"] = faces.size().reindex(index).to_numpy(dtype=int)
    ordered = images.sort_values(["iou", "image"], ascending=[False, True], na_position="last",
                                 kind="mergesort").reset_index(drop=True)
    if ordered.empty:
        return ordered
    positions = np.unique(np.round(np.linspace(0, len(ordered) - 1, count)).astype(int))
    chosen = ordered.iloc[positions].copy()
    chosen["rank"] = positions + 1
    chosen["of"] = len(ordered)
    return chosen


def example_columns(count: int) -> int:
    """Return the number of grid columns for ``count`` example images: 2 up to 6, then 3, then 4."""
    if count <= 6:
        return 2
    return 3 if count <= 12 else 4


def _draw_box(ax, x1: float, y1: float, x2: float, y2: float, colour: str, style: str,
              width: float) -> None:
    ax.add_patch(Rectangle((x1, y1), x2 - x1, y2 - y1, fill=False, edgecolor=colour,
                           linestyle=style, linewidth=width))


def _has_prediction(row: pd.Series) -> bool:
    return not any(pd.isna(row[column]) for column in PREDICTED_COLUMNS)


def other_detections(detections: pd.DataFrame, faces: pd.DataFrame, threshold: float) -> pd.DataFrame:
    """Return the detections with a score of at least ``threshold``, less the best-matching ones of ``faces``.

    A best-matching detection is one whose box equals the predicted box of a per_image.csv row in ``faces``.
    """
    confident = detections[detections["score"] >= threshold]
    boxes = confident[["x1", "y1", "x2", "y2"]].to_numpy(dtype=float)
    matched = np.zeros(len(confident), dtype=bool)
    for predicted in faces[PREDICTED_COLUMNS].dropna().to_numpy(dtype=float):
        matched |= np.isclose(boxes, predicted).all(axis=1)
    return confident[~matched]


def _draw_face(ax, row: pd.Series, height: int) -> None:
    """Draw one face's true box and, if it has one, its best-matching detection with score and IoU."""
    _draw_box(ax, row["gt_x1"], row["gt_y1"], row["gt_x2"], row["gt_y2"], TRUE_BOX_COLOUR, "-", 2.2)
    if not _has_prediction(row):
        return
    _draw_box(ax, row["pred_x1"], row["pred_y1"], row["pred_x2"], row["pred_y2"], PREDICTED_BOX_COLOUR, "--", 2.2)
    label = f"score {format_metric(row['score'], 2)}, IoU {format_metric(row['iou'], 3)}"
    # The label sits above the box, or just inside its top edge when the box is near the image top.
    above = row["pred_y1"] > LABEL_ROOM * height
    ax.text(row["pred_x1"], row["pred_y1"] + (-0.01 if above else 0.01) * height, label, fontsize=8,
            va="bottom" if above else "top", clip_on=True,
            bbox={"facecolor": PREDICTED_BOX_COLOUR, "edgecolor": "none", "pad": 1.5})


def _draw_example(ax, example: Example, other_threshold: float) -> None:
    faces = example.faces
    height = example.image.shape[0]
    ax.imshow(example.image)
    ax.set_axis_off()
    ax.set_title(example.caption, fontsize=9)

    for detection in other_detections(example.detections, faces, other_threshold).itertuples():
        _draw_box(ax, detection.x1, detection.y1, detection.x2, detection.y2, OTHER_BOX_COLOUR, ":", 1.2)
    for _, row in faces.iterrows():
        _draw_face(ax, row, height)

    missed = int((~faces.apply(_has_prediction, axis=1)).sum()) if len(faces) else 0
    if not missed:
        return
    if len(faces) == 1:
        note = f"no detection, IoU {format_metric(faces['iou'].iloc[0], 3)}"
    else:
        note = f"no detection for {missed} of {len(faces)} faces"
    ax.text(0.5, 0.04, note, transform=ax.transAxes, ha="center", fontsize=8,
            bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.5})


@styled
def plot_examples(examples: Sequence[Example], other_threshold: float) -> Figure:
    """Draw held-out images with each true box (green, solid) and its best-matching detection (orange, dashed).

    Further detections with a score of at least ``other_threshold`` (evaluate.iou_score_threshold)
    are drawn as thin dotted blue boxes. Boxes are in image pixels.
    """
    columns = max(min(example_columns(len(examples)), len(examples)), 1)
    rows = max(math.ceil(len(examples) / columns), 1)
    fig = Figure(figsize=(4.2 * columns, 3.2 * rows + 0.7), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, columns, squeeze=False)).ravel()
    for ax, example in zip(axes, examples):
        _draw_example(ax, example, other_threshold)
    for ax in axes[len(examples):]:
        ax.set_axis_off()
    if not examples:
        axes[0].text(0.5, 0.5, "no held-out images", ha="center", va="center")

    handles = [
        Rectangle((0, 0), 1, 1, fill=False, edgecolor=TRUE_BOX_COLOUR, linewidth=2.2, label="true box"),
        Rectangle((0, 0), 1, 1, fill=False, edgecolor=PREDICTED_BOX_COLOUR, linestyle="--", linewidth=2.2,
                  label="best-matching detection (score, IoU)"),
        Rectangle((0, 0), 1, 1, fill=False, edgecolor=OTHER_BOX_COLOUR, linestyle=":", linewidth=1.2,
                  label=f"other detections, score \u2265 {other_threshold:g}"),
    ]
    fig.legend(handles=handles, loc="outside lower center", ncols=3)
    fig.suptitle("Held-out images from best to worst IoU")
    return fig


def _sorted_curve(rows: pd.DataFrame) -> pd.DataFrame:
    # Falling score thresholds walk the precision-recall curve from low to high recall.
    if rows["score"].notna().any():
        return rows.sort_values(["score", "recall"], ascending=[False, True], kind="mergesort",
                                na_position="last")
    return rows.sort_values("recall", kind="mergesort")


@styled
def plot_pr_curves(pr_curves: pd.DataFrame, metrics: dict) -> Figure:
    """Draw the held-out precision-recall curve at IoU 0.5 of every fold.

    The legend gives each fold's AP@0.5 from ``metrics["folds"][fold]["heldout"]["ap50"]``.
    """
    heldout = pr_curves[pr_curves["part"] == "heldout"]
    fig = Figure(figsize=(6.0, 4.6), layout="constrained")
    ax = fig.add_subplot()
    for index, (fold, rows) in enumerate(heldout.groupby("fold", sort=True)):
        fold_metrics = ((metrics.get("folds") or {}).get(fold_key(fold)) or {}).get("heldout") or {}
        curve = _sorted_curve(rows.dropna(subset=["recall", "precision"]))
        label = f"{fold_label(fold)} (AP@0.5 {format_metric(fold_metrics.get('ap50'))})"
        ax.plot(curve["recall"], curve["precision"], color=fold_colour(index), linewidth=1.8, label=label)
    overall = metrics.get("heldout") or {}
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("Recall (fraction of true faces found)")
    ax.set_ylabel("Precision (fraction of detections correct)")
    pooled_ap = format_metric(overall.get("ap50"))
    ax.set_title(f"Held-out precision-recall at IoU 0.5\n(all images pooled: AP@0.5 {pooled_ap})")
    if heldout.empty:
        ax.text(0.5, 0.5, "no held-out precision-recall points", ha="center", va="center")
    else:
        ax.legend(loc="lower left")
    return fig


def smooth(values: pd.Series) -> pd.Series:
    """Return an exponential moving average with a span of SMOOTHING_FRACTION of the values."""
    span = max(2, round(len(values) * SMOOTHING_FRACTION))
    return values.ewm(span=span, adjust=True).mean()


def epoch_middle_steps(steps: pd.DataFrame, epochs: pd.DataFrame) -> pd.Series:
    """Return the mean global step of each epoch in ``epochs`` (NaN when that epoch has no steps)."""
    if "epoch" not in steps.columns:
        return pd.Series(np.nan, index=epochs.index)
    middle_step = steps.groupby("epoch")["global_step"].mean()
    return epochs["epoch"].map(middle_step)


@styled
def plot_training_curves(curves: dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]) -> Figure:
    """Draw the training loss per step of every fold: total, classification and regression panels.

    ``curves`` maps a fold name to (steps, epochs) tables from fold{k}-steps.csv and
    fold{k}-epochs.csv; epochs may be None. The loss logged at each step is drawn faint, its
    moving average solid, and the mean loss of each epoch as a dot at the epoch's middle step.
    The training stage recovers each batch's own loss from the running means that tf-keras logs.
    """
    fig = Figure(figsize=(7.5, 8.0), layout="constrained")
    axes = fig.subplots(len(LOSS_COLUMNS), 1, sharex=True)
    for index, (fold, (steps, epochs)) in enumerate(curves.items()):
        colour = fold_colour(index)
        steps = steps.sort_values("global_step", kind="mergesort")
        middles = epoch_middle_steps(steps, epochs) if epochs is not None else None
        for ax, (column, _title) in zip(axes, LOSS_COLUMNS):
            ax.plot(steps["global_step"], steps[column], color=colour, alpha=0.25, linewidth=0.8)
            ax.plot(steps["global_step"], smooth(steps[column]), color=colour, linewidth=1.8,
                    label=fold_label(fold))
            if middles is not None:
                ax.plot(middles, epochs[column], linestyle="none", marker="o", markersize=3.5,
                        color=colour, markeredgecolor="white", markeredgewidth=0.5)
    for ax, (_column, title) in zip(axes, LOSS_COLUMNS):
        ax.set_yscale("log")
        ax.set_title(title)
        ax.set_ylabel("Loss (log scale)")
    axes[-1].set_xlabel("Training step (batches since the start of the fold)")
    axes[0].legend(loc="upper right", ncols=2)
    fig.suptitle("Training loss per step\nfaint: loss of each batch, solid: moving average, dots: epoch mean")
    return fig


def read_csv(path: Path, columns: Sequence[str]) -> pd.DataFrame:
    """Read a CSV file, raising DataError that names the missing ones when it lacks any of ``columns``."""
    if not path.is_file():
        raise DataError(f"{path}: file not found")
    try:
        table = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as error:
        raise DataError(f"{path}: invalid CSV: {error}") from None
    missing = [column for column in columns if column not in table.columns]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)} (found: {', '.join(map(str, table.columns))})")
    return table


def read_metrics(path: Path) -> dict:
    """Read the detector metrics JSON and check its layout (see evaluate_detector.check_metrics_layout)."""
    metrics = read_json_object(path)
    check_metrics_layout(metrics, str(path))
    return metrics


def read_training_curves(folder: Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame | None]]:
    """Read fold{k}-steps.csv and, where present, fold{k}-epochs.csv from ``folder``, by fold number."""
    step_files = {}
    for path in folder.glob("fold*-steps.csv"):
        number = re.fullmatch(r"fold(\d+)-steps\.csv", path.name)
        if number:
            step_files[int(number.group(1))] = path
    if not step_files:
        raise DataError(f"{folder}: no training curves found (expected fold<k>-steps.csv)")
    curves = {}
    for number in sorted(step_files):
        steps = read_csv(step_files[number], STEP_COLUMNS)
        epochs_path = folder / f"fold{number}-epochs.csv"
        epochs = read_csv(epochs_path, EPOCH_COLUMNS) if epochs_path.is_file() else None
        curves[f"fold{number}"] = (steps, epochs)
    return curves


def read_image_rgb(path: Path) -> np.ndarray:
    """Read an image file as an RGB uint8 array of shape (height, width, 3)."""
    # The EXIF orientation is ignored, as in training and evaluation, so the boxes fit the pixels.
    image = cv2.imread(str(path), cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    if image is None:
        raise DataError(f"{path}: image not found or not readable")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def load_examples(chosen: pd.DataFrame, per_image: pd.DataFrame, splits_dir: Path,
                  predictions_dir: Path) -> list[Example]:
    """Read the ``chosen`` images (see ``select_examples``), the per_image.csv rows of their faces
    and their held-out detections."""
    splits = read_csv(splits_dir / "folds.csv", SPLIT_COLUMNS).set_index("image")
    heldout = per_image[per_image["part"] == "heldout"]
    predictions: dict[str, pd.DataFrame] = {}
    examples = []
    for _, row in chosen.iterrows():
        if row["image"] not in splits.index:
            raise DataError(f"{splits_dir / 'folds.csv'}: image {row['image']!r} from per_image.csv is not listed")
        key = fold_key(row["fold"])
        if key not in predictions:
            predictions[key] = read_csv(predictions_dir / f"{key}.csv", PREDICTION_COLUMNS)
        fold_predictions = predictions[key]
        same_image = (fold_predictions["part"] == "heldout") & (fold_predictions["image"] == row["image"])
        detections = fold_predictions[same_image]
        faces = heldout[(heldout["fold"] == row["fold"]) & (heldout["image"] == row["image"])]
        ranking = "IoU rank" if row["faces"] == 1 else f"{row['faces']} faces, mean IoU rank"
        caption = (f"{row['image']}, person {row['person']}, {fold_label(row['fold'])}\n"
                   f"{ranking} {row['rank']} of {row['of']}")
        image = read_image_rgb(splits_dir / splits.loc[row["image"], "path"])
        examples.append(Example(image=image, faces=faces, detections=detections, caption=caption))
    return examples


def save_figure(fig: Figure, path: Path) -> None:
    """Save ``fig`` as a PNG at DPI; ``path`` lies in a staging folder, so no temporary file is needed."""
    fig.savefig(path, dpi=DPI, format="png", facecolor="white")


def draw_figures(args: argparse.Namespace) -> None:
    params = load_params(args.params, args.profile)
    metrics = read_metrics(args.metrics)
    per_image = read_csv(args.per_image, PER_IMAGE_COLUMNS)
    pr_curves = read_csv(args.pr_curves, PR_COLUMNS)
    curves = read_training_curves(args.training)
    chosen = select_examples(per_image, params["figures"]["example_images"])
    examples = load_examples(chosen, per_image, args.splits, args.predictions)

    heldout = metrics.get("heldout") or {}
    train = metrics.get("train") or {}
    figures = {
        FOCAL_LOSS_PNG: lambda: plot_focal_loss(params["detector"]["focal"]["gamma"]),
        PER_IMAGE_IOU_PNG: lambda: plot_per_image_iou(per_image, heldout.get("mean_iou"), train.get("mean_iou"),
                                                      original_study_mean(params)),
        EXAMPLES_PNG: lambda: plot_examples(examples, params["evaluate"]["iou_score_threshold"]),
        PR_CURVES_PNG: lambda: plot_pr_curves(pr_curves, metrics),
        TRAINING_CURVES_PNG: lambda: plot_training_curves(curves),
    }
    # Every figure is drawn into a staging folder that replaces --out only when all succeed, so a
    # failed run keeps the previous complete set and no PNG of an older run survives a successful one.
    with atomic_directory(args.out) as staging:
        for name, draw in figures.items():
            save_figure(draw(), staging / name)
    log.info("wrote %d figures to %s", len(figures), args.out)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m stages.figures", description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    parser.add_argument("--metrics", type=Path, required=True, help="detector metrics JSON (detector.json)")
    parser.add_argument("--per-image", type=Path, required=True, help="per-image IoU table (per_image.csv)")
    parser.add_argument("--pr-curves", type=Path, required=True, help="precision-recall points (pr_curves.csv)")
    parser.add_argument("--training", type=Path, required=True,
                        help="folder with fold<k>-steps.csv and fold<k>-epochs.csv training curves")
    parser.add_argument("--splits", type=Path, required=True,
                        help="split folder with folds.csv, whose image paths are relative to this folder")
    parser.add_argument("--predictions", type=Path, required=True, help="folder with fold<k>.csv detections")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNG figures")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(draw_figures, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
