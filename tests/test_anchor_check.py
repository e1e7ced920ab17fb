"""Anchor coverage check: boxes that no RetinaNet anchor matches at IoU 0.5 are counted and named."""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import anchor_check, train_detector
from stages.errors import DataError
from stages.params import PROJECT_ROOT

IMAGE_SIZE = (128, 96)  # width, height
NORMAL_BOXES = [(20, 15, 70, 75), (40, 10, 100, 80)]
TINY_BOX = (60, 40, 64, 44)


def write_csv(folder: Path, boxes, extra_rows=()) -> Path:
    """Write one gray image per box and a keras-retinanet CSV that lists them, paths relative to the CSV."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for index, box in enumerate(boxes):
        name = f"image_{index:04d}.jpg"
        Image.new("RGB", IMAGE_SIZE, (90, 90, 90)).save(folder / name)
        rows.append([name, *box, "face"])
    rows.extend(extra_rows)
    path = folder / "train.csv"
    with path.open("w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return path


def detector_params(min_side=160, max_side=240) -> dict:
    return {"image_min_side": min_side, "image_max_side": max_side}


def test_resized_shape_follows_keras_retinanet():
    # 592 x 896 (Caltech): 224 / 592 would make the long side 339 > 336, so 336 / 896 wins.
    shape, scale = anchor_check.resized_shape(592, 896, 224, 336)
    assert scale == pytest.approx(0.375)
    assert shape == (222, 336)
    shape, scale = anchor_check.resized_shape(592, 896, 800, 1333)
    assert scale == pytest.approx(800 / 592)
    assert shape == (800, 1211)


def test_normal_boxes_are_covered_without_warning(tmp_path, caplog):
    csv_path = write_csv(tmp_path, NORMAL_BOXES)
    with caplog.at_level(logging.INFO, logger="stages.anchor_check"):
        report = anchor_check.check_anchor_coverage(csv_path, detector_params())
    assert report.covered == 2
    assert report.share == 1.0
    assert "anchor coverage: 2 of 2 boxes (100.0%) have an anchor at IoU >= 0.5 at 160/240 px" in caplog.text
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


def test_tiny_box_warns_with_file_and_line(tmp_path, caplog):
    csv_path = write_csv(tmp_path, [*NORMAL_BOXES, TINY_BOX])
    with caplog.at_level(logging.INFO, logger="stages.anchor_check"):
        report = anchor_check.check_anchor_coverage(csv_path, detector_params())
    assert report.covered == 2
    assert report.share == pytest.approx(2 / 3)
    warnings = [record.getMessage() for record in caplog.records if record.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "66.7% of the boxes" in warnings[0]
    # The tiny box is line 3; 4 px at scale 160 / 96 is 7 px after resizing.
    assert f"{csv_path}:3 (image_0002.jpg): 7x7 px after resizing" in warnings[0]
    assert "no positive target for 1 of 3 boxes" in warnings[0]
    assert f"{csv_path}:1 " not in warnings[0]


@pytest.mark.parametrize(("box", "expected"), [
    # Equal to the 32 x 32 P3 anchor centred at (44, 44), a point of the stride-8 grid.
    ((28, 28, 60, 60), 1.0),
    # 16 x 16 at the same centre: every anchor there contains it and has an area of at least
    # 32^2, so the best IoU is 16^2 / 32^2.
    ((36, 36, 52, 52), 0.25),
])
def test_best_iou_is_hand_computed(tmp_path, box, expected):
    # 128 x 96 images at 96/128 px keep their size (scale 1).
    report = anchor_check.anchor_coverage(anchor_check.read_training_boxes(write_csv(tmp_path, [box])), 96, 128)
    assert report.boxes[0].resized_box == tuple(map(float, box))
    assert report.boxes[0].best_iou == pytest.approx(expected)


def test_window_matches_all_anchors():
    from keras_retinanet.utils.compute_overlap import compute_overlap

    rng = np.random.default_rng(5)
    for shape in [(222, 336), (225, 337), (97, 64)]:
        anchors = anchor_check.image_anchors(shape)
        height, width = shape
        centre_x, centre_y = rng.uniform(-20, width + 20, 200), rng.uniform(-20, height + 20, 200)
        box_width = np.exp(rng.uniform(np.log(2), np.log(1.5 * width), 200))
        box_height = box_width * np.exp(rng.uniform(-1.5, 1.5, 200))
        boxes = np.stack([centre_x - box_width / 2, centre_y - box_height / 2,
                          centre_x + box_width / 2, centre_y + box_height / 2], axis=1)
        expected = compute_overlap(anchors, boxes).max(axis=0)
        np.testing.assert_allclose(anchor_check.best_anchor_iou(anchors, boxes, shape), expected, atol=1e-12)


def test_anchors_outside_image_are_left_out():
    anchors = anchor_check.image_anchors((100, 100))
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert (centres < 100).all()
    # guess_shapes gives 13 P3 columns (stride 8) for 100 px; the 13th centre at 100 is outside.
    assert np.isclose(centres[:, 0], 100.0).sum() == 0
    assert np.isclose(centres[:, 0], 92.0).any()


def test_background_rows_are_skipped(tmp_path):
    csv_path = write_csv(tmp_path, NORMAL_BOXES, extra_rows=[["image_0000.jpg", "", "", "", "", ""]])
    boxes = anchor_check.read_training_boxes(csv_path)
    assert [box.line for box in boxes] == [1, 2]


def test_csv_without_boxes_warns(tmp_path, caplog):
    csv_path = write_csv(tmp_path, [], extra_rows=[["empty.jpg", "", "", "", "", ""]])
    report = anchor_check.check_anchor_coverage(csv_path, detector_params())
    assert report.share is None
    assert "no face boxes" in caplog.text


@pytest.mark.parametrize(("row", "message"), [
    (["image_0000.jpg", "20.0", "15", "70", "75", "face"], r"line 3: x1 \('20.0'\) is not an integer"),
    (["image_0000.jpg", "70", "15", "20", "75", "face"], r"line 3: box \(70, 15, 20, 75\) needs x2 > x1"),
    (["image_0000.jpg", "20", "15", "70"], r"line 3: expected 6 fields"),
])
def test_bad_rows_name_file_and_line(tmp_path, row, message):
    csv_path = write_csv(tmp_path, NORMAL_BOXES, extra_rows=[row])
    with pytest.raises(DataError, match=message):
        anchor_check.read_training_boxes(csv_path)


def test_missing_image_names_line(tmp_path):
    csv_path = write_csv(tmp_path, NORMAL_BOXES, extra_rows=[["gone.jpg", 1, 2, 30, 40, "face"]])
    with pytest.raises(DataError, match=r"line 3: image file .*gone.jpg not found"):
        anchor_check.check_anchor_coverage(csv_path, detector_params())


def test_training_stage_checks_every_fold_first(tmp_path, monkeypatch, caplog):
    splits = tmp_path / "splits"
    for fold in (0, 1):
        write_csv(splits / f"fold{fold}", [*NORMAL_BOXES, TINY_BOX][fold:])
    (tmp_path / "classes.csv").write_text("face,0\n")
    trained = []
    monkeypatch.setattr(train_detector, "train_all", lambda folds, *args: trained.extend(folds))

    with caplog.at_level(logging.INFO, logger="stages.anchor_check"):
        status = train_detector.main([
            "--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "smoke", "--splits", str(splits),
            "--classes", str(tmp_path / "classes.csv"), "--out", str(tmp_path / "models"),
            "--curves", str(tmp_path / "curves")])

    assert status == 0
    assert [fold.index for fold in trained] == [0, 1]
    assert f"{splits / 'fold0' / 'train.csv'}: anchor coverage: 2 of 3 boxes" in caplog.text
    assert f"{splits / 'fold1' / 'train.csv'}: anchor coverage: 1 of 2 boxes" in caplog.text
