"""Tests of stages.convert: box rounding, image checks, missing images and the command line."""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image

from stages import convert, importers
from stages.errors import DataError
from stages.params import PROJECT_ROOT

IMAGE_WIDTH = 64
IMAGE_HEIGHT = 48
MIRROR_MISSING = [f"image_{number:04d}.jpg" for number in range(399, 404)]


def corner_column(x1: float, y1: float, x2: float, y2: float) -> list[float]:
    """Return the 8 corner values of an upright box in ImageData.mat order (bl, tl, tr, br)."""
    return [x1, y2, x1, y1, x2, y1, x2, y2]


def write_jpeg(path: Path, mode: str = "RGB", size: tuple[int, int] = (IMAGE_WIDTH, IMAGE_HEIGHT)) -> Path:
    color = 128 if mode == "L" else (200, 120, 40)
    Image.new(mode, size, color).save(path, format="JPEG", quality=90)
    return path


def make_raw_dir(folder: Path, boxes: list[tuple[float, float, float, float]], missing: tuple[int, ...] = ()) -> Path:
    """Write ImageData.mat for ``boxes`` and one JPEG per box, except the 1-based numbers in ``missing``."""
    folder.mkdir(parents=True)
    corners = np.array([corner_column(*box) for box in boxes], dtype=float).T
    scipy.io.savemat(folder / convert.MAT_FILE, {convert.MAT_VARIABLE: corners})
    for number in range(1, len(boxes) + 1):
        if number not in missing:
            write_jpeg(folder / convert.image_name(number))
    return folder


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


# --- boxes -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("box", "size", "expected", "clipped"),
    [
        ((10.2, 20.7, 30.1, 40.0), (100, 100), (10, 20, 31, 40), False),
        ((5.0, -0.71, 50.0, 60.0), (100, 100), (5, 0, 50, 60), True),
        ((433.0, 37.18, 784.28, 592.48), (896, 592), (433, 37, 785, 592), True),
        ((0.0, 0.0, 100.0, 100.0), (100, 100), (0, 0, 100, 100), False),
        ((-3.5, 2.2, 100.01, 99.99), (100, 100), (0, 2, 100, 100), True),
    ],
)
def test_box_floor_ceil_clip(box, size, expected, clipped):
    face = importers.check_box(importers.RawBox(box, "face", "column 1"), *size, importers.ProblemLog())

    assert (face.x1, face.y1, face.x2, face.y2) == expected
    assert face.clipped == clipped


def test_corner_boxes_take_extremes():
    # Column 1 of the real ImageData.mat: a slightly rotated box.
    corners = np.array([[433.00, 526.90, 435.07, 41.31, 780.15, 37.18, 784.28, 533.09]]).T

    boxes = convert.corner_boxes(corners)

    np.testing.assert_allclose(boxes, [[433.00, 37.18, 784.28, 533.09]])


def test_check_corners_wrong_shape():
    with pytest.raises(DataError, match=r"ImageData\.mat: SubDir_Data has shape \(7, 3\), expected \(8, N\)"):
        convert.check_corners(np.zeros((7, 3)), "ImageData.mat")


def test_check_corners_non_finite_value():
    corners = np.zeros((8, 4))
    corners[5, 2] = np.nan

    with pytest.raises(DataError, match=r"SubDir_Data column 3 \(image_0003\.jpg\) row 5 is nan, expected a finite"):
        convert.check_corners(corners, "ImageData.mat")


def test_box_outside_image_drops_image(tmp_path, caplog):
    raw = make_raw_dir(tmp_path / "raw", [(1.0, 1.0, 10.0, 10.0), (70.25, 5.0, 90.0, 20.0)])

    with caplog.at_level(logging.WARNING, logger="stages.importers"):
        text, summary = convert.convert_dataset(raw, tmp_path / "annotations.csv", None)

    assert text == "raw/image_0001.jpg,1,1,10,10,face\n"
    assert summary["images_used"] == 1
    assert "box wholly outside the image: 1 dropped" in caplog.text
    assert "ImageData.mat SubDir_Data column 2: x1=70.25 y1=5 x2=90 y2=20" in caplog.text
    assert "image with every box left out: 1 dropped" in caplog.text


def test_clipped_boxes_logged_as_warning(tmp_path, caplog):
    boxes = [(1.0, 1.0, 10.0, 10.0), (5.0, -3.5, 70.0, 20.0), (5.0, -0.25, 20.0, 20.0)]
    raw = make_raw_dir(tmp_path / "raw", boxes)

    with caplog.at_level(logging.WARNING, logger="stages.importers"):
        _, summary = convert.convert_dataset(raw, tmp_path / "annotations.csv", None)

    assert summary["boxes_clipped"] == 2
    assert "box partly outside the image: 2 fixed" in caplog.text
    assert "column 2: x1=5 y1=-3.5 x2=70 y2=20" in caplog.text


# --- images ------------------------------------------------------------------------------


def test_grayscale_image_kept(tmp_path, caplog):
    raw = make_raw_dir(tmp_path / "raw", [(1.0, 1.0, 20.0, 20.0), (1.0, 1.0, 20.0, 20.0)])
    write_jpeg(raw / "image_0002.jpg", mode="L")

    with caplog.at_level(logging.WARNING, logger="stages.importers"):
        text, _ = convert.convert_dataset(raw, tmp_path / "annotations.csv", None)

    assert len(text.splitlines()) == 2
    assert "image mode other than RGB: 1 fixed" in caplog.text
    assert "image_0002.jpg mode L" in caplog.text


def test_truncated_and_non_image_dropped(tmp_path, caplog):
    raw = make_raw_dir(tmp_path / "raw", [(1.0, 1.0, 20.0, 20.0)] * 3)
    noise = np.random.default_rng(0).integers(0, 255, (IMAGE_HEIGHT, IMAGE_WIDTH, 3), dtype=np.uint8)
    Image.fromarray(noise).save(raw / "image_0002.jpg", format="JPEG", quality=95)
    data = (raw / "image_0002.jpg").read_bytes()
    (raw / "image_0002.jpg").write_bytes(data[: len(data) // 2])
    (raw / "image_0003.jpg").write_bytes(b"<html>not found</html>")

    with caplog.at_level(logging.WARNING, logger="stages.importers"):
        text, summary = convert.convert_dataset(raw, tmp_path / "annotations.csv", None)

    assert text == "raw/image_0001.jpg,1,1,20,20,face\n"
    assert summary["images_present"] == 3
    assert summary["images_used"] == 1
    assert "image cut short or not decodable: 2 dropped" in caplog.text


# --- selection ---------------------------------------------------------------------------


def test_select_evenly_spreads_over_range():
    names = [f"n{index}" for index in range(10)]

    assert convert.select_evenly(names, 4) == ["n0", "n3", "n6", "n9"]
    assert convert.select_evenly(names, None) == names
    assert convert.select_evenly(names, 10) == names
    assert convert.select_evenly(names, 50) == names


def test_select_evenly_keeps_distinct_names():
    names = [convert.image_name(number) for number in range(1, 446)]

    for count in (4, 24, 100, 444):
        selected = convert.select_evenly(names, count)
        assert len(set(selected)) == count
        assert selected[0] == names[0]
        assert selected[-1] == names[-1]


# --- whole conversion --------------------------------------------------------------------


def test_convert_dataset_rows_and_summary(tmp_path, caplog):
    boxes = [(10.2, 20.7, 30.1, 40.0), (5.0, -0.71, 50.0, 47.5), (1.0, 2.0, 3.0, 4.0), (0.0, 0.0, 64.0, 48.0)]
    raw = make_raw_dir(tmp_path / "data" / "raw" / "faces", boxes, missing=(3,))
    out_csv = tmp_path / "data" / "interim" / "annotations.csv"

    with caplog.at_level(logging.WARNING, logger="stages.importers"):
        text, summary = convert.convert_dataset(raw, out_csv, max_images=None)

    assert text.splitlines() == [
        "../raw/faces/image_0001.jpg,10,20,31,40,face",
        "../raw/faces/image_0002.jpg,5,0,50,48,face",
        "../raw/faces/image_0004.jpg,0,0,64,48,face",
    ]
    assert "missing image: 1 dropped" in caplog.text
    assert "image_0003.jpg" in caplog.text
    assert summary["images_annotated"] == 4
    assert summary["images_present"] == 3
    assert summary["images_missing"] == 1
    assert summary["missing_images"] == ["image_0003.jpg"]
    assert summary["images_used"] == 3
    assert summary["boxes"] == 3
    assert summary["boxes_clipped"] == 1
    assert summary["image_sizes"] == [{"width": IMAGE_WIDTH, "height": IMAGE_HEIGHT, "images": 3}]
    assert summary["box_width_px"] == {"min": 21, "mean": 43.33, "max": 64}
    assert summary["box_height_px"] == {"min": 20, "mean": 38.67, "max": 48}


def test_convert_dataset_max_images(tmp_path):
    boxes = [(1.0, 1.0, 20.0, 20.0)] * 9
    raw = make_raw_dir(tmp_path / "raw", boxes)

    text, summary = convert.convert_dataset(raw, tmp_path / "annotations.csv", max_images=4)

    assert [line.split(",")[0] for line in text.splitlines()] == [
        "raw/image_0001.jpg",
        "raw/image_0004.jpg",
        "raw/image_0006.jpg",
        "raw/image_0009.jpg",
    ]
    assert summary["images_used"] == 4
    assert summary["images_present"] == 9


def test_convert_dataset_missing_mat_file(tmp_path):
    (tmp_path / "raw").mkdir()

    with pytest.raises(DataError, match=r"raw/ImageData\.mat: file not found; run the download stage first"):
        convert.convert_dataset(tmp_path / "raw", tmp_path / "annotations.csv", None)


def test_convert_dataset_wrong_variable(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    scipy.io.savemat(raw / convert.MAT_FILE, {"Other": np.zeros((8, 2))})

    with pytest.raises(DataError, match=r"variable SubDir_Data not found \(variables: Other\)"):
        convert.convert_dataset(raw, tmp_path / "annotations.csv", None)


def test_main_writes_outputs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    make_raw_dir(Path("data/raw/caltech-faces-1999"), [(10.2, 20.7, 30.1, 40.0), (2.0, 3.0, 60.0, 45.0)])
    argv = [
        "--params", str(PROJECT_ROOT / "params.yaml"),
        "--raw", "data/raw/caltech-faces-1999",
        "--out-csv", "data/interim/annotations.csv",
        "--out-classes", "data/interim/classes.csv",
        "--summary", "reports/metrics/data.json",
    ]  # fmt: skip

    status = convert.main(argv)

    assert status == 0
    rows = read_rows(Path("data/interim/annotations.csv"))
    assert rows[0] == ["../raw/caltech-faces-1999/image_0001.jpg", "10", "20", "31", "40", "face"]
    for row in rows:
        assert (Path("data/interim") / row[0]).is_file()
    assert Path("data/interim/classes.csv").read_text() == "face,0\n"
    summary = json.loads(Path("reports/metrics/data.json").read_text())
    assert summary["boxes"] == 2
    assert sorted(entry.name for entry in Path("data/interim").iterdir()) == ["annotations.csv", "classes.csv"]


def write_user_dataset(root: Path) -> None:
    """Write a small keras-retinanet CSV dataset with the cases a user's own data often has."""
    (root / "images" / "sub").mkdir(parents=True)
    write_jpeg(root / "images" / "a.jpg")
    write_jpeg(root / "images" / "sub" / "gray.jpg", mode="L")
    Image.new("RGBA", (IMAGE_WIDTH, IMAGE_HEIGHT), (1, 2, 3, 4)).save(root / "images" / "alpha.png")
    write_jpeg(root / "images" / "empty.jpg")
    (root / "classes.csv").write_text("face,0\n")
    (root / "annotations.csv").write_text(
        "images/a.jpg,1,2,30.0,40,face\n"
        "images/a.jpg,30,10,70,47.5, Face\n"
        "images\\sub\\gray.jpg,5,5,20,20,face\n"
        "images/alpha.png,5,5,20,20,face\n"
        "images/empty.jpg,,,,,\n"
        "images/gone.jpg,5,5,20,20,face\n"
    )


def test_main_converts_csv_dataset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_user_dataset(Path("user"))
    argv = [
        "--params", str(PROJECT_ROOT / "params.yaml"),
        "--format", "csv", "--raw", "user/annotations.csv",
        "--out-csv", "data/interim/annotations.csv",
        "--out-classes", "data/interim/classes.csv",
        "--summary", "data.json",
    ]  # fmt: skip

    status = convert.main(argv)

    assert status == 0
    assert Path("data/interim/annotations.csv").read_text() == (
        "../../user/images/a.jpg,1,2,30,40,face\n"
        "../../user/images/a.jpg,30,10,64,48,face\n"
        "../../user/images/sub/gray.jpg,5,5,20,20,face\n"
        "../../user/images/alpha.png,5,5,20,20,face\n"
        "../../user/images/empty.jpg,,,,,\n"
    )
    assert Path("data/interim/classes.csv").read_text() == "face,0\n"
    summary = json.loads(Path("data.json").read_text())
    assert summary["images_annotated"] == 5
    assert summary["missing_images"] == ["images/gone.jpg"]
    assert summary["images_used"] == 4
    assert summary["boxes"] == 4
    assert summary["boxes_clipped"] == 1


def test_main_lists_every_error(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_user_dataset(Path("user"))
    with Path("user/annotations.csv").open("a") as handle:
        handle.write("images/a.jpg,40,2,30,40,face\nimages/a.jpg,1,2,30,40,cat\n")
    argv = [
        "--params", str(PROJECT_ROOT / "params.yaml"),
        "--format", "csv", "--raw", "user/annotations.csv",
        "--out-csv", "annotations.csv", "--out-classes", "classes.csv", "--summary", "data.json",
    ]  # fmt: skip

    status = convert.main(argv)

    error = capsys.readouterr().err
    assert status == 1
    assert "python -m stages.convert: error: 2 errors in the annotations:" in error
    assert "user/annotations.csv line 7: corners in the wrong order: x1=40 y1=2 x2=30 y2=40: error" in error
    assert "user/annotations.csv line 8: unknown class name: 'cat': error" in error
    assert not Path("annotations.csv").exists()
    assert not Path("data.json").exists()


# --- real data ---------------------------------------------------------------------------


def test_real_annotations(caltech_raw_dir, tmp_path):
    out_csv = tmp_path / "data" / "interim" / "annotations.csv"
    out_csv.parent.mkdir(parents=True)
    missing = MIRROR_MISSING if os.environ.get("EMOTIVELENS_MIRROR") else []

    text, summary = convert.convert_dataset(caltech_raw_dir, out_csv, max_images=None)

    rows = list(csv.reader(text.splitlines()))
    assert len(rows) == 450 - len(missing)
    assert summary["images_annotated"] == 450
    assert summary["missing_images"] == missing
    assert summary["images_missing"] == len(missing)
    assert summary["images_used"] == len(rows)
    assert summary["image_sizes"] == [{"width": 896, "height": 592, "images": len(rows)}]
    for path, x1, y1, x2, y2, class_name in rows:
        assert (out_csv.parent / path).is_file()
        assert 0 <= int(x1) < int(x2) <= 896
        assert 0 <= int(y1) < int(y2) <= 592
        assert class_name == "face"
    # Image 1's corners give the box (433.00, 37.18, 784.28, 533.09).
    assert rows[0][1:5] == ["433", "37", "785", "534"]


def test_real_annotations_smoke_subset(caltech_raw_dir, tmp_path):
    smoke_profile = yaml.safe_load((PROJECT_ROOT / "workflow" / "profiles" / "smoke.yaml").read_text())
    smoke_max_images = smoke_profile["convert"]["max_images"]

    text, summary = convert.convert_dataset(caltech_raw_dir, tmp_path / "annotations.csv", smoke_max_images)

    names = [line.split(",")[0].rsplit("/", 1)[-1] for line in text.splitlines()]
    assert len(names) == smoke_max_images
    assert len(set(names)) == smoke_max_images
    assert names[0] == "image_0001.jpg"
    assert names[-1] == "image_0450.jpg"
