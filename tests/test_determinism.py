"""Two runs with the same seed and profile give identical splits, models' detections and metrics.

Both runs happen in this process, each with its own output and checkpoint folders, so the
second run cannot reuse anything of the first.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from stages import evaluate_detector, split, train_detector
from stages.params import PROJECT_ROOT

IMAGE_SIZE = (128, 96)  # width, height
PERSONS = 4
IMAGES_PER_PERSON = 2
TINY_DETECTOR = {"weights": "none", "image_min_side": 64, "image_max_side": 96, "feature_size": 8,
                 "batch_size": 2, "epochs": 1, "steps_per_epoch": 2}
# An untrained detector scores below the usual thresholds, so every detection is kept. The
# comparison then covers boxes and scores, not only empty tables.
EVALUATE = {"iou_score_threshold": 0.0, "ap_score_threshold": 0.0, "max_detections": 20}
# The prediction time of each image is measured, so it differs from run to run.
TIMED_KEYS = ("timing",)


def write_dataset(root: Path) -> None:
    """Write images with one bright box each, their annotation CSV, person ranges and data.json."""
    image_dir = root / "data" / "raw"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for number in range(1, PERSONS * IMAGES_PER_PERSON + 1):
        pixels = rng.integers(0, 60, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
        x1, y1 = 10 + 6 * number, 8 + 3 * number
        x2, y2 = x1 + 48, y1 + 56
        pixels[y1:y2, x1:x2] = 220
        name = f"image_{number:04d}.jpg"
        Image.fromarray(pixels).save(image_dir / name)
        rows.append([f"../raw/{name}", x1, y1, x2, y2, "face"])

    interim = root / "data" / "interim"
    interim.mkdir()
    with (interim / "annotations.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    (interim / "classes.csv").write_text("face,0\n")
    ranges = [f"{person},{(person - 1) * IMAGES_PER_PERSON + 1},{person * IMAGES_PER_PERSON}"
              for person in range(1, PERSONS + 1)]
    (interim / "persons.csv").write_text("person,first_image,last_image\n" + "\n".join(ranges) + "\n")
    images = PERSONS * IMAGES_PER_PERSON
    (interim / "data.json").write_text(json.dumps(
        {"images_annotated": images, "images_present": images, "images_missing": 0, "missing_images": []}))

    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["profile"] = "default"
    params["split"]["folds"] = 2
    params["detector"].update(TINY_DETECTOR)
    params["evaluate"].update(EVALUATE)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")


def params_arguments(root: Path) -> list[str]:
    return ["--params", str(root / "params.yaml"), "--profile", "default"]


def run_split(root: Path, out: Path) -> None:
    interim = root / "data" / "interim"
    argv = [*params_arguments(root), "--annotations", str(interim / "annotations.csv"),
            "--persons", str(interim / "persons.csv"), "--out", str(out)]
    assert split.main(argv) == 0


def run_pipeline(root: Path, name: str) -> Path:
    """Split, train and evaluate into ``root/name``; return that folder."""
    run_dir = root / name
    splits = run_dir / "splits"
    run_split(root, splits)
    interim = root / "data" / "interim"
    train_argv = [*params_arguments(root), "--splits", str(splits), "--classes", str(interim / "classes.csv"),
                  "--out", str(run_dir / "models"), "--curves", str(run_dir / "curves"),
                  "--checkpoints", str(run_dir / "checkpoints")]
    assert train_detector.main(train_argv) == 0
    evaluate_argv = [*params_arguments(root), "--splits", str(splits), "--models", str(run_dir / "models"),
                     "--predictions", str(run_dir / "predictions"), "--metrics", str(run_dir / "metrics.json"),
                     "--per-image", str(run_dir / "per_image.csv"), "--pr-curves", str(run_dir / "pr_curves.csv"),
                     "--data-summary", str(interim / "data.json")]
    assert evaluate_detector.main(evaluate_argv) == 0
    return run_dir


def relative_files(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def without_timing(metrics_path: Path) -> str:
    report = json.loads(metrics_path.read_text(encoding="utf-8"))
    for key in TIMED_KEYS:
        # pop without a default fails when the key is renamed, instead of comparing it silently.
        report.pop(key)
    return json.dumps(report, sort_keys=True, indent=2)


def curve_losses(path: Path) -> list[dict]:
    """Read a curve CSV without its wall-clock and memory columns."""
    with path.open(newline="", encoding="utf-8") as handle:
        return [{key: value for key, value in row.items() if key not in ("seconds", "peak_memory_mib")}
                for row in csv.DictReader(handle)]


def test_split_same_seed_same_folds(tmp_path):
    write_dataset(tmp_path)
    run_split(tmp_path, tmp_path / "first")
    run_split(tmp_path, tmp_path / "second")

    files = relative_files(tmp_path / "first")
    assert files == ["fold0/test.csv", "fold0/train.csv", "fold1/test.csv", "fold1/train.csv", "folds.csv"]
    assert files == relative_files(tmp_path / "second")
    for name in files:
        assert (tmp_path / "first" / name).read_bytes() == (tmp_path / "second" / name).read_bytes(), name


def test_split_other_seed_other_folds(tmp_path):
    write_dataset(tmp_path)
    run_split(tmp_path, tmp_path / "first")
    params = yaml.safe_load((tmp_path / "params.yaml").read_text(encoding="utf-8"))
    folds_by_seed = set()
    for seed in range(1, 6):
        params["split"]["seed"] = seed
        (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
        run_split(tmp_path, tmp_path / f"seed{seed}")
        folds_by_seed.add((tmp_path / f"seed{seed}" / "folds.csv").read_text(encoding="utf-8"))
    # Otherwise the identical folds of the test above could come from a split that ignores the seed.
    assert len(folds_by_seed) > 1


def test_training_and_evaluation_repeat_exactly(tmp_path):
    write_dataset(tmp_path)
    first = run_pipeline(tmp_path, "first")
    second = run_pipeline(tmp_path, "second")

    predictions = (first / "predictions" / "fold0.csv").read_text(encoding="utf-8").splitlines()
    assert len(predictions) > 1
    assert without_timing(first / "metrics.json") == without_timing(second / "metrics.json")
    for name in ("per_image.csv", "pr_curves.csv", "predictions/fold0.csv", "predictions/fold1.csv"):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    for fold in (0, 1):
        for kind in ("steps", "epochs"):
            name = f"curves/fold{fold}-{kind}.csv"
            assert curve_losses(first / name) == curve_losses(second / name), name
        weights = f"models/fold{fold}/weights.h5"
        assert (first / weights).read_bytes() == (second / weights).read_bytes(), weights

