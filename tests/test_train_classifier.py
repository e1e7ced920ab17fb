"""Classifier training: samples.csv checks, fold and final runs, resume, class weights, weights files."""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from stages import train_classifier
from stages.errors import ChecksumError, DataError, TrainingError
from stages.params import PROJECT_ROOT, load_params

HEADER = "sample,path,label,fold,digest,source\n"


def pattern_image(label: int, index: int, size: int) -> np.ndarray:
    """Return a noisy gray square with a bright bar in its lower half when ``label`` is 1."""
    rng = np.random.default_rng(index)
    image = rng.integers(40, 90, size=(size, size), dtype=np.uint8)
    if label:
        image[size * 2 // 3:size * 2 // 3 + size // 8, size // 4:size * 3 // 4] = 230
    return image


def write_samples(root: Path, count: int = 12, folds: int = 2) -> Path:
    """Write ``count`` images (colour PNG and grayscale JPEG, two sizes) and their samples.csv."""
    image_dir = root / "images"
    image_dir.mkdir(parents=True)
    lines = [HEADER]
    for index in range(count):
        label = index % 2
        fold = (index // 2) % folds
        if index % 3 == 0:
            name = f"s{index:03d}.jpg"
            image = pattern_image(label, index, 64)
        else:
            name = f"s{index:03d}.png"
            image = cv2.cvtColor(pattern_image(label, index, 48), cv2.COLOR_GRAY2BGR)
        cv2.imwrite(str(image_dir / name), image)
        digest = hashlib.sha256(image.tobytes()).hexdigest()
        lines.append(f"s{index:03d},images/{name},{label},{fold},{digest},synthetic\n")
    samples_csv = root / "samples.csv"
    samples_csv.write_text("".join(lines))
    return samples_csv


def tiny_params(**overrides) -> dict:
    params = load_params(PROJECT_ROOT / "params.yaml", "smoke")["classifier"]
    params.update(weights="none", input_size=32, batch_size=4, epochs=1, dropout=0.0)
    params.update(overrides)
    return params


def train(root: Path, params: dict, final: bool = False) -> None:
    samples_csv = root / "samples.csv" if (root / "samples.csv").exists() else write_samples(root)
    samples = train_classifier.read_samples(samples_csv)
    out = root / ("final-model" if final else "models")
    train_classifier.train_all(samples, params, None, final, root / "checkpoints", out, root / "curves")


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_fold_training_publishes_one_model_per_fold(tmp_path):
    from stages import classifier

    train(tmp_path, tiny_params())

    for fold in (0, 1):
        model_dir = tmp_path / "models" / f"fold{fold}"
        assert (model_dir / "weights.h5").is_file()
        assert (model_dir / "model.json").is_file()
        assert not (model_dir / "epochs.csv").exists()
        rows = read_rows(tmp_path / "curves" / f"fold{fold}-epochs.csv")
        assert list(rows[0]) == ["epoch", "loss", "accuracy", "learning_rate", "seconds"]
        assert [row["epoch"] for row in rows] == ["1"]
        assert np.isfinite(float(rows[0]["loss"]))

    model = classifier.load_classifier(tmp_path / "models" / "fold0")
    image = cv2.imread(str(tmp_path / "images" / "s000.jpg"), cv2.IMREAD_UNCHANGED)
    assert model.predict_proba([image]).shape == (1,)


def test_final_command_publishes_model_in_out(tmp_path):
    samples_csv = write_samples(tmp_path)
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["classifier"]["weights"] = "none"
    params_path = tmp_path / "params.yaml"
    params_path.write_text(yaml.safe_dump(params))

    status = train_classifier.main([
        "--params", str(params_path), "--profile", "smoke", "--samples", str(samples_csv),
        "--out", str(tmp_path / "final"), "--curves", str(tmp_path / "curves"), "--final",
        "--checkpoints", str(tmp_path / "checkpoints")])

    assert status == 0
    assert sorted(path.name for path in (tmp_path / "final").iterdir()) == ["model.json", "weights.h5"]
    assert [row["epoch"] for row in read_rows(tmp_path / "curves" / "final-epochs.csv")] == ["1"]


def test_interrupted_training_resumes_from_checkpoint(tmp_path, monkeypatch, caplog):
    from stages import classifier_training

    params = tiny_params(epochs=2)
    original = classifier_training.record_epoch

    def stop_after_first_epoch(*args, **kwargs):
        original(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier_training, "record_epoch", stop_after_first_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(tmp_path, params, final=True)
    assert not (tmp_path / "final-model").exists()

    monkeypatch.setattr(classifier_training, "record_epoch", original)
    with caplog.at_level("INFO"):
        train(tmp_path, params, final=True)

    assert "final: resuming after epoch 1" in caplog.text
    rows = read_rows(tmp_path / "curves" / "final-epochs.csv")
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert (tmp_path / "final-model" / "weights.h5").is_file()

    caplog.clear()
    with caplog.at_level("INFO"):
        train(tmp_path, params, final=True)
    assert "final: reusing the finished model" in caplog.text


def test_non_finite_loss_stops_training(tmp_path, monkeypatch):
    from stages import classifier_training

    keras = classifier_training.keras

    def compile_with_nan_loss(model, learning_rate):
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                      loss=lambda y_true, y_pred: keras.backend.sum(y_pred) * float("nan"),
                      metrics=[keras.metrics.BinaryAccuracy(name="accuracy")])

    monkeypatch.setattr(classifier_training, "compile_classifier", compile_with_nan_loss)
    with pytest.raises(TrainingError, match=r"fold0: non-finite loss nan at epoch 1, step 1"):
        train(tmp_path, tiny_params())
    assert not (tmp_path / "models").exists()


def test_same_seed_gives_same_augmentation():
    from stages import classifier_training

    batch = np.random.default_rng(0).integers(0, 256, size=(3, 32, 32, 3), dtype=np.uint8)
    augmentation = tiny_params()["augmentation"]
    first = classifier_training.augment_batch(batch, augmentation, classifier_training.epoch_rng(4, 2))
    second = classifier_training.augment_batch(batch, augmentation, classifier_training.epoch_rng(4, 2))
    other = classifier_training.augment_batch(batch, augmentation, classifier_training.epoch_rng(4, 3))

    np.testing.assert_array_equal(first, second)
    assert not np.array_equal(first, other)


def test_augmentation_off_keeps_images():
    from stages import classifier_training

    batch = np.random.default_rng(1).integers(0, 256, size=(2, 32, 32, 3), dtype=np.uint8)
    off = {"flip_x_chance": 0.0, "max_rotation_deg": 0, "max_translation": 0.0, "max_zoom": 0.0, "max_brightness": 0.0}
    np.testing.assert_array_equal(classifier_training.augment_batch(batch, off, np.random.default_rng(0)), batch)


def test_flip_mirrors_left_and_right():
    from stages import classifier_training

    batch = np.random.default_rng(2).integers(0, 256, size=(1, 32, 32, 3), dtype=np.uint8)
    flip_only = {"flip_x_chance": 1.0, "max_rotation_deg": 0, "max_translation": 0.0, "max_zoom": 0.0,
                 "max_brightness": 0.0}
    flipped = classifier_training.augment_batch(batch, flip_only, np.random.default_rng(0))
    np.testing.assert_array_equal(flipped, batch[:, :, ::-1])


def test_balanced_class_weights_equalize_class_totals():
    labels = np.array([0, 0, 0, 1])
    weights = train_classifier.class_weights(labels, "balanced")
    assert weights == {0: pytest.approx(4 / 6), 1: pytest.approx(2.0)}
    assert 3 * weights[0] == pytest.approx(1 * weights[1])


def test_class_weight_none_is_uniform():
    assert train_classifier.class_weights(np.array([0, 1, 1]), "none") == {0: 1.0, 1: 1.0}


def test_balanced_class_weights_need_both_classes():
    with pytest.raises(TrainingError, match=r"class counts are \[0, 2\]"):
        train_classifier.class_weights(np.array([1, 1]), "balanced")


@pytest.mark.parametrize("cap, training_images, expected", [
    (None, 100_000, 12),
    (48000, 3200, 12),
    (48000, 10526, 4),
    (48000, 60000, 1),
])
def test_run_epochs_follow_image_cap(cap, training_images, expected):
    params = {"epochs": 12, "max_training_images": cap}
    assert train_classifier.run_epochs(params, training_images) == expected


def test_fold_runs_train_on_other_folds(tmp_path):
    samples = train_classifier.read_samples(write_samples(tmp_path, count=12, folds=3))
    runs = train_classifier.plan_runs(samples, final=False)

    assert [run.name for run in runs] == ["fold0", "fold1", "fold2"]
    for fold, run in enumerate(runs):
        assert np.all(samples.folds[run.rows] != fold)
        assert len(run.rows) == 8
    final = train_classifier.plan_runs(samples, final=True)
    assert [run.name for run in final] == ["final"]
    assert len(final[0].rows) == 12


def test_samples_paths_resolve_against_csv_folder(tmp_path):
    samples = train_classifier.read_samples(write_samples(tmp_path))
    assert samples.paths[0] == tmp_path / "images" / "s000.jpg"
    assert samples.labels.tolist()[:4] == [0, 1, 0, 1]


@pytest.mark.parametrize("rows, message", [
    ("sample,path,label\n", r"line 1: missing columns fold, digest"),
    (HEADER + "a,x.png,2,0,d,\n", r"line 2: label is 2, expected 0 or 1"),
    (HEADER + "a,x.png,yes,0,d,\n", r"line 2: label is 'yes', expected 0 or 1"),
    (HEADER + "a,x.png,1,-1,d,\n", r"line 2: fold is -1"),
    (HEADER + "a,x.png,1,0,d,\na,y.png,0,1,d,\n", r"line 3: sample 'a' already appears on line 2"),
    (HEADER + "a,,1,0,d,\n", r"line 2: path is empty"),
    (HEADER, r"no sample rows"),
])
def test_malformed_samples_csv_is_rejected(tmp_path, rows, message):
    path = tmp_path / "samples.csv"
    path.write_text(rows)
    with pytest.raises(DataError, match=message):
        train_classifier.read_samples(path)


def test_single_fold_needs_final(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "a,x.png,1,0,d,\nb,y.png,0,0,d,\n")
    with pytest.raises(DataError, match="only fold 0 is present"):
        train_classifier.plan_runs(train_classifier.read_samples(path), final=False)


def test_one_class_training_rows_are_rejected(tmp_path):
    path = tmp_path / "samples.csv"
    path.write_text(HEADER + "a,x.png,1,0,d,\nb,y.png,1,1,d,\nc,z.png,0,1,d,\n")
    with pytest.raises(DataError, match="training rows of fold1 contain only label 1"):
        train_classifier.plan_runs(train_classifier.read_samples(path), final=False)


def test_unreadable_image_names_the_file(tmp_path):
    from stages import classifier_training

    path = tmp_path / "broken.png"
    path.write_bytes(b"not an image")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        classifier_training.load_images([path], 32)


def write_weights_mirror(root: Path, content: bytes, listed_hash: str | None = None) -> Path:
    folder = root / "keras-weights"
    folder.mkdir(parents=True)
    name = train_classifier.IMAGENET_WEIGHTS["mobilenet_0.25"].filename
    (folder / name).write_bytes(content)
    digest = listed_hash or hashlib.sha256(content).hexdigest()
    (folder / "SHA256SUMS").write_text(f"{digest}  {name}\n")
    return root


def test_mirror_weights_are_checked_against_sha256sums(tmp_path):
    mirror = write_weights_mirror(tmp_path, b"weights")
    path = train_classifier.resolve_imagenet_weights("mobilenet_0.25", "imagenet", mirror)
    assert path == tmp_path / "keras-weights" / "mobilenet_2_5_224_tf_no_top.h5"


def test_mirror_weights_with_wrong_hash_are_rejected(tmp_path):
    mirror = write_weights_mirror(tmp_path, b"weights", listed_hash="0" * 64)
    with pytest.raises(ChecksumError, match="sha256 is .* but .*SHA256SUMS expects 0{64}"):
        train_classifier.resolve_imagenet_weights("mobilenet_0.25", "imagenet", mirror)


def test_mirror_without_sums_entry_is_rejected(tmp_path):
    mirror = write_weights_mirror(tmp_path, b"weights")
    (tmp_path / "keras-weights" / "SHA256SUMS").write_text(f"{'1' * 64}  other.h5\n")
    with pytest.raises(TrainingError, match=r"SHA256SUMS: no entry for mobilenet_2_5_224_tf_no_top\.h5"):
        train_classifier.resolve_imagenet_weights("mobilenet_0.25", "imagenet", mirror)


def test_failed_download_says_how_to_avoid_it(tmp_path, monkeypatch):
    from stages import kerascompat

    def fail(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(kerascompat.keras().utils, "get_file", fail)
    with pytest.raises(TrainingError, match=r"vgg19.*network is unreachable.*EMOTIVELENS_MIRROR.*weights to none"):
        train_classifier.resolve_imagenet_weights("vgg19", "imagenet", tmp_path)


def test_weights_none_needs_no_file(tmp_path):
    assert train_classifier.resolve_imagenet_weights("vgg19", "none", tmp_path) is None


def test_run_key_changes_with_crop_bytes(tmp_path):
    # A retrained detector crops faces differently; samples.csv (rows, source digests) stays the same.
    samples = train_classifier.read_samples(write_samples(tmp_path))
    before = train_classifier.run_key(tiny_params(), samples, None)
    assert train_classifier.run_key(tiny_params(), samples, None) == before
    cv2.imwrite(str(samples.paths[0]), np.flipud(pattern_image(0, 0, 32)))
    assert train_classifier.run_key(tiny_params(), samples, None) != before


def test_run_key_names_a_missing_image(tmp_path):
    samples = train_classifier.read_samples(write_samples(tmp_path))
    samples.paths[1].unlink()
    with pytest.raises(DataError, match=f"image {samples.paths[1]} not found"):
        train_classifier.run_key(tiny_params(), samples, None)
