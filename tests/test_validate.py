"""Tests of ``emotivelens validate``, of the written CSV against keras-retinanet's reader, and of image loaders."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import app, convert, importers

WIDTH = 64
HEIGHT = 48


def write_image(path: Path, mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    pixels = np.random.default_rng(0).integers(0, 255, (HEIGHT, WIDTH, len(mode)), dtype=np.uint8)
    image = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    image.save(path, format="PNG" if path.suffix == ".png" else "JPEG")
    return path


def write_dataset(root: Path, rows: list[str]) -> Path:
    write_image(root / "a.jpg")
    write_image(root / "gray.jpg", mode="L")
    write_image(root / "alpha.png", mode="RGBA")
    write_image(root / "empty.jpg")
    (root / "classes.csv").write_text("face,0\n")
    (root / "annotations.csv").write_text("".join(f"{row}\n" for row in rows))
    return root / "annotations.csv"


GOOD_ROWS = ["a.jpg,1,2,30,40,face", "gray.jpg,5,5,20,20,face", "alpha.png,5,5,20,20,face", "empty.jpg,,,,,"]


def run_validate(capsys, *arguments: str) -> tuple[int, str]:
    status = app.main(["validate", *arguments])
    return status, capsys.readouterr().out


# --- command line ------------------------------------------------------------------------


def test_validate_clean_dataset(tmp_path, capsys):
    annotations = write_dataset(tmp_path, GOOD_ROWS)

    status, out = run_validate(capsys, "--format", "csv", str(annotations))

    assert status == 0
    assert "would write 4 of 4 images, 3 faces, 1 image without faces; 0 errors, 0 dropped" in out
    assert f"{annotations} line 2: image mode other than RGB: {tmp_path}/gray.jpg mode L: fixed" in out


def test_validate_counts_table(tmp_path, capsys):
    annotations = write_dataset(tmp_path, GOOD_ROWS + ["a.jpg,1.0,2,30,40,face", "a.jpg,1,2,30.5,40,FACE"])

    status, out = run_validate(capsys, "--format", "csv", str(annotations))

    table = [line.split() for line in out.splitlines() if line.startswith(("integer", "fractional", "class name"))]
    assert status == 0
    assert ["integer", "written", "as", "float", "fixed", "1"] in table
    assert ["fractional", "coordinate", "fixed", "1"] in table
    assert ["class", "name", "with", "stray", "spaces", "or", "other", "case", "fixed", "1"] in table


def test_validate_errors_exit_one(tmp_path, capsys):
    annotations = write_dataset(tmp_path, GOOD_ROWS + ["a.jpg,30,2,10,40,face", "a.jpg,1,2,30,40,cat"])

    status, out = run_validate(capsys, "--format", "csv", str(annotations))

    assert status == 1
    assert f"{annotations} line 5: corners in the wrong order: x1=30 y1=2 x2=10 y2=40: error" in out
    assert f"{annotations} line 6: unknown class name: 'cat': error" in out
    assert "2 errors, 0 dropped" in out


def test_validate_strict_fails_on_dropped(tmp_path, capsys):
    annotations = write_dataset(tmp_path, GOOD_ROWS + ["gone.jpg,1,2,30,40,face"])

    lenient, out = run_validate(capsys, "--format", "csv", str(annotations))
    strict, _ = run_validate(capsys, "--format", "csv", str(annotations), "--strict")

    assert lenient == 0
    assert strict == 1
    assert f"{annotations} line 5: missing image: {tmp_path}/gone.jpg: dropped" in out


def test_validate_no_image_left_exit_one(tmp_path, capsys):
    (tmp_path / "classes.csv").write_text("face,0\n")
    (tmp_path / "annotations.csv").write_text("gone.jpg,1,2,30,40,face\nlost.jpg,,,,,\n")

    status, out = run_validate(capsys, "--format", "csv", str(tmp_path / "annotations.csv"))

    assert status == 1
    assert "would write 0 of 2 images" in out
    assert "no image would be written" in out
    assert "none of the 2 annotated images is kept: 2 not found, 0 not readable, 0 with every box left out" in out


def test_validate_no_image_left_names_dropped_boxes(tmp_path, capsys):
    # The image exists and decodes, but its only box lies outside it.
    write_image(tmp_path / "a.jpg")
    (tmp_path / "classes.csv").write_text("face,0\n")
    (tmp_path / "annotations.csv").write_text(f"a.jpg,{WIDTH + 10},1,{WIDTH + 40},30,face\n")

    status, out = run_validate(capsys, "--format", "csv", str(tmp_path / "annotations.csv"))

    assert status == 1
    assert "none of the 1 annotated images is kept: 0 not found, 0 not readable, 1 with every box left out" in out


def test_validate_fddb_needs_images(tmp_path, capsys):
    status = app.main(["validate", "--format", "fddb", str(tmp_path)])

    assert status == 1
    assert "FDDB fold files need --images" in capsys.readouterr().err


def test_validate_groups_file_counts(tmp_path, capsys):
    annotations = write_dataset(tmp_path, GOOD_ROWS)
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\na.jpg,anna\ngray.jpg,anna\nalpha.png,ben\nempty.jpg,ben\n")

    status, out = run_validate(capsys, "--format", "csv", str(annotations), "--groups", str(groups))

    assert status == 0
    assert f"{groups}: 4 images in 2 groups" in out


def test_validate_groups_missing_image(tmp_path, capsys):
    annotations = write_dataset(tmp_path, GOOD_ROWS)
    groups = tmp_path / "groups.csv"
    groups.write_text("image,group\na.jpg,anna\ngray.jpg,anna\nalpha.png,ben\n")

    status, out = run_validate(capsys, "--format", "csv", str(annotations), "--groups", str(groups))

    assert status == 1
    assert f"error: {groups}: no group for 1 of 4 images (for example 'empty.jpg')" in out
    assert "1 error, 0 dropped" in out


@pytest.mark.parametrize("kind", ["latin-1", "folder"])
def test_validate_unreadable_groups_file(tmp_path, capsys, kind):
    annotations = write_dataset(tmp_path, GOOD_ROWS)
    groups = tmp_path / "groups.csv"
    if kind == "folder":
        groups.mkdir()
        expected = f"error: {groups}: cannot read the file: Is a directory"
    else:
        groups.write_bytes("image,group\na.jpg,Jos\xe9\n".encode("latin-1"))
        expected = f"error: {groups} line 2: byte 0xe9 is not valid UTF-8"

    status, out = run_validate(capsys, "--format", "csv", str(annotations), "--groups", str(groups))

    assert status == 1
    assert expected in out


def test_validate_groups_rejected_for_fddb(tmp_path, capsys):
    status = app.main(["validate", "--format", "fddb", str(tmp_path), "--images", str(tmp_path),
                       "--groups", str(tmp_path / "groups.csv")])

    assert status == 1
    assert "the fddb format has a fixed grouping" in capsys.readouterr().err


def test_validate_voc_folder(tmp_path, capsys):
    write_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "xml").mkdir()
    (tmp_path / "xml" / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><size><width>64</width><height>48</height></size>"
        "<object><name>face</name><bndbox><xmin>1</xmin><ymin>1</ymin><xmax>70</xmax><ymax>20</ymax>"
        "</bndbox></object></annotation>"
    )

    status, out = run_validate(capsys, "--format", "voc", str(tmp_path / "xml"), "--images", str(tmp_path / "images"))

    assert status == 0
    assert f"{tmp_path}/xml/a.xml object 1: box partly outside the image: x1=0 y1=0 x2=70 y2=20: fixed" in out
    assert "would write 1 of 1 images, 1 faces" in out


# --- keras-retinanet reads what convert writes ---------------------------------------------


def test_written_csv_accepted_by_keras_retinanet(tmp_path):
    from stages import kerascompat  # noqa: F401  (keras-retinanet must import the Keras 2 package)
    from keras_retinanet.preprocessing.csv_generator import _read_annotations, _read_classes

    annotations = write_dataset(tmp_path / "user", GOOD_ROWS + ["a.jpg,40.0,2,63.5,47.2, Face"])
    dataset = importers.read_csv(annotations)
    text, classes_text, _ = convert.convert(dataset, tmp_path / "interim" / "annotations.csv", None)

    classes = _read_classes(csv.reader(classes_text.splitlines()))
    parsed = _read_annotations(csv.reader(text.splitlines()), classes)

    assert classes == {"face": 0}
    assert parsed["../user/empty.jpg"] == []
    assert parsed["../user/a.jpg"] == [
        {"x1": 1, "y1": 2, "x2": 30, "y2": 40, "class": "face"},
        {"x1": 40, "y1": 2, "x2": 64, "y2": 48, "class": "face"},
    ]
    assert len(parsed) == 4


# --- image loaders -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "mode"), [("gray.jpg", "L"), ("alpha.png", "RGBA")])
def test_training_and_prediction_loaders_agree(tmp_path, name, mode):
    from stages import kerascompat  # noqa: F401  (keras-retinanet must import the Keras 2 package)
    from keras_retinanet.utils.image import read_image_bgr as training_loader

    from stages.predict import read_image

    path = write_image(tmp_path / name, mode=mode)

    training = training_loader(str(path))
    prediction = read_image(path)

    assert training.shape == (HEIGHT, WIDTH, 3)
    assert prediction.shape == (HEIGHT, WIDTH, 3)
    assert training.dtype == prediction.dtype == np.uint8
    np.testing.assert_array_equal(training, prediction)


def test_loaders_ignore_exif_orientation(tmp_path):
    from stages import kerascompat  # noqa: F401  (keras-retinanet must import the Keras 2 package)
    from keras_retinanet.utils.image import read_image_bgr as training_loader

    from stages.predict import read_image

    pixels = np.random.default_rng(1).integers(0, 255, (HEIGHT, WIDTH, 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF Orientation 6: viewers rotate the image by 90 degrees.
    path = tmp_path / "rotated.jpg"
    image.save(path, format="JPEG", exif=exif.tobytes())

    training = training_loader(str(path))
    prediction = read_image(path)

    assert training.shape == (HEIGHT, WIDTH, 3)
    np.testing.assert_array_equal(training, prediction)
