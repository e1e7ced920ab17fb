"""Tests of stages.sweep_detector: bad settings and paths, checks before training, and a tiny two-fold run."""

from __future__ import annotations

import csv
import json
import logging
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages import focal_sweep, sweep_detector
from stages.errors import TrainingError
from stages.params import PROJECT_ROOT, ParamsError, load_params

IMAGE_SIZE = (128, 96)  # width, height
IMAGES = 8
FOLDS = 2


def write_split_folder(root: Path) -> None:
    """Write IMAGES synthetic pictures with one bright box each, split by person into FOLDS folds.

    Creates ``images/``, ``splits/`` (folds.csv and fold<k>/train.csv, test.csv in the layout of
    stages.split), ``classes.csv`` and ``data.json`` under ``root``.
    """
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    rng = np.random.default_rng(0)
    rows = []
    for index in range(IMAGES):
        pixels = rng.integers(0, 60, size=(IMAGE_SIZE[1], IMAGE_SIZE[0], 3), dtype=np.uint8)
        x1, y1 = 20 + 4 * index, 10 + 2 * index
        x2, y2 = x1 + 50, y1 + 60
        pixels[y1:y2, x1:x2] = 220
        name = f"image_{index:04d}.jpg"
        Image.fromarray(pixels).save(image_dir / name)
        person = index // 2
        rows.append({"image": name, "person": person, "fold": person % FOLDS, "box": [x1, y1, x2, y2]})

    splits = root / "splits"
    splits.mkdir()
    with (splits / "folds.csv").open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "person", "fold", "path"])
        writer.writerows([row["image"], row["person"], row["fold"], f"../images/{row['image']}"] for row in rows)
    for fold in range(FOLDS):
        fold_dir = splits / f"fold{fold}"
        fold_dir.mkdir()
        for name, in_part in (("test.csv", lambda row: row["fold"] == fold), ("train.csv", lambda row: row["fold"] != fold)):
            with (fold_dir / name).open("w", newline="") as handle:
                csv.writer(handle).writerows(
                    [f"../../images/{row['image']}", *row["box"], "face"] for row in rows if in_part(row))
    (root / "classes.csv").write_text("face,0\n")
    (root / "data.json").write_text(json.dumps({"images_annotated": IMAGES, "images_missing": 0}))


def write_tiny_params(root: Path) -> Path:
    """Write params.yaml with a random-weight, 64-96 px detector, one step per epoch and one sweep epoch.

    focal_sweep.threads is 0 because TensorFlow accepts a thread count only before it starts,
    and other tests in the same process may have started it already.
    """
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["detector"].update(weights="none", image_min_side=64, image_max_side=96, feature_size=8,
                              batch_size=2, epochs=3, steps_per_epoch=1)
    params["focal_sweep"].update(epochs=1, threads=0)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def sweep_arguments(root: Path, gamma: str = "0.5", alpha: str = "0.25", **paths: Path) -> list[str]:
    """Return the command line of one cell; ``paths`` overrides out, metrics, splits, classes or checkpoints."""
    chosen = {"splits": root / "splits", "classes": root / "classes.csv", "data_summary": root / "data.json",
              "out": root / "sweep" / f"gamma{gamma}-alpha{alpha}",
              "metrics": root / "reports" / f"gamma{gamma}-alpha{alpha}.json", "checkpoints": root / "checkpoints",
              **paths}
    return ["--params", str(root / "params.yaml"), "--profile", "default", "--gamma", gamma, "--alpha", alpha,
            *[item for key, path in chosen.items() for item in (f"--{key.replace('_', '-')}", str(path))]]


@pytest.fixture
def sweep_root(tmp_path: Path) -> Path:
    write_split_folder(tmp_path)
    write_tiny_params(tmp_path)
    return tmp_path


def folder_snapshot(folder: Path) -> dict[str, bytes]:
    return {str(path.relative_to(folder)): path.read_bytes() for path in sorted(folder.rglob("*")) if path.is_file()}


# --- Settings --------------------------------------------------------------------------


@pytest.mark.parametrize(("gamma", "alpha", "message"), [
    (float("nan"), 0.25, r"detector\.focal\.gamma: nan is not of type 'number'"),
    (float("inf"), 0.25, r"detector\.focal\.gamma: inf is not of type 'number'"),
    (11.0, 0.25, r"detector\.focal\.gamma: 11\.0 is greater than the maximum of 10"),
    (-0.5, 0.25, r"detector\.focal\.gamma: -0\.5 is less than the minimum of 0"),
    (2.0, 1.5, r"detector\.focal\.alpha: 1\.5 is greater than the maximum of 1"),
    (2.0, float("nan"), r"detector\.focal\.alpha: nan is not of type 'number'"),
])
def test_invalid_focal_setting_rejected(gamma: float, alpha: float, message: str) -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", "default")

    with pytest.raises(ParamsError, match=message):
        sweep_detector.sweep_detector_params(params, gamma, alpha, "params.yaml")


def test_sweep_epochs_replace_detector_epochs() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", "default")
    shipped_detector = dict(params["detector"])

    detector = sweep_detector.sweep_detector_params(params, 0.5, 0.75, "params.yaml")

    assert detector["focal"] == {"gamma": 0.5, "alpha": 0.75}
    assert detector["epochs"] == params["focal_sweep"]["epochs"]
    assert params["detector"] == shipped_detector


def test_overflowing_gamma_rejected(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    # float("1e400") is inf, which the schema's finite-number check rejects.
    assert sweep_detector.main(sweep_arguments(sweep_root, gamma="1e400")) == 1

    error = capsys.readouterr().err
    assert "--gamma inf" in error
    assert "detector.focal.gamma: inf is not of type 'number'" in error
    assert not (sweep_root / "checkpoints").exists()


def test_non_numeric_gamma_usage_error(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        sweep_detector.main(sweep_arguments(sweep_root, gamma="high"))

    assert exit_info.value.code == 2
    assert "argument --gamma: invalid float value: 'high'" in capsys.readouterr().err


def test_threads_after_tensorflow_started_rejected() -> None:
    from stages import detector

    detector.tf.constant(1.0).numpy()  # runs an operation, which starts TensorFlow's thread pools
    current = detector.tf.config.threading.get_intra_op_parallelism_threads()

    with pytest.raises(TrainingError, match=rf"focal_sweep\.threads is {current + 1}, but TensorFlow has already started"):
        sweep_detector.limit_threads(current + 1)


# --- Paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(("paths", "message"), [
    ({"out": "splits"}, "overlaps --splits"),
    ({"out": "splits/fold0"}, "overlaps --splits"),
    ({"out": "."}, "overlaps --splits"),
    ({"metrics": "sweep/gamma0.5-alpha0.25/metrics.json"}, "--metrics .* is inside --out"),
    ({"checkpoints": "sweep/gamma0.5-alpha0.25/checkpoints"}, "--checkpoints .* is inside --out"),
    ({"classes": "sweep/gamma0.5-alpha0.25/classes.csv"}, "--classes .* is inside --out"),
])
def test_out_overlapping_inputs_rejected(sweep_root: Path, capsys: pytest.CaptureFixture, paths: dict,
                                                  message: str) -> None:
    before = folder_snapshot(sweep_root)

    with pytest.raises(SystemExit) as exit_info:
        sweep_detector.main(sweep_arguments(sweep_root, **{key: sweep_root / value for key, value in paths.items()}))

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert folder_snapshot(sweep_root) == before


def test_metrics_folder_rejected(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    metrics = sweep_root / "reports" / "gamma0.5-alpha0.25.json"
    metrics.mkdir(parents=True)

    with pytest.raises(SystemExit) as exit_info:
        sweep_detector.main(sweep_arguments(sweep_root, metrics=metrics))

    assert exit_info.value.code == 2
    assert f"--metrics {metrics} is a folder" in capsys.readouterr().err
    assert not (sweep_root / "checkpoints").exists()


@pytest.mark.parametrize("option", ["out", "metrics", "checkpoints"])
def test_output_below_a_file_rejected(sweep_root: Path, capsys: pytest.CaptureFixture, option: str) -> None:
    blocking = sweep_root / "data.json"

    with pytest.raises(SystemExit) as exit_info:
        sweep_detector.main(sweep_arguments(sweep_root, **{option: blocking / "gamma0.5-alpha0.25"}))

    assert exit_info.value.code == 2
    assert f"because {blocking} is a file, not a folder" in capsys.readouterr().err
    assert not (sweep_root / "checkpoints").exists()


def test_missing_folds_csv_before_training(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    (sweep_root / "splits" / "folds.csv").unlink()

    assert sweep_detector.main(sweep_arguments(sweep_root)) == 1

    assert f"{sweep_root / 'splits' / 'folds.csv'}: file not found" in capsys.readouterr().err
    assert not (sweep_root / "checkpoints").exists()


def test_missing_test_csv_before_training(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    (sweep_root / "splits" / "fold1" / "test.csv").unlink()

    assert sweep_detector.main(sweep_arguments(sweep_root)) == 1

    assert f"{sweep_root / 'splits' / 'fold1' / 'test.csv'}: file not found" in capsys.readouterr().err
    assert not (sweep_root / "checkpoints").exists()


def test_fold_not_in_folds_csv_rejected(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    stale = sweep_root / "splits" / "fold2"
    stale.mkdir()
    (stale / "train.csv").write_bytes((sweep_root / "splits" / "fold0" / "train.csv").read_bytes())

    assert sweep_detector.main(sweep_arguments(sweep_root)) == 1

    assert "fold*/train.csv exists for folds [0, 1, 2], but folds.csv lists folds [0, 1]" in capsys.readouterr().err
    assert not (sweep_root / "checkpoints").exists()


def test_inputs_accept_several_faces_and_background(sweep_root: Path) -> None:
    splits = sweep_root / "splits"
    Image.new("RGB", IMAGE_SIZE).save(sweep_root / "images" / "empty.jpg")
    with (splits / "folds.csv").open("a") as handle:
        handle.write("empty.jpg,0,0,../images/empty.jpg\n")
    second_face = "../../images/image_0000.jpg,90,10,120,60,face\n"
    with (splits / "fold0" / "test.csv").open("a") as handle:
        handle.write(second_face + "../../images/empty.jpg,,,,,\n")
    with (splits / "fold1" / "train.csv").open("a") as handle:
        handle.write(second_face + "../../images/empty.jpg,,,,,\n")
    training_folds = sweep_detector.train_detector.find_folds(splits)

    evaluate_params = load_params(sweep_root / "params.yaml")["evaluate"]

    inputs = sweep_detector.read_evaluation_inputs(splits, sweep_root / "data.json", evaluate_params, training_folds)

    heldout = inputs.annotations[inputs.annotations["part"] == "heldout"]
    assert (heldout["image"] == "image_0000.jpg").sum() == 2
    assert heldout.loc[heldout["image"] == "empty.jpg", "x1"].isna().all()


def test_missing_data_summary_before_training(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    (sweep_root / "data.json").unlink()

    assert sweep_detector.main(sweep_arguments(sweep_root)) == 1

    assert f"{sweep_root / 'data.json'}: file not found" in capsys.readouterr().err
    assert not (sweep_root / "checkpoints").exists()


def test_missing_classes_file_is_named(sweep_root: Path, capsys: pytest.CaptureFixture) -> None:
    (sweep_root / "classes.csv").unlink()

    assert sweep_detector.main(sweep_arguments(sweep_root)) == 1

    error = capsys.readouterr().err
    assert f"{sweep_root / 'classes.csv'}: file not found" in error
    assert "Traceback" not in error


# --- Training and evaluation ------------------------------------------------------------


def test_interrupted_cell_resumes_cleanly(sweep_root: Path, monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    arguments = sweep_arguments(sweep_root)
    out = sweep_root / "sweep" / "gamma0.5-alpha0.25"
    metrics = sweep_root / "reports" / "gamma0.5-alpha0.25.json"
    real_evaluate = sweep_detector.evaluate_models

    def interrupt_evaluation(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sweep_detector, "evaluate_models", interrupt_evaluation)
    assert sweep_detector.main(arguments) == 130
    assert not out.exists()
    assert not metrics.exists()
    assert [path.name for path in sweep_root.rglob("*.tmp")] == []

    monkeypatch.setattr(sweep_detector, "evaluate_models", real_evaluate)
    with caplog.at_level(logging.INFO):
        assert sweep_detector.main(arguments) == 0

    assert "fold 0: reusing the finished model" in caplog.text
    assert "fold 1: reusing the finished model" in caplog.text
    assert sorted(path.name for path in out.iterdir()) == ["curves", "models", "predictions"]
    assert sorted(path.name for path in (out / "predictions").iterdir()) == ["fold0.csv", "fold1.csv"]
    assert [path.name for path in sweep_root.rglob("*.tmp")] == []

    report = json.loads(metrics.read_text(encoding="utf-8"))
    assert report["setting"] == {"gamma": 0.5, "alpha": 0.25, "epochs": 1}
    assert report["dataset"]["folds"] == FOLDS
    assert sorted(report["folds"]) == ["fold0", "fold1"]
    # The summary stage reads this file as one setting of the grid.
    setting = focal_sweep.read_setting(metrics, 0.5, 0.25)
    assert setting.report["setting"]["epochs"] == 1
