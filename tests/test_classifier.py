"""Classifier model: build, save and load, input preparation, model folder errors, ImageNet weights."""

from __future__ import annotations

import json
import os
from pathlib import Path

import h5py
import numpy as np
import pytest

from stages import classifier, train_classifier
from stages.download import resolve_mirror_root
from stages.errors import ModelError
from stages.params import load_params

TINY_CONFIG = {"backbone": "mobilenet_0.25", "input_size": 32, "dropout": 0.2}


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory) -> tuple[Path, object]:
    """Return a folder with a saved tiny random classifier and the model it came from."""
    classifier.keras.utils.set_random_seed(1)
    model = classifier.build_classifier(TINY_CONFIG, weights_path=None)
    model_dir = tmp_path_factory.mktemp("classifier") / "model"
    classifier.save_classifier(model, TINY_CONFIG, model_dir)
    return model_dir, model


@pytest.fixture(scope="module")
def loaded(saved_model) -> classifier.Classifier:
    """Return the saved tiny classifier, loaded once for the tests that only predict."""
    return classifier.load_classifier(saved_model[0])


def random_images() -> list[np.ndarray]:
    rng = np.random.default_rng(5)
    return [
        rng.integers(0, 256, size=(37, 53, 3), dtype=np.uint8),
        rng.integers(0, 256, size=(64, 64), dtype=np.uint8),
        rng.integers(0, 256, size=(19, 11, 1), dtype=np.uint8),
        rng.integers(0, 256, size=(129, 97, 4), dtype=np.uint8),
    ]


def test_round_trip_gives_identical_probabilities(saved_model):
    model_dir, model = saved_model
    loaded = classifier.load_classifier(model_dir)
    images = random_images()

    direct = model.predict_on_batch(loaded.prepare(images)).reshape(-1)
    probabilities = loaded.predict_proba(images)

    assert probabilities.dtype == np.float32
    assert probabilities.shape == (len(images),)
    np.testing.assert_array_equal(probabilities, direct.astype(np.float32))
    assert np.all((probabilities >= 0) & (probabilities <= 1))


def test_model_json_lists_rebuild_settings(saved_model):
    model_dir, _ = saved_model
    settings = json.loads((model_dir / "model.json").read_text())
    assert settings["backbone"] == "mobilenet_0.25"
    assert settings["input_size"] == 32
    assert settings["preprocessing"] == "tf"
    assert settings["classes"] == ["not_happy", "happy"]


def test_batches_do_not_change_probabilities(loaded):
    images = random_images() * 3

    whole = loaded.predict_proba(images)
    in_pairs = loaded.predict_proba(images, batch_size=2)

    np.testing.assert_allclose(whole, in_pairs, rtol=1e-5, atol=1e-6)


def test_empty_list_gives_empty_array(loaded):
    probabilities = loaded.predict_proba([])
    assert probabilities.shape == (0,)
    assert probabilities.dtype == np.float32


def test_grayscale_equals_its_bgr_copy(loaded):
    gray = np.random.default_rng(2).integers(0, 256, size=(45, 31), dtype=np.uint8)
    bgr = np.repeat(gray[:, :, None], 3, axis=2)
    probabilities = loaded.predict_proba([gray, bgr])
    assert probabilities[0] == probabilities[1]


def test_prepare_image_converts_bgr_to_rgb():
    bgr = np.zeros((32, 32, 3), dtype=np.uint8)
    bgr[:, :, 0] = 200  # blue in OpenCV's channel order
    rgb = classifier.prepare_image(bgr, 32)
    assert rgb[0, 0].tolist() == [0, 0, 200]


def test_prepare_image_resizes_to_square():
    image = np.full((17, 90), 77, dtype=np.uint8)
    prepared = classifier.prepare_image(image, 40)
    assert prepared.shape == (40, 40, 3)
    assert prepared.dtype == np.uint8
    assert np.all(prepared == 77)


@pytest.mark.parametrize("image, message", [
    (np.zeros((8, 8, 3), dtype=np.float32), "expected a uint8 numpy image, got float32"),
    (np.zeros((8, 8, 2), dtype=np.uint8), r"got \(8, 8, 2\)"),
    (np.zeros((0, 8, 3), dtype=np.uint8), "non-empty"),
])
def test_invalid_image_names_its_index(loaded, image, message):
    good = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(ValueError, match=rf"image 1: .*{message}"):
        loaded.predict_proba([good, image])


def copy_model(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in ("weights.h5", "model.json"):
        (target / name).write_bytes((source / name).read_bytes())
    return target


def test_missing_weights_file_names_the_path(saved_model, tmp_path):
    model_dir = copy_model(saved_model[0], tmp_path / "model")
    (model_dir / "weights.h5").unlink()
    with pytest.raises(ModelError, match=r"model/weights\.h5: not found"):
        classifier.load_classifier(model_dir)


def test_missing_model_json_names_the_path(tmp_path):
    with pytest.raises(ModelError, match=r"model\.json: not found; train the classifier"):
        classifier.load_classifier(tmp_path)


@pytest.mark.parametrize("text, message", [
    ("{not json", r"model\.json: invalid JSON at line 1"),
    ("[1, 2]", "expected a JSON object, got list"),
    ('{"backbone": "mobilenet_0.25"}', "missing keys input_size, preprocessing, classes"),
    ('{"backbone": "resnet9", "input_size": 32, "preprocessing": "tf", "classes": ["not_happy", "happy"]}',
     "backbone 'resnet9' is unknown"),
    ('{"backbone": "vgg19", "input_size": 32, "preprocessing": "tf", "classes": ["not_happy", "happy"]}',
     "preprocessing 'tf' does not match backbone vgg19"),
    ('{"backbone": "vgg19", "input_size": 8, "preprocessing": "caffe", "classes": ["not_happy", "happy"]}',
     "input_size 8 must be an integer of at least 32"),
    ('{"backbone": "vgg19", "input_size": 32, "preprocessing": "caffe", "classes": ["happy", "sad"]}',
     "classes .* differ"),
])
def test_malformed_model_json_is_rejected(saved_model, tmp_path, text, message):
    model_dir = copy_model(saved_model[0], tmp_path / "model")
    (model_dir / "model.json").write_text(text)
    with pytest.raises(ModelError, match=message):
        classifier.load_classifier(model_dir)


def test_weights_of_another_network_are_rejected(saved_model, tmp_path):
    model_dir = copy_model(saved_model[0], tmp_path / "model")
    (model_dir / "model.json").write_text(json.dumps(
        {"backbone": "vgg19", "input_size": 32, "preprocessing": "caffe", "classes": ["not_happy", "happy"]}))
    with pytest.raises(ModelError, match=r"weights\.h5: cannot load the classifier weights"):
        classifier.load_classifier(model_dir)


def test_backbone_weights_with_other_layer_names_are_rejected(tmp_path):
    keras = classifier.keras
    other = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, name="unrelated")])
    path = tmp_path / "other.h5"
    other.save_weights(str(path))
    with pytest.raises(ModelError, match=r"other\.h5: no weights for backbone layers conv1, conv1_bn"):
        classifier.build_classifier(TINY_CONFIG, path)


def test_frozen_layers_beyond_backbone_are_rejected():
    with pytest.raises(ModelError, match="frozen_layers is 500 but backbone mobilenet_0.25 has only"):
        classifier.build_classifier({**TINY_CONFIG, "frozen_layers": 500}, None)


def test_paper_profile_builds_vgg19_with_frozen_layers():
    params = load_params("params.yaml", "paper")["classifier"]
    assert params["backbone"] == "vgg19"
    # The layer list does not depend on the input size, and 32 pixels keep the test fast.
    model = classifier.build_classifier({**params, "input_size": 32}, weights_path=None)

    backbone = model.get_layer("vgg19")
    frozen = params["frozen_layers"]
    assert [layer.trainable for layer in backbone.layers[:frozen]] == [False] * frozen
    assert all(layer.trainable for layer in backbone.layers[frozen:])
    assert model.output_shape == (None, 1)


def test_real_imagenet_weights_load_into_mobilenet():
    mirror = resolve_mirror_root(None, os.environ)
    path = train_classifier.resolve_imagenet_weights("mobilenet_0.25", "imagenet", mirror)
    model = classifier.build_classifier({**TINY_CONFIG, "input_size": 96}, path)

    with h5py.File(path, "r") as handle:
        expected = np.asarray(handle["conv1"]["conv1"]["kernel:0"])
    loaded = model.get_layer("mobilenet_0.25_96").get_layer("conv1").kernel.numpy()
    np.testing.assert_array_equal(loaded, expected)
