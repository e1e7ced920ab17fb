"""Tests for stages.predict and the ``emotivelens predict`` command, with tiny random-weight models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from stages import app, predict
from stages.errors import ModelError

# A random detector scores every anchor at its prior probability (0.01), so threshold 0 keeps
# boxes and the classifier runs; --max-faces keeps the outputs short.
MODEL_ARGS_TEMPLATE = ["--face-threshold", "0", "--max-faces", "3"]
FACE_KEYS = {"box", "face_score", "happy_probability", "label"}
RECORD_KEYS = {"image", "width", "height", "faces", "detector", "classifier"}


# Every test here reuses the models loaded by earlier tests of the module (see conftest.py).
pytestmark = pytest.mark.usefixtures("reuse_loaded_predictors")


def model_args(models: tuple[Path, Path]) -> list[str]:
    return ["--detector", str(models[0]), "--classifier", str(models[1]), *MODEL_ARGS_TEMPLATE]


def sample_images(request, count: int) -> list[np.ndarray]:
    """Return ``count`` BGR images: real Caltech faces when the mirror is set, else synthetic."""
    if os.environ.get("EMOTIVELENS_MIRROR"):
        raw = request.getfixturevalue("caltech_raw_dir")
        paths = sorted(raw.glob("image_*.jpg"))[:count]
        return [cv2.resize(cv2.imread(str(path)), (224, 148), interpolation=cv2.INTER_AREA) for path in paths]
    generator = np.random.default_rng(7)
    images = []
    for index in range(count):
        image = np.full((148, 224, 3), 60 + 20 * index, dtype=np.uint8)
        cv2.circle(image, (112, 74), 40, (180, 190, 220), cv2.FILLED)
        images.append(np.clip(image + generator.integers(0, 20, image.shape), 0, 255).astype(np.uint8))
    return images


def check_record(record: dict, image_path: Path, width: int, height: int, models: tuple[Path, Path]) -> None:
    assert set(record) == RECORD_KEYS
    assert record["image"] == str(image_path)
    assert (record["width"], record["height"]) == (width, height)
    assert record["detector"] == str(models[0])
    assert record["classifier"] == str(models[1])
    assert 1 <= len(record["faces"]) <= 3
    for face in record["faces"]:
        assert set(face) == FACE_KEYS
        x1, y1, x2, y2 = face["box"]
        assert 0 <= x1 < x2 <= width
        assert 0 <= y1 < y2 <= height
        assert 0.0 <= face["face_score"] <= 1.0
        assert 0.0 <= face["happy_probability"] <= 1.0
        expected = "happy" if face["happy_probability"] >= predict.DEFAULT_HAPPY_THRESHOLD else "not happy"
        assert face["label"] == expected
    scores = [face["face_score"] for face in record["faces"]]
    assert scores == sorted(scores, reverse=True)


def test_output_names_unique():
    paths = [Path("a/x.jpg"), Path("b/x.png"), Path("c/x-2.jpg"), Path("d/X.jpg"), Path("e/y.jpg")]

    names = predict.output_names(paths)

    assert names == ["x", "x-3", "x-2", "X-4", "y"]
    assert len({name.casefold() for name in names}) == len(names)


def test_expand_inputs_folder_glob_missing(tmp_path):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("b.jpg", "a.PNG", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "empty").mkdir()

    paths, problems = predict.expand_inputs(
        [str(folder), str(folder / "*.jpg"), str(tmp_path / "missing.jpg"), str(tmp_path / "none-*.jpg"),
         str(tmp_path / "empty")])

    assert paths == [folder / "a.PNG", folder / "b.jpg", tmp_path / "missing.jpg"]
    assert [entry for entry, _ in problems] == [str(tmp_path / "none-*.jpg"), str(tmp_path / "empty")]
    assert "no files match" in problems[0][1]
    assert "no image files" in problems[1][1]


def test_read_image_conversions(tmp_path):
    gray = np.arange(48 * 64, dtype=np.uint32).reshape(48, 64).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "gray.png"), gray)
    rgba = np.zeros((30, 40, 4), dtype=np.uint8)
    rgba[..., 2] = 200
    rgba[..., 3] = 128
    cv2.imwrite(str(tmp_path / "rgba.png"), rgba)

    gray_read = predict.read_image(tmp_path / "gray.png")
    rgba_read = predict.read_image(tmp_path / "rgba.png")

    assert gray_read.shape == (48, 64, 3)
    assert np.array_equal(gray_read[..., 0], gray)
    assert rgba_read.shape == (30, 40, 3)
    assert rgba_read[0, 0, 2] == 200


@pytest.mark.parametrize("content, reason", [
    (None, "file not found"),
    (b"", "not a readable image"),
    (b"plain text, not an image", "not a readable image"),
])
def test_read_image_rejects(tmp_path, content, reason):
    path = tmp_path / "bad.jpg"
    if content is not None:
        path.write_bytes(content)

    with pytest.raises(predict.ImageReadError, match=reason):
        predict.read_image(path)


def test_read_image_truncated_jpeg(tmp_path):
    path = tmp_path / "truncated.jpg"
    data = cv2.imencode(".jpg", np.random.default_rng(1).integers(0, 255, (120, 160, 3), dtype=np.uint8))[1]
    path.write_bytes(data.tobytes()[: len(data) // 2])

    # OpenCV alone accepts this file, which is why read_image checks it again.
    assert cv2.imread(str(path)) is not None
    with pytest.raises(predict.ImageReadError, match="truncated"):
        predict.read_image(path)


def test_crop_settings_from_model_json():
    assert predict.crop_settings({}, "model.json") == predict.CropSettings(
        predict.DEFAULT_CROP_MARGIN, predict.DEFAULT_CROP_SIZE)
    assert predict.crop_settings({"crop_margin": 0.3, "crop_size": 64}, "model.json") == predict.CropSettings(0.3, 64)
    with pytest.raises(ModelError, match="crop_size is 0"):
        predict.crop_settings({"crop_size": 0}, "model.json")
    with pytest.raises(ModelError, match="crop_margin is 'wide'"):
        predict.crop_settings({"crop_margin": "wide"}, "model.json")


def test_crop_defaults_match_params():
    from stages.params import PROJECT_ROOT, load_params

    crop = load_params(PROJECT_ROOT / "params.yaml", "default")["smiles"]["crop"]

    assert predict.DEFAULT_CROP_MARGIN == crop["margin"]
    assert predict.DEFAULT_CROP_SIZE == crop["size"]


def test_annotate_draws_label_colours():
    image = np.zeros((120, 160, 3), dtype=np.uint8)
    faces = [predict.Face((10.0, 30.0, 60.0, 90.0), 0.9, 0.87, "happy"),
             predict.Face((90.0, 30.0, 150.0, 90.0), 0.8, 0.12, "not happy")]

    annotated = predict.annotate(image, faces, fps=12.5)

    assert not image.any()
    assert tuple(annotated[60, 10]) == predict.LABEL_COLOURS["happy"]
    assert tuple(annotated[60, 90]) == predict.LABEL_COLOURS["not happy"]
    assert annotated[5:15, 0:40].any()


def test_predict_mixed_inputs(tiny_models, tmp_path, request, capsys):
    images = sample_images(request, 3)
    folder = tmp_path / "folder"
    folder.mkdir()
    cv2.imwrite(str(folder / "face1.jpg"), images[0])
    cv2.imwrite(str(folder / "face2.jpg"), images[1])
    globbed = tmp_path / "globbed"
    globbed.mkdir()
    cv2.imwrite(str(globbed / "g1.jpg"), images[2])
    cv2.imwrite(str(tmp_path / "gray.png"), cv2.cvtColor(images[0], cv2.COLOR_BGR2GRAY))
    cv2.imwrite(str(tmp_path / "rgba.png"), cv2.cvtColor(images[1], cv2.COLOR_BGR2BGRA))
    jpeg = cv2.imencode(".jpg", images[2])[1].tobytes()
    (tmp_path / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    out = tmp_path / "out"

    status = app.main(["predict", str(folder), str(globbed / "*.jpg"), str(tmp_path / "missing.jpg"),
                       str(tmp_path / "truncated.jpg"), str(tmp_path / "gray.png"), str(tmp_path / "rgba.png"),
                       "--out", str(out), *model_args(tiny_models)])

    assert status == 1
    expected = {"face1": folder / "face1.jpg", "face2": folder / "face2.jpg", "g1": globbed / "g1.jpg",
                "gray": tmp_path / "gray.png", "rgba": tmp_path / "rgba.png"}
    assert sorted(path.name for path in out.iterdir()) == sorted(
        f"{name}{suffix}" for name in expected for suffix in (".jpg", ".json"))
    for name, source in expected.items():
        record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        check_record(record, source, 224, 148, tiny_models)
        assert cv2.imread(str(out / f"{name}.jpg")).shape == (148, 224, 3)
    summary = capsys.readouterr().err
    assert "5 of 7 images annotated" in summary
    assert "2 inputs failed" in summary
    assert f"{tmp_path / 'missing.jpg'} (file not found)" in summary
    assert f"{tmp_path / 'truncated.jpg'} (corrupt or truncated image" in summary


def test_predict_same_stem_no_overwrite(tiny_models, tmp_path, request):
    images = sample_images(request, 2)
    for folder, image in zip(("a", "b"), images):
        (tmp_path / folder).mkdir()
        cv2.imwrite(str(tmp_path / folder / "face.jpg"), image)
    out = tmp_path / "out"

    status = app.main(["predict", str(tmp_path / "*" / "face.jpg"), "--out", str(out), *model_args(tiny_models)])

    assert status == 0
    first = json.loads((out / "face.json").read_text(encoding="utf-8"))
    second = json.loads((out / "face-2.json").read_text(encoding="utf-8"))
    assert first["image"] == str(tmp_path / "a" / "face.jpg")
    assert second["image"] == str(tmp_path / "b" / "face.jpg")
    assert (out / "face.jpg").is_file()
    assert (out / "face-2.jpg").is_file()
    assert not [path for path in out.iterdir() if path.name.startswith(".")]


def test_predict_missing_model_folder(tmp_path, capsys):
    image_path = tmp_path / "x.png"
    cv2.imwrite(str(image_path), np.zeros((20, 20, 3), dtype=np.uint8))

    status = app.main(["predict", str(image_path), "--out", str(tmp_path / "out"),
                       "--detector", str(tmp_path / "no-detector")])

    assert status == 1
    error = capsys.readouterr().err
    assert f"detector folder {tmp_path / 'no-detector'} not found" in error
    assert "dvc repro train_final_detector" in error
    assert not (tmp_path / "out").exists()


def test_predict_no_images(tmp_path, capsys):
    status = app.main(["predict", str(tmp_path / "nothing-*.jpg"), "--out", str(tmp_path / "out")])

    assert status == 1
    assert "no images to process" in capsys.readouterr().err


@pytest.mark.parametrize("arguments", [
    ["predict"],
    ["predict", "x.jpg", "--face-threshold", "1.5"],
    ["predict", "x.jpg", "--happy-threshold", "high"],
    ["predict", "x.jpg", "--max-faces", "0"],
    ["unknown"],
])
def test_usage_errors_exit_2(arguments):
    with pytest.raises(SystemExit) as stop:
        app.main(arguments)

    assert stop.value.code == 2


def test_console_script_help():
    script = Path(sys.executable).parent / "emotivelens"
    assert script.is_file(), "console script missing; reinstall with `python -m pip install --no-deps -e .`"

    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=60)

    assert result.returncode == 0, result.stderr
    assert "predict" in result.stdout
    assert "stream" in result.stdout


def test_pad_for_detector_long_image():
    from keras_retinanet.utils.image import compute_resize_scale

    image = np.full((10, 10000, 3), 50, dtype=np.uint8)

    padded = predict.pad_for_detector(image, 224, 336)

    assert padded.shape[1] == 10000
    assert np.array_equal(padded[:10], image)
    assert not padded[10:].any()
    scale = compute_resize_scale(padded.shape, min_side=224, max_side=336)
    assert round(padded.shape[0] * scale) >= predict.MIN_DETECTOR_INPUT_SIDE
    photo = np.zeros((480, 640, 3), dtype=np.uint8)
    assert predict.pad_for_detector(photo, 224, 336) is photo


def test_clip_boxes_drops_boxes_outside():
    boxes = np.array([[-5.0, 2.0, 30.0, 8.0], [10.0, 12.0, 20.0, 40.0]])

    clipped, scores = predict.clip_boxes(boxes, np.array([0.9, 0.8]), width=50, height=10)

    assert clipped.tolist() == [[0.0, 2.0, 30.0, 8.0]]
    assert scores.tolist() == [0.9]


def test_predict_extreme_aspect_images(tiny_models, tmp_path):
    cv2.imwrite(str(tmp_path / "wide.png"), np.full((6, 2000, 3), 90, dtype=np.uint8))
    cv2.imwrite(str(tmp_path / "tall.png"), np.full((2000, 6, 3), 90, dtype=np.uint8))
    out = tmp_path / "out"

    status = app.main(["predict", str(tmp_path / "wide.png"), str(tmp_path / "tall.png"), "--out", str(out),
                       *model_args(tiny_models)])

    assert status == 0
    for name, (width, height) in {"wide": (2000, 6), "tall": (6, 2000)}.items():
        record = json.loads((out / f"{name}.json").read_text(encoding="utf-8"))
        assert (record["width"], record["height"]) == (width, height)
        for face in record["faces"]:
            x1, y1, x2, y2 = face["box"]
            assert 0 <= x1 < x2 <= width
            assert 0 <= y1 < y2 <= height


def test_predict_out_is_input_folder(tiny_models, tmp_path, request, capsys):
    image_path = tmp_path / "face.jpg"
    cv2.imwrite(str(image_path), sample_images(request, 1)[0])
    original = image_path.read_bytes()

    status = app.main(["predict", str(tmp_path), "--out", str(tmp_path), *model_args(tiny_models)])

    assert status == 1
    assert "1 inputs are inside --out" in capsys.readouterr().err
    assert image_path.read_bytes() == original
    assert sorted(path.name for path in tmp_path.iterdir()) == ["face.jpg"]


def test_predict_rerun_skips_own_outputs(tiny_models, tmp_path, request):
    photos = tmp_path / "photos"
    photos.mkdir()
    cv2.imwrite(str(photos / "face.jpg"), sample_images(request, 1)[0])
    out = photos / "annotated"
    arguments = ["predict", str(photos / "**" / "*.jpg"), "--out", str(out), *model_args(tiny_models)]

    assert app.main(arguments) == 0
    assert app.main(arguments) == 0

    assert sorted(path.name for path in out.iterdir()) == ["face.jpg", "face.json"]
    record = json.loads((out / "face.json").read_text(encoding="utf-8"))
    assert record["image"] == str(photos / "face.jpg")


@pytest.mark.parametrize("damage, message", [
    ("weights", "weights.h5: cannot load the detector weights"),
    ("json", "model.json: invalid JSON at line 1"),
    ("types", "model.json: feature_size is '16', expected a positive integer"),
    ("backbone", "model.json: backbone is 'mobilenet999', expected a keras-retinanet backbone"),
])
def test_predict_damaged_detector_folder(tiny_models, tmp_path, capsys, damage, message):
    detector = tmp_path / "detector"
    detector.mkdir()
    weights = (tiny_models[0] / "weights.h5").read_bytes()
    config = json.loads((tiny_models[0] / "model.json").read_text(encoding="utf-8"))
    if damage == "weights":
        weights = weights[:1000]
    if damage == "types":
        config["feature_size"] = "16"
    if damage == "backbone":
        config["backbone"] = "mobilenet999"
    (detector / "weights.h5").write_bytes(weights)
    (detector / "model.json").write_text("{" if damage == "json" else json.dumps(config), encoding="utf-8")
    image_path = tmp_path / "x.png"
    cv2.imwrite(str(image_path), np.zeros((20, 20, 3), dtype=np.uint8))

    status = app.main(["predict", str(image_path), "--out", str(tmp_path / "out"), "--detector", str(detector),
                       "--classifier", str(tiny_models[1])])

    assert status == 1
    assert f"{detector}/{message}" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("damage", ["classes", "encoding"])
def test_predict_damaged_classifier_settings(tiny_models, tmp_path, capsys, damage):
    classifier = tmp_path / "classifier"
    classifier.mkdir()
    (classifier / "weights.h5").write_bytes((tiny_models[1] / "weights.h5").read_bytes())
    config = json.loads((tiny_models[1] / "model.json").read_text(encoding="utf-8"))
    config["classes"] = 5
    text = json.dumps(config).encode("utf-8")
    (classifier / "model.json").write_bytes(text if damage == "classes" else b"\xff\xfe" + text)
    image_path = tmp_path / "x.png"
    cv2.imwrite(str(image_path), np.zeros((20, 20, 3), dtype=np.uint8))

    status = app.main(["predict", str(image_path), "--out", str(tmp_path / "out"),
                       "--detector", str(tiny_models[0]), "--classifier", str(classifier)])

    assert status == 1
    assert f"{classifier / 'model.json'}: damaged classifier settings" in capsys.readouterr().err


def test_predict_out_below_a_file(tiny_models, tmp_path, capsys):
    image_path = tmp_path / "x.png"
    cv2.imwrite(str(image_path), np.zeros((20, 20, 3), dtype=np.uint8))
    (tmp_path / "file").write_text("not a folder")

    status = app.main(["predict", str(image_path), "--out", str(tmp_path / "file" / "out"),
                       *model_args(tiny_models)])

    assert status == 1
    assert f"--out {tmp_path / 'file' / 'out'}: failed to create the output folder" in capsys.readouterr().err
