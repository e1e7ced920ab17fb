"""Detector training: one-step smoke run, resume after an interruption, non-finite loss, weights."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from stages import train_detector
from stages.errors import ChecksumError
from stages.params import load_params



def tiny_detector_params(**overrides) -> dict:
    params = load_params("params.yaml", "smoke")["detector"]
    params.update(
        weights="none", image_min_side=64, image_max_side=96, feature_size=8,
        batch_size=2, epochs=1, steps_per_epoch=1)
    params.update(overrides)
    return params


def run_training(tmp_path: Path, params: dict, write_fold: Callable[..., Path]) -> Path:
    splits = tmp_path / "splits" if (tmp_path / "splits").exists() else write_fold(tmp_path)
    folds = train_detector.find_folds(splits)
    train_detector.train_all(folds, tmp_path / "classes.csv", params, None, tmp_path / "checkpoints",
                             tmp_path / "models", tmp_path / "curves")
    return tmp_path


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_one_step_training_writes_model_and_curves(tmp_path, write_training_fold):
    run_training(tmp_path, tiny_detector_params(), write_training_fold)

    model_dir = tmp_path / "models" / "fold0"
    assert (model_dir / "weights.h5").is_file()
    assert (model_dir / "model.json").is_file()
    steps = read_rows(tmp_path / "curves" / "fold0-steps.csv")
    assert len(steps) == 1
    assert math.isfinite(float(steps[0]["loss"]))
    epochs = read_rows(tmp_path / "curves" / "fold0-epochs.csv")
    assert [row["epoch"] for row in epochs] == ["1"]


def test_trained_model_predicts_boxes_in_image_pixels(tmp_path, write_training_fold):
    from stages import detector

    run_training(tmp_path, tiny_detector_params(), write_training_fold)
    model = detector.load_prediction_model(tmp_path / "models" / "fold0", max_detections=5, score_threshold=0.0)
    image = detector.read_image_bgr(tmp_path / "images" / "image_0000.jpg")
    boxes, scores = detector.predict_image(model, image)

    assert boxes.shape[1] == 4
    assert boxes.shape[0] == scores.shape[0] <= 5
    assert np.all(np.diff(scores) <= 0)


def test_interrupted_training_resumes_from_checkpoint(tmp_path, monkeypatch, caplog, write_training_fold):
    from stages import detector_training

    params = tiny_detector_params(epochs=2)
    original = detector_training.TrainingMonitor.on_epoch_end

    def stop_after_first_epoch(self, epoch, logs=None):
        original(self, epoch, logs)
        raise KeyboardInterrupt

    monkeypatch.setattr(detector_training.TrainingMonitor, "on_epoch_end", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_training(tmp_path, params, write_training_fold)
    assert not (tmp_path / "models").exists()

    monkeypatch.setattr(detector_training.TrainingMonitor, "on_epoch_end", original)
    with caplog.at_level("INFO"):
        run_training(tmp_path, params, write_training_fold)

    assert "resuming after epoch 1" in caplog.text
    epochs = read_rows(tmp_path / "curves" / "fold0-epochs.csv")
    assert [row["epoch"] for row in epochs] == ["1", "2"]
    steps = read_rows(tmp_path / "curves" / "fold0-steps.csv")
    assert [row["global_step"] for row in steps] == ["1", "2"]


def test_finished_fold_is_reused_not_retrained(tmp_path, caplog, write_training_fold):
    params = tiny_detector_params()
    run_training(tmp_path, params, write_training_fold)
    with caplog.at_level("INFO"):
        run_training(tmp_path, params, write_training_fold)
    assert "reusing the finished model" in caplog.text


def test_non_finite_loss_stops_with_loss_parts(tmp_path, monkeypatch, write_training_fold):
    import tensorflow as tf

    from stages import detector

    def nan_loss(y_true, y_pred):
        return tf.reduce_sum(y_pred) * float("nan")

    def compile_with_nan_loss(model, focal, learning_rate, clipnorm):
        model.compile(loss={"regression": nan_loss, "classification": nan_loss},
                      optimizer=detector.keras.optimizers.Adam(learning_rate=learning_rate))

    monkeypatch.setattr(detector, "compile_training_model", compile_with_nan_loss)
    with pytest.raises(train_detector.TrainingError, match=r"non-finite loss at epoch 1, step 1: loss nan"):
        run_training(tmp_path, tiny_detector_params(), write_training_fold)
    assert not (tmp_path / "models").exists()


def write_weights_mirror(root: Path, content: bytes, listed_hash: str | None = None) -> Path:
    folder = root / "keras-weights"
    folder.mkdir(parents=True)
    name = train_detector.imagenet_weights_filename("mobilenet224_0.25")
    (folder / name).write_bytes(content)
    digest = listed_hash or hashlib.sha256(content).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  {name}\n")
    return root


def test_mirror_weights_are_checked_against_sha256sums(tmp_path):
    mirror = write_weights_mirror(tmp_path, b"weights")
    path = train_detector.resolve_backbone_weights("mobilenet224_0.25", "imagenet", mirror)
    assert path.name == "mobilenet_2_5_224_tf_no_top.h5"


def test_mirror_weights_with_wrong_hash_are_rejected(tmp_path):
    mirror = write_weights_mirror(tmp_path, b"weights", listed_hash="0" * 64)
    with pytest.raises(ChecksumError, match="sha256 is .* but .*SHA256SUMS expects 0{64}"):
        train_detector.resolve_backbone_weights("mobilenet224_0.25", "imagenet", mirror)


def test_mirror_without_weights_file_names_the_path(tmp_path):
    with pytest.raises(train_detector.TrainingError, match=r"ResNet-50-model\.keras\.h5.*not found"):
        train_detector.resolve_backbone_weights("resnet50", "imagenet", tmp_path)


def test_weights_none_needs_no_file(tmp_path):
    assert train_detector.resolve_backbone_weights("resnet50", "none", tmp_path) is None


def test_resnet_from_random_weights_has_trainable_batch_norm():
    from stages import detector

    config = {"backbone": "resnet50", "image_min_side": 64, "image_max_side": 96, "feature_size": 8}
    model = detector.build_training_model(config, pretrained=False)
    batch_norms = [layer for layer in model.layers if hasattr(layer, "freeze")]
    assert batch_norms
    assert all(layer.trainable and not layer.freeze for layer in batch_norms)


def test_paper_profile_builds_resnet50_retinanet():
    from stages import detector

    params = load_params("params.yaml", "paper")["detector"]
    model = detector.build_training_model(params, pretrained=True)

    assert params["backbone"] == "resnet50"
    assert params["image_min_side"] == 800
    assert model.get_layer("P3").filters == 256
    assert [output.name.split("/")[0] for output in model.outputs] == ["regression", "classification"]


def test_same_seed_gives_same_augmented_batches(tmp_path, write_training_fold):
    from stages import detector
    from stages.detector_training import make_generator

    splits = write_training_fold(tmp_path, images=4)
    params = tiny_detector_params()
    model = detector.build_training_model(params, pretrained=False)

    batches = []
    for _ in range(2):
        # Training seeds Python's random module (the batch order) per fold in the same way.
        detector.keras.utils.set_random_seed(3)
        generator = make_generator(splits / "fold0" / "train.csv", tmp_path / "classes.csv", params, model, seed=3)
        batches.append(generator[0][0])

    np.testing.assert_array_equal(batches[0], batches[1])


def test_missing_class_mapping_is_named_before_training(tmp_path, capsys, write_training_fold):
    splits = write_training_fold(tmp_path)
    missing = tmp_path / "no-such-classes.csv"
    argv = ["--splits", str(splits), "--classes", str(missing), "--out", str(tmp_path / "models"),
            "--curves", str(tmp_path / "curves"), "--checkpoints", str(tmp_path / "checkpoints")]
    assert train_detector.main(argv) == 1
    assert f"{missing}: file not found" in capsys.readouterr().err
    assert not (tmp_path / "checkpoints").exists()


def test_run_key_changes_with_image_bytes(tmp_path, write_training_fold):
    splits = write_training_fold(tmp_path)
    fold = train_detector.find_folds(splits)[0]
    params = tiny_detector_params()
    classes = tmp_path / "classes.csv"
    before = train_detector.run_key(params, fold, classes, None)
    assert train_detector.run_key(params, fold, classes, None) == before

    image = tmp_path / "images" / "image_0001.jpg"
    pixels = np.asarray(Image.open(image)).copy()
    pixels[0, 0] = 255 - pixels[0, 0]
    Image.fromarray(pixels).save(image)

    assert train_detector.run_key(params, fold, classes, None) != before


def test_run_key_names_missing_image(tmp_path, write_training_fold):
    splits = write_training_fold(tmp_path)
    fold = train_detector.find_folds(splits)[0]
    (tmp_path / "images" / "image_0002.jpg").unlink()
    with pytest.raises(train_detector.TrainingError, match=r"train\.csv: image '\.\./\.\./images/image_0002\.jpg' not found"):
        train_detector.run_key(tiny_detector_params(), fold, tmp_path / "classes.csv", None)
