"""Tests for stages.figures on small synthetic detector outputs written in tmp_path."""

from __future__ import annotations

import io
import json
import math
import re
from pathlib import Path

import cv2
import matplotlib.colors
import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stages import figures
from stages.errors import DataError
from stages.params import PROJECT_ROOT

FIGURE_NAMES = ("focal_loss.png", "per_image_iou.png", "examples.png", "pr_curves.png", "training_curves.png")
IMAGE_WIDTH, IMAGE_HEIGHT = 120, 80


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    width = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    overlap = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - overlap
    return overlap / union


def summarise(rows: pd.DataFrame) -> dict:
    """Return the metric keys of detector.json for ``rows``; every value is None when empty."""
    if rows.empty:
        keys = ("mean_iou", "min_iou", "max_iou", "median_iou", "ap50", "ap50_95", "recall50")
        return {**{key: None for key in keys}, "images": 0}
    iou = rows["iou"]
    return {
        "mean_iou": float(iou.mean()), "min_iou": float(iou.min()), "max_iou": float(iou.max()),
        "median_iou": float(iou.median()), "ap50": float((iou >= 0.5).mean()),
        "ap50_95": float((iou >= 0.75).mean()), "recall50": float((iou >= 0.5).mean()),
        "images": int(len(rows)),
    }


def across_folds(values: list[float]) -> dict:
    mean = float(np.mean(values))
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    half_width = 1.96 * sd / math.sqrt(len(values))
    return {"mean": mean, "sd": sd, "ci95_low": mean - half_width, "ci95_high": mean + half_width, "n": len(values)}


def write_detector_outputs(root: Path, persons: int = 6, images_per_person: int = 3, folds: int = 2,
                           seed: int = 0, size: tuple[int, int] = (IMAGE_WIDTH, IMAGE_HEIGHT),
                           steps_per_epoch: int = 5) -> dict[str, Path]:
    """Write every input of stages.figures under ``root`` in the formats of the producing stages.

    Images are small JPEGs with a bright ellipse as the face. One held-out image has no
    detection, so its predicted box is empty and its IoU is 0.
    """
    rng = np.random.default_rng(seed)
    paths = {
        "metrics": root / "reports/metrics/detector.json",
        "per_image": root / "reports/detector/per_image.csv",
        "pr_curves": root / "reports/detector/pr_curves.csv",
        "training": root / "reports/training/detector",
        "splits": root / "data/splits",
        "predictions": root / "data/predictions/detector",
        "images": root / "data/images",
    }
    for key in ("metrics", "per_image", "pr_curves"):
        paths[key].parent.mkdir(parents=True, exist_ok=True)
    for key in ("training", "splits", "predictions", "images"):
        paths[key].mkdir(parents=True, exist_ok=True)

    split_rows, boxes = [], {}
    for person in range(1, persons + 1):
        for index in range(images_per_person):
            name = f"image_{len(split_rows) + 1:04d}.jpg"
            width, height = size
            x1, y1 = rng.uniform(0.1, 0.4) * width, rng.uniform(0.05, 0.3) * height
            box = (x1, y1, x1 + rng.uniform(0.25, 0.4) * width, y1 + rng.uniform(0.45, 0.6) * height)
            image = np.full((height, width, 3), (90, 60, 40), np.uint8)
            centre = (int((box[0] + box[2]) / 2), int((box[1] + box[3]) / 2))
            axes = (int((box[2] - box[0]) / 2), int((box[3] - box[1]) / 2))
            cv2.ellipse(image, centre, axes, 0, 0, 360, (150, 190, 230), -1)
            cv2.imwrite(str(paths["images"] / name), image)
            boxes[name] = box
            split_rows.append({"image": name, "person": person, "fold": person % folds, "path": f"../images/{name}"})
    splits = pd.DataFrame(split_rows)
    splits.to_csv(paths["splits"] / "folds.csv", index=False)

    per_image_rows, prediction_rows = [], {fold: [] for fold in range(folds)}
    for fold in range(folds):
        for split in splits.itertuples():
            part = "heldout" if split.fold == fold else "train"
            gt = boxes[split.image]
            jitter = (0.02 if part == "train" else 0.05) * size[0]
            pred = tuple(value + rng.normal(0, jitter) for value in gt)
            score = float(rng.uniform(0.6, 0.99))
            undetected = part == "heldout" and split.Index == splits.index[splits["fold"] == fold][0]
            row = {"fold": fold, "part": part, "image": split.image, "person": split.person,
                   "gt_x1": gt[0], "gt_y1": gt[1], "gt_x2": gt[2], "gt_y2": gt[3]}
            if undetected:
                row.update(iou=0.0, score=np.nan, pred_x1=np.nan, pred_y1=np.nan, pred_x2=np.nan, pred_y2=np.nan)
            else:
                row.update(iou=box_iou(gt, pred), score=score,
                           pred_x1=pred[0], pred_y1=pred[1], pred_x2=pred[2], pred_y2=pred[3])
                prediction_rows[fold].append({"part": part, "image": split.image, "x1": pred[0], "y1": pred[1],
                                              "x2": pred[2], "y2": pred[3], "score": score})
                prediction_rows[fold].append({"part": part, "image": split.image, "x1": 0.02 * size[0],
                                              "y1": 0.02 * size[1], "x2": 0.25 * size[0],
                                              "y2": 0.4 * size[1], "score": 0.55})
            per_image_rows.append(row)
    per_image = pd.DataFrame(per_image_rows, columns=list(figures.PER_IMAGE_COLUMNS))
    per_image.to_csv(paths["per_image"], index=False)
    for fold, rows in prediction_rows.items():
        pd.DataFrame(rows, columns=list(figures.PREDICTION_COLUMNS)).to_csv(paths["predictions"] / f"fold{fold}.csv",
                                                                            index=False)

    pr_rows = []
    for fold in range(folds):
        for part in ("heldout", "train"):
            for step, recall in enumerate(np.linspace(0.1, 1.0, 10)):
                pr_rows.append({"fold": fold, "part": part, "recall": recall,
                                "precision": 1.0 - (0.2 + 0.05 * fold) * recall ** 3, "score": 0.99 - 0.09 * step})
    pd.DataFrame(pr_rows).to_csv(paths["pr_curves"], index=False)

    for fold in range(folds):
        step_rows, epoch_rows = [], []
        for epoch in range(2):
            for step in range(steps_per_epoch):
                global_step = epoch * steps_per_epoch + step
                regression = 1.0 / (1 + global_step) + rng.uniform(0, 0.05)
                classification = 0.8 / (1 + global_step) + rng.uniform(0, 0.05)
                step_rows.append({"epoch": epoch, "step": step, "global_step": global_step,
                                  "loss": regression + classification, "regression_loss": regression,
                                  "classification_loss": classification, "seconds": 0.5})
            epoch_steps = pd.DataFrame(step_rows[-steps_per_epoch:])
            epoch_rows.append({"epoch": epoch, "loss": epoch_steps["loss"].mean(),
                               "regression_loss": epoch_steps["regression_loss"].mean(),
                               "classification_loss": epoch_steps["classification_loss"].mean(), "seconds": 2.5})
        pd.DataFrame(step_rows).to_csv(paths["training"] / f"fold{fold}-steps.csv", index=False)
        pd.DataFrame(epoch_rows).to_csv(paths["training"] / f"fold{fold}-epochs.csv", index=False)

    fold_metrics = {}
    for fold in range(folds):
        rows = per_image[per_image["fold"] == fold]
        fold_metrics[f"fold{fold}"] = {
            "heldout": summarise(rows[rows["part"] == "heldout"]),
            "train": summarise(rows[rows["part"] == "train"]),
            "test_persons": sorted(int(p) for p in splits.loc[splits["fold"] == fold, "person"].unique()),
            "test_images": int((splits["fold"] == fold).sum()),
        }
    parts = {}
    for part in ("heldout", "train"):
        pooled = summarise(per_image[per_image["part"] == part])
        pooled["across_folds"] = {
            key: across_folds([fold_metrics[f"fold{fold}"][part][key] for fold in range(folds)])
            for key in ("mean_iou", "ap50", "ap50_95", "recall50")
        }
        parts[part] = pooled
    metrics = {
        "profile": "smoke",
        "dataset": {"images": len(splits), "images_annotated": len(splits) + 2, "images_missing": 2,
                    "folds": folds, "grouped_by": "person", "persons": persons},
        **parts,
        "folds": fold_metrics,
    }
    paths["metrics"].write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    return paths


def write_params(tmp_path: Path, example_images: int) -> Path:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["figures"]["example_images"] = example_images
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    return path


def figures_argv(paths: dict[str, Path], params: Path, out: Path) -> list[str]:
    return [
        "--params", str(params), "--profile", "default",
        "--metrics", str(paths["metrics"]), "--per-image", str(paths["per_image"]),
        "--pr-curves", str(paths["pr_curves"]), "--training", str(paths["training"]),
        "--splits", str(paths["splits"]), "--predictions", str(paths["predictions"]), "--out", str(out),
    ]


def test_main_writes_every_figure(tmp_path: Path) -> None:
    paths = write_detector_outputs(tmp_path)
    out = tmp_path / "reports/figures"

    assert figures.main(figures_argv(paths, write_params(tmp_path, 4), out)) == 0

    for name in FIGURE_NAMES:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert image.width >= 800, name
            assert 400 <= image.height <= 2000, name
    assert sorted(path.name for path in out.iterdir()) == sorted(FIGURE_NAMES)


def test_main_removes_stale_figures(tmp_path: Path) -> None:
    paths = write_detector_outputs(tmp_path)
    out = tmp_path / "reports/figures"
    out.mkdir(parents=True)
    (out / "zz_stale.png").write_bytes(b"from an older run")

    assert figures.main(figures_argv(paths, write_params(tmp_path, 2), out)) == 0

    assert sorted(path.name for path in out.iterdir()) == sorted(FIGURE_NAMES)
    assert not [path.name for path in out.parent.iterdir() if path.name.startswith(".")]


def test_failed_run_keeps_previous_figures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture) -> None:
    paths = write_detector_outputs(tmp_path)
    out = tmp_path / "reports/figures"
    out.mkdir(parents=True)
    previous = {name: f"previous {name}".encode() for name in FIGURE_NAMES}
    for name, content in previous.items():
        (out / name).write_bytes(content)

    def fail(*arguments, **options):
        raise DataError("pr curves failed")

    monkeypatch.setattr(figures, "plot_pr_curves", fail)
    status = figures.main(figures_argv(paths, write_params(tmp_path, 2), out))

    assert status == 1
    assert "pr curves failed" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == previous
    assert not [path.name for path in out.parent.iterdir() if path.name.startswith(".")]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda metrics: [], r"detector\.json: expected a JSON object, found list"),
        (lambda metrics: {**metrics, "folds": [1]}, r"detector\.json: folds is \[1\], expected a JSON object or null"),
        (lambda metrics: {**metrics, "heldout": 3}, r"detector\.json: heldout is 3, expected a JSON object or null"),
        (lambda metrics: {**metrics, "heldout": {**metrics["heldout"], "mean_iou": "abc"}},
         r"detector\.json: heldout\.mean_iou is 'abc', expected a number or null"),
        (lambda metrics: {**metrics, "folds": {**metrics["folds"], "fold0": {"train": []}}},
         r"detector\.json: folds\.fold0\.train is \[\], expected a JSON object or null"),
    ],
)
def test_main_rejects_bad_metrics_layout(tmp_path: Path, capsys: pytest.CaptureFixture, change, message) -> None:
    paths = write_detector_outputs(tmp_path)
    metrics = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    paths["metrics"].write_text(json.dumps(change(metrics)), encoding="utf-8")

    status = figures.main(figures_argv(paths, write_params(tmp_path, 2), tmp_path / "out"))

    error = capsys.readouterr().err
    assert status == 1
    assert re.search(message, error), error
    assert "Traceback" not in error
    assert not (tmp_path / "out").exists()


def test_main_draws_null_folds_as_na(tmp_path: Path) -> None:
    paths = write_detector_outputs(tmp_path)
    metrics = json.loads(paths["metrics"].read_text(encoding="utf-8"))
    metrics["folds"]["fold0"] = None
    metrics["heldout"] = None
    paths["metrics"].write_text(json.dumps(metrics), encoding="utf-8")

    assert figures.main(figures_argv(paths, write_params(tmp_path, 2), tmp_path / "out")) == 0


def test_pr_curves_with_null_folds() -> None:
    pr_curves = pd.DataFrame({"fold": [0, 0], "part": ["heldout", "heldout"], "recall": [0.5, 1.0],
                              "precision": [1.0, 0.8], "score": [0.9, 0.5]})

    for metrics in ({"folds": None}, {"folds": {"fold0": None}}):
        fig = figures.plot_pr_curves(pr_curves, metrics)
        labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
        assert labels == ["fold 0 (AP@0.5 n/a)"]


def test_main_reports_missing_training_curves(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = write_detector_outputs(tmp_path)
    for path in paths["training"].iterdir():
        path.unlink()

    status = figures.main(figures_argv(paths, write_params(tmp_path, 2), tmp_path / "out"))

    assert status == 1
    assert "no training curves found" in capsys.readouterr().err


def test_main_reports_missing_image(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    paths = write_detector_outputs(tmp_path)
    for path in paths["images"].iterdir():
        path.unlink()

    status = figures.main(figures_argv(paths, write_params(tmp_path, 2), tmp_path / "out"))

    assert status == 1
    assert "image not found or not readable" in capsys.readouterr().err


def test_select_examples_spans_best_to_worst() -> None:
    per_image = pd.DataFrame({
        "fold": [0] * 6,
        "part": ["heldout"] * 5 + ["train"],
        "image": ["a", "b", "c", "d", "e", "f"],
        "person": [1] * 6,
        "iou": [0.5, 0.9, np.nan, 0.7, 0.9, 1.0],
    })

    chosen = figures.select_examples(per_image, 3)

    assert list(chosen["image"]) == ["b", "d", "c"]
    assert list(chosen["rank"]) == [1, 3, 5]


def test_select_examples_ranks_images_by_mean_face_iou() -> None:
    per_image = pd.DataFrame({
        "fold": [0, 0, 0, 1],
        "part": ["heldout"] * 4,
        "image": ["two", "two", "one", "other"],
        "person": [1, 1, 2, 3],
        "iou": [0.9, 0.3, 0.7, 0.5],
    })

    chosen = figures.select_examples(per_image, 5)

    assert list(chosen["image"]) == ["one", "two", "other"]
    assert chosen["iou"].tolist() == pytest.approx([0.7, 0.6, 0.5])
    assert list(chosen["faces"]) == [1, 2, 1]
    assert list(chosen["of"]) == [3, 3, 3]


def test_select_examples_fewer_images_than_requested() -> None:
    per_image = pd.DataFrame({"fold": [0, 0], "part": ["heldout", "heldout"], "image": ["a", "b"], "person": [1, 2],
                              "iou": [0.2, 0.8]})

    chosen = figures.select_examples(per_image, 6)

    assert list(chosen["image"]) == ["b", "a"]


def test_focal_loss_gamma_zero_is_cross_entropy() -> None:
    p_t = np.array([0.1, 0.5, 0.9])

    assert np.allclose(figures.focal_loss(p_t, 0.0), -np.log(p_t))
    assert np.all(figures.focal_loss(p_t, 2.0) < -np.log(p_t))


def test_pr_curves_label_null_ap_as_na() -> None:
    pr_curves = pd.DataFrame({"fold": [0, 0], "part": ["heldout", "heldout"], "recall": [0.5, 1.0],
                              "precision": [1.0, 0.8], "score": [0.9, 0.5]})
    metrics = {"heldout": {"ap50": None}, "folds": {"fold0": {"heldout": {"ap50": None}}}}

    fig = figures.plot_pr_curves(pr_curves, metrics)

    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert labels == ["fold 0 (AP@0.5 n/a)"]
    assert "n/a" in fig.axes[0].get_title()


def test_focal_loss_adds_configured_gamma() -> None:
    fig = figures.plot_focal_loss(1.5)

    labels = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert len(labels) == len(figures.FOCAL_GAMMAS) + 1
    assert r"$\gamma$ = 1.5 (this run)" in labels


@pytest.mark.parametrize(("fold", "label", "key"), [(3, "fold 3", "fold3"), ("fold3", "fold 3", "fold3"),
                                                     ("2", "fold 2", "fold2")])
def test_fold_label_and_key(fold: object, label: str, key: str) -> None:
    assert figures.fold_label(fold) == label
    assert figures.fold_key(fold) == key


def test_plots_accept_empty_inputs(recwarn: pytest.WarningsRecorder) -> None:
    per_image = pd.DataFrame(columns=list(figures.PER_IMAGE_COLUMNS))
    pr_curves = pd.DataFrame(columns=list(figures.PR_COLUMNS))

    drawn = [
        figures.plot_per_image_iou(per_image, None, None, 0.943),
        figures.plot_pr_curves(pr_curves, {}),
        figures.plot_examples([], 0.5),
    ]

    for fig in drawn:
        fig.savefig(io.BytesIO(), format="png")
    assert figures.select_examples(per_image, 3).empty
    assert [str(warning.message) for warning in recwarn] == []


def test_read_csv_rejects_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "pr_curves.csv"
    path.write_text("", encoding="utf-8")

    with pytest.raises(figures.DataError, match="pr_curves.csv: invalid CSV"):
        figures.read_csv(path, figures.PR_COLUMNS)


def test_read_csv_names_missing_columns(tmp_path: Path) -> None:
    path = tmp_path / "pr_curves.csv"
    path.write_text("fold,part,recall\n0,heldout,0.5\n", encoding="utf-8")

    with pytest.raises(figures.DataError, match=r"missing columns precision, score \(found: fold, part, recall\)"):
        figures.read_csv(path, figures.PR_COLUMNS)


def two_face_example() -> figures.Example:
    """Build an example image with two faces: one matched by a detection, one missed."""
    faces = pd.DataFrame([
        {"fold": 0, "part": "heldout", "image": "a.jpg", "person": 1, "iou": 0.8, "score": 0.9,
         "gt_x1": 10.0, "gt_y1": 10.0, "gt_x2": 40.0, "gt_y2": 50.0,
         "pred_x1": 12.0, "pred_y1": 11.0, "pred_x2": 41.0, "pred_y2": 52.0},
        {"fold": 0, "part": "heldout", "image": "a.jpg", "person": 1, "iou": 0.0, "score": np.nan,
         "gt_x1": 60.0, "gt_y1": 15.0, "gt_x2": 90.0, "gt_y2": 55.0,
         "pred_x1": np.nan, "pred_y1": np.nan, "pred_x2": np.nan, "pred_y2": np.nan},
    ], columns=list(figures.PER_IMAGE_COLUMNS))
    detections = pd.DataFrame([[12.0, 11.0, 41.0, 52.0, 0.9], [95.0, 5.0, 115.0, 30.0, 0.6]],
                              columns=["x1", "y1", "x2", "y2", "score"])
    image = np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    return figures.Example(image=image, faces=faces, detections=detections, caption="a.jpg")


def test_examples_draw_every_face() -> None:
    fig = figures.plot_examples([two_face_example()], 0.5)

    patches = fig.axes[0].patches
    edge_colours = [matplotlib.colors.to_hex(patch.get_edgecolor()) for patch in patches]
    assert edge_colours.count(figures.TRUE_BOX_COLOUR.lower()) == 2
    assert edge_colours.count(figures.PREDICTED_BOX_COLOUR.lower()) == 1
    assert edge_colours.count(figures.OTHER_BOX_COLOUR.lower()) == 1
    texts = [text.get_text() for text in fig.axes[0].texts]
    assert "no detection for 1 of 2 faces" in texts


def test_other_detections_leave_out_matched_boxes() -> None:
    example = two_face_example()

    others = figures.other_detections(example.detections, example.faces, 0.5)

    assert others[["x1", "y1", "x2", "y2"]].to_numpy().tolist() == [[95.0, 5.0, 115.0, 30.0]]


def test_main_with_two_faces_and_background_image(tmp_path: Path) -> None:
    paths = write_detector_outputs(tmp_path)
    per_image = pd.read_csv(paths["per_image"])
    first = per_image[(per_image["part"] == "heldout") & per_image["pred_x1"].notna()].iloc[0]
    second_face = first.copy()
    second_face[["gt_x1", "gt_x2", "pred_x1", "pred_x2"]] += 5.0
    pd.concat([per_image, second_face.to_frame().T], ignore_index=True).to_csv(paths["per_image"], index=False)

    # A background image is listed in folds.csv and has detections, but no per_image.csv rows.
    cv2.imwrite(str(paths["images"] / "background.jpg"), np.zeros((IMAGE_HEIGHT, IMAGE_WIDTH, 3), np.uint8))
    with (paths["splits"] / "folds.csv").open("a") as handle:
        handle.write("background.jpg,99,0,../images/background.jpg\n")
    with (paths["predictions"] / "fold0.csv").open("a") as handle:
        handle.write("heldout,background.jpg,1.0,1.0,20.0,20.0,0.7\n")
    out = tmp_path / "reports/figures"

    assert figures.main(figures_argv(paths, write_params(tmp_path, 24), out)) == 0

    assert sorted(path.name for path in out.iterdir()) == sorted(FIGURE_NAMES)


@pytest.mark.parametrize("data_format, expected", [("caltech", 0.943), ("csv", None), ("voc", None), ("fddb", None)])
def test_original_study_mean_only_for_caltech(data_format: str, expected: float | None) -> None:
    params = {"dataset": {"format": data_format}, "report": {"paper_train_mean_iou": 0.943}}

    assert figures.original_study_mean(params) == expected


def test_per_image_iou_without_original_study_line(recwarn: pytest.WarningsRecorder) -> None:
    per_image = pd.DataFrame(columns=list(figures.PER_IMAGE_COLUMNS))

    with_line = figures.plot_per_image_iou(per_image, 0.8, 0.9, 0.943)
    without_line = figures.plot_per_image_iou(per_image, 0.8, 0.9, None)

    def labels(fig) -> list[str]:
        return [text.get_text() for legend in fig.legends + [ax.get_legend() for ax in fig.axes if ax.get_legend()]
                for text in legend.get_texts()]

    assert any("original study" in label for label in labels(with_line))
    assert not any("original study" in label for label in labels(without_line))
    assert [str(warning.message) for warning in recwarn] == []
