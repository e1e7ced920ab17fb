"""Tests of stages.evaluate_detector on a tiny two-fold split with a fake predictor."""

import json
import logging
import os
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from stages import evaluate_detector as stage
from stages.errors import DataError
from stages.params import PROJECT_ROOT, ParamsError

# Image file name -> (person, fold, face box [x1, y1, x2, y2] in pixels).
IMAGES = {
    "image_0001.jpg": (10, 0, [4, 3, 20, 25]),
    "image_0002.jpg": (10, 0, [6, 2, 24, 22]),
    "image_0003.jpg": (2, 0, [10, 5, 30, 28]),
    "image_0004.jpg": (3, 1, [2, 2, 18, 20]),
    "image_0005.jpg": (3, 1, [8, 4, 26, 27]),
    "image_0006.jpg": (4, 1, [12, 6, 36, 29]),
}
EVALUATE_PARAMS = {"iou_score_threshold": 0.5, "ap_score_threshold": 0.05, "max_detections": 100}


def write_split(root):
    """Write images, folds.csv, fold<k>/{train,test}.csv and data.json as the earlier stages would."""
    images_dir = root / "data" / "images"
    images_dir.mkdir(parents=True)
    for name in IMAGES:
        Image.new("RGB", (40, 30), color=(120, 90, 60)).save(images_dir / name)

    splits = root / "data" / "splits"
    splits.mkdir(parents=True)
    folds = pd.DataFrame(
        [(name, person, fold, f"../images/{name}") for name, (person, fold, _) in IMAGES.items()],
        columns=["image", "person", "fold", "path"],
    )
    folds.to_csv(splits / "folds.csv", index=False)
    for fold in (0, 1):
        fold_dir = splits / f"fold{fold}"
        fold_dir.mkdir()
        for file_name, in_part in (("test.csv", lambda f: f == fold), ("train.csv", lambda f: f != fold)):
            lines = [
                f"../../images/{name},{x1},{y1},{x2},{y2},face\n"
                for name, (_, image_fold, (x1, y1, x2, y2)) in IMAGES.items()
                if in_part(image_fold)
            ]
            (fold_dir / file_name).write_text("".join(lines))

    data_summary = root / "reports" / "metrics" / "data.json"
    data_summary.parent.mkdir(parents=True)
    data_summary.write_text(
        json.dumps({"images_annotated": 7, "images_present": 6, "images_missing": 1, "missing_images": ["x.jpg"]})
    )
    return splits


def stage_arguments(root):
    return [
        "--params", str(PROJECT_ROOT / "params.yaml"),
        "--profile", "default",
        "--splits", str(root / "data" / "splits"),
        "--models", str(root / "data" / "models" / "detector"),
        "--predictions", str(root / "data" / "predictions" / "detector"),
        "--metrics", str(root / "reports" / "metrics" / "detector.json"),
        "--per-image", str(root / "reports" / "detector" / "per_image.csv"),
        "--pr-curves", str(root / "reports" / "detector" / "pr_curves.csv"),
        "--data-summary", str(root / "reports" / "metrics" / "data.json"),
    ]  # fmt: skip


def predictor_loader(detections_by_image, calls=None):
    """Return a PredictorLoader whose models all return ``detections_by_image[file name]``."""

    def load(fold):
        def predict(path):
            if calls is not None:
                calls.append((fold, path.name))
            boxes, scores = detections_by_image.get(path.name, ([], []))
            return np.asarray(boxes, dtype=np.float32).reshape(-1, 4), np.asarray(scores, dtype=np.float32)

        return predict

    return load


def perfect_detections():
    return {name: ([box], [0.9]) for name, (_, _, box) in IMAGES.items()}


def run_stage(root, detections_by_image, calls=None):
    write_split(root)
    status = stage.main(stage_arguments(root), load_predictor=predictor_loader(detections_by_image, calls))
    assert status == 0
    return json.loads((root / "reports" / "metrics" / "detector.json").read_text())


def test_perfect_predictor_report(tmp_path):
    report = run_stage(tmp_path, perfect_detections())

    assert sorted(report) == ["dataset", "folds", "heldout", "profile", "timing", "train"]
    assert report["profile"] == "default"
    assert report["dataset"] == {
        "images": 6,
        "faces": 6,
        "background_images": 0,
        "images_annotated": 7,
        "images_missing": 1,
        "folds": 2,
        "grouped_by": "person",
        "persons": 4,
    }
    for part in ("heldout", "train"):
        pooled = report[part]
        for name in ("mean_iou", "min_iou", "max_iou", "median_iou", "ap50", "ap50_95", "recall50"):
            assert pooled[name] == pytest.approx(1.0), (part, name)
        # With two folds each image is in one test part and in one training part.
        assert pooled["images"] == 6
        assert sorted(pooled["across_folds"]) == ["ap50", "ap50_95", "mean_iou", "recall50"]
        assert pooled["across_folds"]["mean_iou"] == {"mean": 1.0, "sd": 0.0, "ci95_low": 1.0, "ci95_high": 1.0, "n": 2}


def test_perfect_predictor_fold_blocks(tmp_path):
    report = run_stage(tmp_path, perfect_detections())

    assert sorted(report["folds"]) == ["fold0", "fold1"]
    fold0 = report["folds"]["fold0"]
    assert sorted(fold0) == ["heldout", "test_images", "test_persons", "train"]
    # Numbered persons sort as numbers, as the split stage writes them.
    assert fold0["test_persons"] == [2, 10]
    assert fold0["test_images"] == 3
    assert fold0["heldout"]["images"] == 3
    assert fold0["train"]["images"] == 3
    assert fold0["heldout"]["ap50"] == 1.0
    assert report["folds"]["fold1"]["test_persons"] == [3, 4]


def test_fold_models_predict_own_parts(tmp_path):
    calls = []
    run_stage(tmp_path, perfect_detections(), calls)
    expected = {(fold, name) for fold in (0, 1) for name in IMAGES}
    assert set(calls) == expected
    assert len(calls) == len(expected)


def test_timing_leaves_out_each_fold_warm_up(tmp_path, monkeypatch):
    # Every predict call takes 0.01 s on the fake clock, except a fold's first, which takes 1 s.
    clock = {"now": 0.0}
    calls = []
    monkeypatch.setattr(stage.time, "perf_counter", lambda: clock["now"])
    fake = predictor_loader(perfect_detections(), calls)

    def load(fold):
        predict = fake(fold)

        def timed(path):
            first_call = not any(called_fold == fold for called_fold, _ in calls)
            clock["now"] += 1.0 if first_call else 0.01
            return predict(path)

        return timed

    write_split(tmp_path)
    assert stage.main(stage_arguments(tmp_path), load_predictor=load) == 0
    report = json.loads((tmp_path / "reports" / "metrics" / "detector.json").read_text())

    # Three held-out images per fold, of which the first is the warm-up: 2 timed images per fold.
    assert report["timing"] == {"ms_per_image_mean": 10.0, "ms_per_image_median": 10.0, "images": 4}
    stage.check_metrics_layout(report, "detector.json")


def test_timing_block_without_images():
    assert stage.timing_block([]) == {"ms_per_image_mean": None, "ms_per_image_median": None, "images": 0}
    assert stage.timing_block([0.002, 0.004, 0.009])["ms_per_image_median"] == pytest.approx(4.0)


def test_check_metrics_layout_rejects_bad_timing():
    with pytest.raises(DataError, match=r"detector\.json: timing\.images is 'many', expected a number or null"):
        stage.check_metrics_layout({"timing": {"images": "many"}}, "detector.json")


def test_image_without_detection_scores_zero(tmp_path):
    detections = perfect_detections()
    del detections["image_0002.jpg"]
    report = run_stage(tmp_path, detections)

    per_image = pd.read_csv(tmp_path / "reports" / "detector" / "per_image.csv")
    missed = per_image[(per_image["image"] == "image_0002.jpg") & (per_image["part"] == "heldout")]
    assert len(missed) == 1
    assert missed["iou"].iloc[0] == 0.0
    assert missed["score"].isna().all()
    assert missed["pred_x1"].isna().all()

    # Held-out IoUs are [1, 0, 1] in fold 0 and [1, 1, 1] in fold 1.
    assert report["heldout"]["mean_iou"] == 0.8333
    assert report["heldout"]["min_iou"] == 0.0
    assert report["heldout"]["median_iou"] == 1.0
    # Five of six faces found, each at precision 1: AP = 5/6 and recall = 5/6.
    assert report["heldout"]["ap50"] == 0.8333
    assert report["heldout"]["recall50"] == 0.8333
    assert report["folds"]["fold0"]["heldout"]["mean_iou"] == 0.6667
    assert report["folds"]["fold1"]["heldout"]["mean_iou"] == 1.0
    # Fold values 2/3 and 1: mean 5/6, sample sd = (1/3) / sqrt(2) = 0.2357.
    across = report["heldout"]["across_folds"]["mean_iou"]
    assert across["mean"] == 0.8333
    assert across["sd"] == 0.2357
    assert across["n"] == 2


def test_per_image_csv_columns(tmp_path):
    run_stage(tmp_path, perfect_detections())
    per_image = pd.read_csv(tmp_path / "reports" / "detector" / "per_image.csv")
    assert list(per_image.columns) == stage.PER_IMAGE_COLUMNS
    assert len(per_image) == 12
    row = per_image[(per_image["image"] == "image_0003.jpg") & (per_image["part"] == "heldout")].iloc[0]
    assert row["fold"] == 0
    assert row["person"] == 2
    assert row["score"] == pytest.approx(0.9)
    assert [row["gt_x1"], row["gt_y1"], row["gt_x2"], row["gt_y2"]] == [10, 5, 30, 28]
    assert [row["pred_x1"], row["pred_y1"], row["pred_x2"], row["pred_y2"]] == [10, 5, 30, 28]


def test_pr_curves_csv(tmp_path):
    run_stage(tmp_path, perfect_detections())
    curves = pd.read_csv(tmp_path / "reports" / "detector" / "pr_curves.csv")
    assert list(curves.columns) == stage.PR_CURVE_COLUMNS
    assert set(zip(curves["fold"], curves["part"])) == {(0, "heldout"), (0, "train"), (1, "heldout"), (1, "train")}
    last_points = curves.groupby(["fold", "part"]).tail(1)
    assert (last_points["recall"] == 1.0).all()
    assert (last_points["precision"] == 1.0).all()


def test_predictions_csv_round_trip(tmp_path):
    detections = perfect_detections()
    detections["image_0001.jpg"] = (
        [[4.25, 3.5, 20.125, 25.75], [0.1, 0.2, 10.3, 12.7], [1, 1, 2, 2]],
        [0.3, 0.95, 0.01],  # the 0.01 detection is below ap_score_threshold 0.05 and is dropped
    )
    run_stage(tmp_path, detections)

    saved = stage.read_predictions(tmp_path / "data" / "predictions" / "detector" / "fold0.csv")
    assert list(saved.columns) == stage.PREDICTION_COLUMNS
    heldout = saved[(saved["part"] == "heldout") & (saved["image"] == "image_0001.jpg")]
    expected_boxes = np.array([[0.1, 0.2, 10.3, 12.7], [4.25, 3.5, 20.125, 25.75]], dtype=np.float32)
    np.testing.assert_array_equal(heldout[stage.BOX_COLUMNS].to_numpy(), expected_boxes)
    np.testing.assert_array_equal(heldout["score"].to_numpy(), np.array([0.95, 0.3], dtype=np.float32))
    # Fold 0: three held-out images (four detections) and three training images (one each).
    assert (saved["part"] == "heldout").sum() == 4
    assert (saved["part"] == "train").sum() == 3


def test_outputs_leave_no_temporary_files(tmp_path):
    run_stage(tmp_path, perfect_detections())
    leftovers = [path.name for path in tmp_path.rglob("*.tmp")]
    assert leftovers == []


def test_json_floats_have_four_decimals(tmp_path):
    detections = perfect_detections()
    del detections["image_0002.jpg"]
    run_stage(tmp_path, detections)
    text = (tmp_path / "reports" / "metrics" / "detector.json").read_text()
    assert '"mean_iou": 0.8333,' in text
    assert "0.83333" not in text


def test_fold_mismatch_is_rejected(tmp_path, capsys):
    splits = write_split(tmp_path)
    test_csv = splits / "fold0" / "test.csv"
    test_csv.write_text(test_csv.read_text() + "../../images/image_0004.jpg,2,2,18,20,face\n")

    status = stage.main(stage_arguments(tmp_path), load_predictor=predictor_loader(perfect_detections()))
    assert status == 1
    assert "image image_0004.jpg belongs to fold 1" in capsys.readouterr().err


def test_person_in_both_parts_is_rejected(tmp_path):
    splits = write_split(tmp_path)
    folds = pd.read_csv(splits / "folds.csv")
    folds.loc[folds["image"] == "image_0004.jpg", "person"] = 10
    folds.to_csv(splits / "folds.csv", index=False)

    with pytest.raises(DataError, match="persons 10 have images in both"):
        stage.read_split_annotations(splits, stage.read_folds_table(splits / "folds.csv"))


def test_missing_model_folder_is_reported(tmp_path, capsys):
    write_split(tmp_path)
    assert stage.main(stage_arguments(tmp_path)) == 1
    assert "model folder(s) not found" in capsys.readouterr().err


VALID_MODEL_CONFIG = {"backbone": "resnet50", "image_min_side": 160, "image_max_side": 224, "feature_size": 16}


def write_model_folders(models_dir, folds=(0, 1)):
    for fold in folds:
        folder = models_dir / f"fold{fold}"
        folder.mkdir(parents=True)
        (folder / "model.json").write_text(json.dumps(VALID_MODEL_CONFIG))
        (folder / "weights.h5").write_bytes(b"weights")


def test_check_model_folders_accepts_complete_folders(tmp_path):
    write_model_folders(tmp_path)
    stage.check_model_folders(tmp_path, [0, 1])


@pytest.mark.parametrize(
    ("model_json", "message"),
    [
        ("{not json", r"fold1/model\.json: invalid JSON"),
        ("[1, 2]", r"fold1/model\.json: expected a JSON object, found list"),
        ('{"backbone": "resnet50"}', r"fold1/model\.json: missing keys image_min_side, image_max_side, feature_size"),
        (json.dumps({**VALID_MODEL_CONFIG, "image_min_side": "160"}),
         r"fold1/model\.json: image_min_side is '160', expected a positive integer"),
        (json.dumps({**VALID_MODEL_CONFIG, "backbone": 50}), r"fold1/model\.json: backbone is 50, expected a backbone"),
    ],
)
def test_check_model_folders_rejects_bad_config(tmp_path, model_json, message):
    write_model_folders(tmp_path)
    (tmp_path / "fold1" / "model.json").write_text(model_json)

    with pytest.raises(DataError, match=message):
        stage.check_model_folders(tmp_path, [0, 1])


def test_check_model_folders_rejects_missing_files(tmp_path):
    write_model_folders(tmp_path)
    (tmp_path / "fold1" / "weights.h5").unlink()
    with pytest.raises(DataError, match=r"fold1/weights\.h5: file not found"):
        stage.check_model_folders(tmp_path, [0, 1])

    (tmp_path / "fold0" / "model.json").unlink()
    with pytest.raises(DataError, match=r"fold0/model\.json: file not found"):
        stage.check_model_folders(tmp_path, [0, 1])


def test_model_folder_checked_before_first_fold(tmp_path, capsys):
    write_split(tmp_path)
    write_model_folders(tmp_path / "models")
    (tmp_path / "models" / "fold1" / "weights.h5").unlink()
    arguments = stage_arguments(tmp_path)
    arguments[arguments.index("--models") + 1] = str(tmp_path / "models")

    assert stage.main(arguments) == 1
    assert "fold1/weights.h5: file not found" in capsys.readouterr().err


@pytest.mark.parametrize("error", [OSError("Unable to synchronously open file"), ValueError("Shape mismatch")])
def test_model_predictor_loader_wraps_weight_errors(tmp_path, monkeypatch, error):
    import stages

    fake_detector = FakeDetectorModule()

    def fail(*arguments, **options):
        raise error

    fake_detector.load_prediction_model = fail
    monkeypatch.setitem(sys.modules, "stages.detector", fake_detector)
    monkeypatch.setattr(stages, "detector", fake_detector, raising=False)

    load = stage.model_predictor_loader(tmp_path, {"backbone": "resnet50"}, EVALUATE_PARAMS)
    with pytest.raises(DataError, match=r"fold2/weights\.h5: cannot load the weights: .*; retrain fold 2"):
        load(2)


def test_read_annotations_names_bad_line(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("a.jpg,1,1,5,5,face\na.jpg,9,1,5,5,face\n")
    with pytest.raises(DataError, match=r"test.csv: line 2: x2 \(5\) must be higher than x1 \(9\)"):
        stage.read_annotations(csv_path)


def test_read_annotations_rejects_second_box(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("a.jpg,1,1,5,5,face\na.jpg,2,2,6,6,face\n")
    with pytest.raises(DataError, match="line 2: second box for image a.jpg"):
        stage.read_annotations(csv_path)


def test_read_annotations_several_faces_and_background(tmp_path):
    for name in ("a.jpg", "b.jpg"):
        (tmp_path / name).write_bytes(b"")
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("a.jpg,1,1,5,5,face\nb.jpg,,,,,\na.jpg,2,2,6,6,face\n")
    table = stage.read_annotations(csv_path, one_face_per_image=False)
    assert table["image"].tolist() == ["a.jpg", "b.jpg", "a.jpg"]
    assert table["x1"].isna().tolist() == [False, True, False]
    with pytest.raises(DataError, match=r"line 2: background row \(no face\) for image b.jpg"):
        stage.read_annotations(csv_path)


def test_read_annotations_rejects_background_and_face(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("a.jpg,,,,,\na.jpg,2,2,6,6,face\n")
    with pytest.raises(DataError, match=r"line 2: image a.jpg is listed as a background row .*\(first on line 1\)"):
        stage.read_annotations(csv_path, one_face_per_image=False)


def test_read_annotations_rejects_partial_box(tmp_path):
    (tmp_path / "a.jpg").write_bytes(b"")
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("a.jpg,1,1,,5,face\n")
    with pytest.raises(DataError, match=r"line 1: missing box or class name for a.jpg"):
        stage.read_annotations(csv_path, one_face_per_image=False)


def test_read_annotations_rejects_missing_image(tmp_path):
    csv_path = tmp_path / "test.csv"
    csv_path.write_text("missing.jpg,1,1,5,5,face\n")
    with pytest.raises(DataError, match=r"line 1: image file .*missing.jpg not found"):
        stage.read_annotations(csv_path)


def test_iou_threshold_below_ap_rejected():
    params = {"iou_score_threshold": 0.01, "ap_score_threshold": 0.05, "max_detections": 100}
    with pytest.raises(ParamsError, match=r"iou_score_threshold \(0.01\) is below evaluate.ap_score_threshold"):
        stage.check_evaluate_params(params)


def test_clean_prediction_sorts_filters_and_limits():
    boxes = [[0, 0, 1, 1], [0, 0, 2, 2], [0, 0, 3, 3], [0, 0, 4, 4]]
    scores = [0.2, 0.9, 0.01, 0.5]
    kept_boxes, kept_scores = stage.clean_prediction("a.jpg", boxes, scores, min_score=0.05, max_detections=2)
    assert kept_scores.tolist() == pytest.approx([0.9, 0.5])
    assert kept_boxes[:, 2].tolist() == [2, 4]


def test_clean_prediction_rejects_bad_shape():
    with pytest.raises(ValueError, match=r"prediction for image a.jpg: expected boxes of shape \(K, 4\)"):
        stage.clean_prediction("a.jpg", [[0, 0, 1]], [0.5], min_score=0.05, max_detections=10)


def empty_part_tables():
    """Annotations of two folds where fold 1 has no held-out image, and perfect predictions."""
    rows = [
        (0, "heldout", "a.jpg", "A", [0, 0, 10, 10]),
        (0, "train", "b.jpg", "B", [0, 0, 10, 10]),
        (1, "train", "a.jpg", "A", [0, 0, 10, 10]),
    ]
    annotations = pd.DataFrame(
        [(fold, part, image, person, "unused", *box) for fold, part, image, person, box in rows],
        columns=["fold", "part", "image", "person", "path", *stage.BOX_COLUMNS],
    )
    predictions = annotations[["fold", "part", "image", *stage.BOX_COLUMNS]].assign(score=0.9)
    return annotations, predictions


def test_empty_part_gives_null_metrics(caplog):
    annotations, predictions = empty_part_tables()
    with caplog.at_level(logging.WARNING):
        report = stage.build_metrics_report(annotations, predictions, [0, 1], EVALUATE_PARAMS)

    empty = report["folds"]["fold1"]["heldout"]
    assert empty["images"] == 0
    assert all(empty[name] is None for name in ("mean_iou", "ap50", "ap50_95", "recall50"))
    assert report["folds"]["fold1"]["test_images"] == 0
    assert report["heldout"]["across_folds"]["mean_iou"]["n"] == 1
    assert report["train"]["across_folds"]["mean_iou"]["n"] == 2
    assert "fold 1 heldout: no images" in caplog.text
    assert json.loads(json.dumps(stage.json_ready(report)))["folds"]["fold1"]["heldout"]["ap50"] is None


def test_curve_point_indices_limit():
    indices = stage.curve_point_indices(1000, max_points=200)
    assert len(indices) <= 200
    assert indices[0] == 0
    assert indices[-1] == 999
    assert stage.curve_point_indices(5, max_points=200).tolist() == [0, 1, 2, 3, 4]


def test_json_ready_rejects_nan():
    with pytest.raises(ValueError, match="non-finite value nan"):
        stage.json_ready({"x": float("nan")})


def test_predictor_without_detections(tmp_path):
    report = run_stage(tmp_path, {})

    assert report["heldout"]["mean_iou"] == 0.0
    assert report["heldout"]["ap50"] == 0.0
    assert report["heldout"]["recall50"] == 0.0
    assert report["train"]["ap50_95"] == 0.0
    saved = stage.read_predictions(tmp_path / "data" / "predictions" / "detector" / "fold1.csv")
    assert saved.empty
    curves = pd.read_csv(tmp_path / "reports" / "detector" / "pr_curves.csv")
    assert list(curves.columns) == stage.PR_CURVE_COLUMNS
    assert curves.empty


class FakeDetectorModule:
    """Stand-in for stages.detector that records its calls instead of starting TensorFlow."""

    def __init__(self):
        self.calls = []

    def load_prediction_model(self, model_dir, detector_params, **options):
        self.calls.append(("load", model_dir, options))
        return "model"

    def read_image_bgr(self, path):
        self.calls.append(("read", path))
        return np.zeros((30, 40, 3), dtype=np.uint8)

    def predict_image(self, model, image, detector_params, **options):
        self.calls.append(("predict", model, options))
        return np.zeros((0, 4), dtype=np.float32), np.zeros(0, dtype=np.float32)


def test_model_predictor_loader_calls_detector(tmp_path, monkeypatch):
    import stages

    fake_detector = FakeDetectorModule()
    monkeypatch.setitem(sys.modules, "stages.detector", fake_detector)
    monkeypatch.setattr(stages, "detector", fake_detector, raising=False)

    load = stage.model_predictor_loader(tmp_path, {"backbone": "resnet50"}, EVALUATE_PARAMS)
    predict = load(3)
    boxes, scores = predict(tmp_path / "a.jpg")

    options = {"max_detections": 100, "score_threshold": 0.05}
    assert fake_detector.calls[0] == ("load", tmp_path / "fold3", options)
    assert fake_detector.calls[1] == ("read", tmp_path / "a.jpg")
    assert fake_detector.calls[2] == ("predict", "model", options)
    assert boxes.shape == (0, 4)
    assert scores.shape == (0,)


def test_read_folds_table_rejects_empty_file(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("image,person,fold,path\n")
    with pytest.raises(DataError, match="no images listed"):
        stage.read_folds_table(path)


def test_read_folds_table_rejects_missing_column(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("image,fold,path\nimage_0001.jpg,0,a.jpg\n")
    with pytest.raises(DataError, match=r"missing column\(s\) person"):
        stage.read_folds_table(path)


# --- Background images, folds without faces, several faces per image ------------------


def add_image(root, name, person, fold, boxes):
    """Add an image of ``fold``'s test part to the split written by ``write_split``.

    ``boxes`` lists its face boxes; an empty list writes the background row ``path,,,,,``.
    """
    Image.new("RGB", (40, 30), color=(120, 90, 60)).save(root / "data" / "images" / name)
    splits = root / "data" / "splits"
    with (splits / "folds.csv").open("a") as handle:
        handle.write(f"{name},{person},{fold},../images/{name}\n")
    cells = [",".join(map(str, box)) + ",face" for box in boxes] or [",,,,"]
    lines = "".join(f"../../images/{name},{cell}\n" for cell in cells)
    for fold_dir, file_name in ((f"fold{fold}", "test.csv"), (f"fold{1 - fold}", "train.csv")):
        with (splits / fold_dir / file_name).open("a") as handle:
            handle.write(lines)


def run_prepared_stage(root, detections_by_image, calls=None):
    status = stage.main(stage_arguments(root), load_predictor=predictor_loader(detections_by_image, calls))
    assert status == 0
    return json.loads((root / "reports" / "metrics" / "detector.json").read_text())


def test_background_image_detections_are_false_positives(tmp_path, caplog):
    write_split(tmp_path)
    add_image(tmp_path, "empty.jpg", 10, 0, [])
    detections = perfect_detections()
    detections["empty.jpg"] = ([[0, 0, 10, 10]], [0.95])
    with caplog.at_level(logging.INFO, logger=stage.__name__):
        report = run_prepared_stage(tmp_path, detections)

    fold0 = report["folds"]["fold0"]["heldout"]
    # Ranked: the background detection (FP, score 0.95), then three TPs: AP = 3/4 of the
    # recall range at precision 3/4 = 0.75.
    assert fold0["ap50"] == 0.75
    assert fold0["recall50"] == 1.0
    assert fold0["mean_iou"] == 1.0
    assert fold0["images"] == 4
    assert fold0["faces"] == 3
    assert fold0["background_images"] == 1
    assert report["dataset"]["background_images"] == 1
    assert report["folds"]["fold0"]["test_images"] == 4
    assert "fold 0 heldout: 1 of 4 images are background images" in caplog.text

    per_image = pd.read_csv(tmp_path / "reports" / "detector" / "per_image.csv")
    assert "empty.jpg" not in set(per_image["image"])
    assert len(per_image) == 12


def test_fold_without_faces_reports_null_ap_with_reason(tmp_path, caplog):
    write_split(tmp_path)
    splits = tmp_path / "data" / "splits"
    # Fold 1 holds out only background images: its test.csv has no face box at all.
    (splits / "fold1" / "test.csv").write_text("")
    folds_table = pd.read_csv(splits / "folds.csv")
    folds_table[folds_table["fold"] == 0].to_csv(splits / "folds.csv", index=False)
    (splits / "fold0" / "train.csv").write_text("")
    add_image(tmp_path, "empty1.jpg", 7, 1, [])
    add_image(tmp_path, "empty2.jpg", 8, 1, [])
    with caplog.at_level(logging.WARNING, logger=stage.__name__):
        # Scored above the faces' 0.9, the background detection ranks first in the pooled held-out AP.
        report = run_prepared_stage(tmp_path, {**perfect_detections(), "empty1.jpg": ([[0, 0, 9, 9]], [0.95])})

    empty = report["folds"]["fold1"]["heldout"]
    assert empty["images"] == 2
    assert empty["faces"] == 0
    assert all(empty[name] is None for name in ("mean_iou", "ap50", "ap50_95", "recall50"))
    assert "no face boxes" in empty["null_reason"]
    assert report["folds"]["fold0"]["heldout"]["null_reason"] is None
    assert report["heldout"]["ap50"] == 0.75
    assert report["heldout"]["across_folds"]["ap50"]["n"] == 1
    assert f"fold 1 heldout: none of its 2 images in {splits / 'fold1' / 'test.csv'} has a face box" in caplog.text

    curves = pd.read_csv(tmp_path / "reports" / "detector" / "pr_curves.csv")
    assert (1, "heldout") not in set(zip(curves["fold"], curves["part"]))


def test_image_with_two_faces_is_predicted_once(tmp_path):
    write_split(tmp_path)
    add_image(tmp_path, "pair.jpg", 10, 0, [[1, 1, 11, 11], [20, 10, 35, 28]])
    detections = perfect_detections()
    detections["pair.jpg"] = ([[20, 10, 35, 28]], [0.9])
    calls = []
    report = run_prepared_stage(tmp_path, detections, calls)

    assert calls.count((0, "pair.jpg")) == 1
    fold0 = report["folds"]["fold0"]["heldout"]
    # Three one-face images and the pair. The pair's first face has no detection.
    assert fold0["faces"] == 5
    assert fold0["images"] == 4
    assert fold0["recall50"] == 0.8
    per_image = pd.read_csv(tmp_path / "reports" / "detector" / "per_image.csv")
    pair = per_image[(per_image["image"] == "pair.jpg") & (per_image["part"] == "heldout")]
    assert pair["iou"].tolist() == [0.0, 1.0]
    assert pair["gt_x1"].tolist() == [1, 20]


def test_metrics_layout_accepts_null_reason_string():
    stage.check_metrics_layout({"heldout": {"ap50": None, "null_reason": "no face boxes"}}, "m.json")
    with pytest.raises(DataError, match=r"heldout.null_reason is 3, expected a string or null"):
        stage.check_metrics_layout({"heldout": {"null_reason": 3}}, "m.json")


# --- Images with the same file name in different folders -------------------------------------


def write_repeated_name_split(root):
    """Split four images, two of them named img_1.jpg, into two folds with the split stage."""
    import yaml

    from stages import split

    paths = ["d1/img_1.jpg", "d2/img_1.jpg", "d1/img_2.jpg", "d2/img_3.jpg"]
    for path in paths:
        (root / "data" / "images" / path).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 30), color=(120, 90, 60)).save(root / "data" / "images" / path)
    (root / "data" / "annotations.csv").write_text(
        "images/d1/img_1.jpg,4,3,20,25,face\nimages/d1/img_1.jpg,22,3,38,25,face\nimages/d2/img_1.jpg,,,,,\n"
        "images/d1/img_2.jpg,6,2,24,22,face\nimages/d2/img_3.jpg,10,5,30,28,face\n"
    )
    (root / "data" / "groups.csv").write_text(
        "image,fold\nimages/d1/img_1.jpg,1\nimages/d2/img_1.jpg,2\nimages/d1/img_2.jpg,1\nimages/d2/img_3.jpg,2\n"
    )
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["split"] = {"folds": 2, "seed": 3}
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    argv = ["--params", str(root / "params.yaml"), "--annotations", str(root / "data" / "annotations.csv"),
            "--groups", str(root / "data" / "groups.csv"), "--out", str(root / "data" / "splits")]
    assert split.main(argv) == 0

    data_summary = root / "reports" / "metrics" / "data.json"
    data_summary.parent.mkdir(parents=True)
    data_summary.write_text(
        json.dumps({"images_annotated": 4, "images_present": 4, "images_missing": 0, "missing_images": []})
    )


def test_repeated_file_names_stay_apart(tmp_path):
    write_repeated_name_split(tmp_path)
    # Each image gets a detection of its first face box; the background image gets a false positive.
    detections = {
        "d1/img_1.jpg": ([[4, 3, 20, 25], [22, 3, 38, 25]], [0.9, 0.8]),
        "d2/img_1.jpg": ([[1, 1, 9, 9]], [0.7]),
        "d1/img_2.jpg": ([[6, 2, 24, 22]], [0.9]),
        "d2/img_3.jpg": ([[10, 5, 30, 28]], [0.9]),
    }

    def load(fold):
        def predict(path):
            boxes, scores = detections[Path(os.path.normpath(path)).relative_to(tmp_path / "data" / "images").as_posix()]
            return np.asarray(boxes, dtype=np.float32), np.asarray(scores, dtype=np.float32)

        return predict

    arguments = stage_arguments(tmp_path)
    arguments[arguments.index("--params") + 1] = str(tmp_path / "params.yaml")
    assert stage.main(arguments, load_predictor=load) == 0

    report = json.loads((tmp_path / "reports" / "metrics" / "detector.json").read_text())
    assert report["dataset"]["images"] == 4
    assert report["dataset"]["faces"] == 4
    assert report["dataset"]["background_images"] == 1
    per_image = pd.read_csv(tmp_path / "reports" / "detector" / "per_image.csv")
    heldout = per_image[per_image["part"] == "heldout"]
    # The split stage names the images by their paths below images/, the folder that contains them all.
    assert heldout["image"].tolist() == ["d1/img_1.jpg", "d1/img_1.jpg", "d1/img_2.jpg", "d2/img_3.jpg"]
    assert heldout["iou"].tolist() == [1.0, 1.0, 1.0, 1.0]
    predictions = pd.read_csv(tmp_path / "data" / "predictions" / "detector" / "fold1.csv")
    assert predictions.loc[predictions["part"] == "heldout", "image"].tolist() == ["d2/img_1.jpg", "d2/img_3.jpg"]


def test_row_not_in_folds_table_names_line(tmp_path):
    splits = write_split(tmp_path)
    (tmp_path / "data" / "other").mkdir()
    Image.new("RGB", (40, 30)).save(tmp_path / "data" / "other" / "image_0001.jpg")
    test_csv = splits / "fold0" / "test.csv"
    test_csv.write_text(test_csv.read_text() + "../../other/image_0001.jpg,2,2,18,20,face\n")

    message = r"fold0/test\.csv: line 4: image \.\./\.\./other/image_0001\.jpg .* is not listed in .*folds\.csv"
    with pytest.raises(DataError, match=message):
        stage.read_split_annotations(splits, stage.read_folds_table(splits / "folds.csv"))


def test_folds_table_rejects_repeated_path(tmp_path):
    path = tmp_path / "folds.csv"
    path.write_text("image,person,fold,path\na.jpg,1,0,../images/a.jpg\nb.jpg,2,1,../images/a.jpg\n")
    with pytest.raises(DataError, match=r"folds\.csv: line 3: path '\.\./images/a\.jpg' is listed more than once"):
        stage.read_folds_table(path)


def test_read_image_bgr_ignores_exif_orientation(tmp_path):
    from stages import detector

    height, width = 30, 40
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[:, : width // 2] = (250, 10, 10)
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # EXIF Orientation 6: viewers rotate the image by 90 degrees clockwise.
    path = tmp_path / "rotated.jpg"
    image.save(path, format="JPEG", exif=exif.tobytes(), quality=95)

    bgr = detector.read_image_bgr(path)
    assert bgr.shape == (height, width, 3)
    stored = np.asarray(Image.open(path).convert("RGB"))[:, :, ::-1]
    np.testing.assert_array_equal(bgr, stored)
