"""Tests for stages.report on small synthetic metrics, splits and figures written in tmp_path."""

from __future__ import annotations

import json
import re
import subprocess
import zlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from stages import report
from stages.errors import DataError
from stages.params import PROJECT_ROOT, load_params

METRIC_KEYS = ("mean_iou", "min_iou", "max_iou", "median_iou", "ap50", "ap50_95", "recall50")
FIGURE_SIZES = {"focal_loss.png": (300, 210), "per_image_iou.png": (470, 250), "examples.png": (420, 515),
                "pr_curves.png": (300, 230), "training_curves.png": (375, 400)}

DVC_LOCK = """\
schema: '2.0'
stages:
  split:
    cmd: python -m stages.split
    deps:
    - path: data/converted/annotations.csv
      hash: md5
      md5: 0123456789abcdef0123456789abcdef
      size: 100
    outs:
    - path: data/splits
      hash: md5
      md5: fedcba9876543210fedcba9876543210.dir
      size: 2000
      nfiles: 3
"""


def part_metrics(base: float, images: int) -> dict:
    values = dict(zip(METRIC_KEYS, (base, base - 0.3, base + 0.05, base + 0.01, 0.9, 0.5, 0.92)))
    return {**values, "images": images}


def null_metrics() -> dict:
    return {**{key: None for key in METRIC_KEYS}, "images": 0}


def across(mean: float) -> dict:
    return {"mean": mean, "sd": 0.02, "ci95_low": mean - 0.03, "ci95_high": mean + 0.03, "n": 2}


def write_inputs(root: Path, with_dvc_lock: bool = True) -> list[str]:
    """Write detector.json (fold 1's training part empty, so null), data.json, folds.csv and PNGs.

    Returns the arguments of stages.report for these files.
    """
    metrics = {
        "profile": "default",
        "dataset": {"images": 8, "images_annotated": 10, "images_missing": 2, "folds": 2,
                    "grouped_by": "person", "persons": 4},
        "heldout": {**part_metrics(0.81, 8), "across_folds": {
            "mean_iou": across(0.8), "ap50": across(0.9), "ap50_95": {"mean": 0.5, "sd": None, "ci95_low": None,
                                                                     "ci95_high": None, "n": 1},
            "recall50": across(0.92)}},
        "train": {**part_metrics(0.9, 4), "across_folds": {
            "mean_iou": {"mean": 0.9, "sd": None, "ci95_low": None, "ci95_high": None, "n": 1},
            "ap50": across(0.95), "ap50_95": across(0.6), "recall50": across(0.97)}},
        "folds": {
            "fold1": {"heldout": part_metrics(0.79, 4), "train": null_metrics(), "test_persons": [2, 4],
                      "test_images": 4},
            "fold0": {"heldout": part_metrics(0.83, 4), "train": part_metrics(0.9, 4), "test_persons": [1, 3],
                      "test_images": 4},
        },
    }
    data_summary = {"images_annotated": 10, "images_present": 8, "images_missing": 2,
                    "missing_images": ["image_0009.jpg", "image_0010.jpg"], "images_used": 8, "boxes": 8,
                    "boxes_clipped": 1, "box_width": {"min": 40.0, "mean": 52.25, "max": 61.0},
                    "box_height_mean": 70.5, "extra_note": "kept"}
    metrics_path = root / "reports/metrics/detector.json"
    data_path = root / "reports/metrics/data.json"
    metrics_path.parent.mkdir(parents=True)
    metrics_path.write_text(json.dumps(metrics), encoding="utf-8")
    data_path.write_text(json.dumps(data_summary), encoding="utf-8")

    splits = root / "data/splits"
    splits.mkdir(parents=True)
    lines = ["image,person,fold,path"]
    for number in range(1, 9):
        person = (number - 1) // 2 + 1
        lines.append(f"image_{number:04d}.jpg,{person},{(person + 1) % 2},../images/image_{number:04d}.jpg")
    (splits / "folds.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")

    figures = root / "reports/figures"
    figures.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, (width, height) in FIGURE_SIZES.items():
        pixels = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(figures / name, dpi=(50, 50))

    dvc_lock = root / "dvc.lock"
    if with_dvc_lock:
        dvc_lock.write_text(DVC_LOCK, encoding="utf-8")
    return [
        "--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "default",
        "--metrics", str(metrics_path), "--data-summary", str(data_path), "--splits", str(splits),
        "--figures", str(figures), "--dvc-lock", str(dvc_lock), "--out", str(root / "reports/report.pdf"),
    ]


def pdf_strings(data: bytes) -> list[str]:
    """Return the text shown by the PDF's core-font ``(...) Tj`` operators, in drawing order."""
    strings = []
    # Each stream is read by the byte count its /Length gives: a search for the next "endstream"
    # can stop early inside compressed bytes and lose a page's text.
    for match in re.finditer(rb"/Length (\d+)\s*>>\s*stream\r?\n", data):
        start = match.end()
        try:
            content = zlib.decompress(data[start:start + int(match.group(1))])
        except zlib.error:
            continue
        for operator in re.finditer(rb"\(((?:\\.|[^\\)])*)\) Tj", content):
            strings.append(re.sub(rb"\\(.)", rb"\1", operator.group(1)).decode("latin-1"))
    return strings


def pdf_text(data: bytes) -> str:
    """Return the shown text joined by spaces, so that a phrase wrapped over two lines still matches."""
    return " ".join(pdf_strings(data))


@pytest.fixture(scope="module")
def built_report(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, str]:
    """Build one report for all content checks, from a folder outside any git repository."""
    root = tmp_path_factory.mktemp("report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        assert report.main(write_inputs(root)) == 0
    assert [path.name for path in (root / "reports").iterdir() if path.is_file()] == ["report.pdf"]
    data = (root / "reports/report.pdf").read_bytes()
    return data, pdf_text(data)


def test_main_writes_pdf(built_report: tuple[bytes, str]) -> None:
    data, _text = built_report

    assert data.startswith(b"%PDF-")
    assert data.rstrip().endswith(b"%%EOF")
    assert len(data) > 10_000


@pytest.mark.parametrize("expected", [
    "EmotiveLens face detection report",
    "Original study, training",
    "0.943",
    "94.3%",
    "honest comparison",
    "Profile: default",
    "detector.focal.gamma",
    "image_0009.jpg, image_0010.jpg",
    "missing_images (2)",
    "box_width.mean",
    "extra_note",
    "Test persons",
    "4 persons",
    "Held-out: the fold's test persons.",
    "The persons of the images are a third-party labelling",
    "one person-grouped split of these same images",
    "0.8797, just under the 0.88 goal",
    "Goals of the default profile: held-out AP@0.5 of at least 0.99: missed",
    "fold 95% CI",
    "Figure 5:",
    "fedcba9876543210fedcba9876543210.dir",
    "not a git repository",
    "keras-retinanet",
])
def test_pdf_contains(built_report: tuple[bytes, str], expected: str) -> None:
    _data, text = built_report

    assert expected in text


def test_pdf_prints_null_metrics_as_na(built_report: tuple[bytes, str]) -> None:
    data, text = built_report

    assert pdf_strings(data).count("n/a") >= len(report.METRIC_COLUMNS)
    assert "None" not in text
    assert "nan" not in text.split()


def test_fold_rows_show_null_part_as_na() -> None:
    metrics = {"folds": {"fold0": {"heldout": part_metrics(0.8, 4), "train": null_metrics()}},
               "heldout": {}, "train": None}

    rows = report.fold_metric_rows(metrics)

    assert rows[0][:4] == ("0", "held-out", "4", "0.800")
    assert rows[1] == ("0", "train", "0", *["n/a"] * len(report.METRIC_COLUMNS))
    assert rows[3] == ("all", "train", "n/a", *["n/a"] * len(report.METRIC_COLUMNS))


def test_fold_rows_sort_folds_by_number() -> None:
    metrics = {"folds": {f"fold{k}": {"heldout": null_metrics(), "train": null_metrics()} for k in (10, 2, 0)}}

    rows = report.fold_metric_rows(metrics)

    assert [row[0] for row in rows[:6:2]] == ["0", "2", "10"]


def test_main_without_dvc_lock_notes_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path, with_dvc_lock=False)

    assert report.main(argv) == 0

    assert "not made with DVC" in pdf_text((tmp_path / "reports/report.pdf").read_bytes())


def test_main_reports_missing_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path)
    (tmp_path / "reports/metrics/detector.json").unlink()

    assert report.main(argv) == 1

    assert "detector.json: file not found" in capsys.readouterr().err
    assert not (tmp_path / "reports/report.pdf").exists()


@pytest.mark.parametrize(
    ("file_name", "change", "message"),
    [
        ("detector.json", lambda value: [], r"detector\.json: expected a JSON object, found list"),
        ("detector.json", lambda value: 3, r"detector\.json: expected a JSON object, found int"),
        ("data.json", lambda value: [1, 2], r"data\.json: expected a JSON object, found list"),
        ("detector.json", lambda value: {**value, "folds": [1]},
         r"detector\.json: folds is \[1\], expected a JSON object or null"),
        ("detector.json", lambda value: {**value, "train": "x"},
         r"detector\.json: train is \"x\", expected a JSON object or null"),
        ("detector.json", lambda value: {**value, "folds": {"fold0": {"heldout": {"mean_iou": "abc"}}}},
         r"detector\.json: folds\.fold0\.heldout\.mean_iou is 'abc', expected a number or null"),
    ],
)
def test_main_rejects_bad_json_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      capsys: pytest.CaptureFixture, file_name, change, message) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path)
    path = tmp_path / "reports/metrics" / file_name
    path.write_text(json.dumps(change(json.loads(path.read_text(encoding="utf-8")))), encoding="utf-8")

    assert report.main(argv) == 1

    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert "Traceback" not in error
    assert not (tmp_path / "reports/report.pdf").exists()


def test_main_renders_null_folds_as_na(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path)
    path = tmp_path / "reports/metrics/detector.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["folds"]["fold1"] = None
    metrics["train"] = None
    path.write_text(json.dumps(metrics), encoding="utf-8")

    assert report.main(argv) == 0

    assert "n/a" in pdf_text((tmp_path / "reports/report.pdf").read_bytes())


def test_fold_rows_show_null_fold_as_na() -> None:
    rows = report.fold_metric_rows({"folds": {"fold0": None}})

    assert rows[0][:3] == ("0", "held-out", "n/a")
    assert set(rows[0][3:]) == {"n/a"}


@pytest.mark.parametrize(("value", "expected"), [(None, "n/a"), (float("nan"), "n/a"), (0.94321, "0.943"),
                                                 (450, "450"), (0, "0")])
def test_format_metric(value: object, expected: str) -> None:
    assert report.format_metric(value) == expected


def test_format_interval_without_bounds() -> None:
    assert report.format_interval({"mean": 0.5, "ci95_low": None, "ci95_high": None}) == "0.500"
    assert report.format_interval({"mean": 0.5, "ci95_low": 0.4, "ci95_high": None}) == "0.500 [0.400, n/a]"
    assert report.format_interval(None) == "n/a"


def test_format_bounds() -> None:
    assert report.format_bounds({"ci95_low": 0.1, "ci95_high": 0.25}) == "0.100 to 0.250"
    assert report.format_bounds({"ci95_low": None, "ci95_high": None}) == "n/a"
    assert report.format_bounds(None) == "n/a"


def test_latin1_replaces_other_characters() -> None:
    assert report.latin1("IoU \u2265 0.5, \u03b3 = 2, 94.3 \u00b1 1") == "IoU ? 0.5, ? = 2, 94.3 \u00b1 1"


def test_split_rows_count_train_images() -> None:
    import pandas as pd

    splits = pd.DataFrame({"image": list("abcde"), "person": [1, 1, 2, 3, 3], "fold": [0, 0, 1, 0, 0]})

    rows = report.split_rows(splits)

    assert rows == [("0", "1, 3", "4", "1"), ("1", "2", "1", "4"), ("all", "3 persons", "5", "")]


def test_dvc_lock_entries(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text(DVC_LOCK, encoding="utf-8")

    entries = report.dvc_lock_entries(lock)

    assert entries == [
        ("split", "dep", "data/converted/annotations.csv", "0123456789abcdef0123456789abcdef"),
        ("split", "out", "data/splits", "fedcba9876543210fedcba9876543210.dir"),
    ]
    assert report.dvc_lock_entries(tmp_path / "absent.lock") is None


def test_dvc_lock_entries_reject_invalid_file(tmp_path: Path) -> None:
    lock = tmp_path / "dvc.lock"
    lock.write_text("schema: '2.0'\nstages: [a, b]\n", encoding="utf-8")

    with pytest.raises(DataError, match="expected a 'stages' mapping"):
        report.dvc_lock_entries(lock)


def test_git_state_names_changed_files(tmp_path: Path) -> None:
    def git(*arguments: str) -> None:
        subprocess.run(["git", "-c", "user.name=test", "-c", "user.email=test@example.org", *arguments],
                       cwd=tmp_path, check=True, capture_output=True)

    assert report.git_state(tmp_path) == "not available (not a git repository)"
    git("init", "-q")
    assert report.git_state(tmp_path) == "not available (the repository has no commit yet)"
    (tmp_path / "a.txt").write_text("a", encoding="utf-8")
    git("add", "a.txt")
    git("commit", "-q", "-m", "add a")
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tmp_path, capture_output=True, text=True).stdout.strip()

    assert report.git_state(tmp_path) == commit
    (tmp_path / "a.txt").write_text("b", encoding="utf-8")
    assert report.git_state(tmp_path) == f"{commit} (uncommitted changes: a.txt)"


def test_package_versions_mark_missing_package() -> None:
    versions = dict(report.package_versions(["numpy", "no-such-package-for-emotivelens"]))

    assert versions["numpy"] == np.__version__
    assert versions["no-such-package-for-emotivelens"] == "not installed"
    assert "python" in versions


# --- Classifier section --------------------------------------------------------------

CLASSIFIER_FIGURE_SIZES = {"roc_curves.png": (400, 220), "confusion_matrices.png": (300, 280),
                           "examples_genki4k.png": (500, 200), "examples_smilesmiled.png": (500, 200),
                           "classifier_training.png": (400, 300)}


def scorer_block(base: float) -> dict:
    heldout = {"accuracy": base, "balanced_accuracy": base - 0.01, "roc_auc": base + 0.05, "f1": base - 0.02,
               "n": 100, "positives": 30}
    folds = {name: across(value) for name, value in heldout.items() if name not in ("n", "positives")}
    return {"heldout": heldout, "folds": folds}


def write_classifier_inputs(root: Path, one_class_auc: bool = False) -> list[str]:
    """Write classifier.json, smiles_data.json and classifier PNGs; return the extra report arguments."""
    metrics = {}
    for name, base in (("genki4k", 0.912), ("smilesmiled", 0.871)):
        block = {**scorer_block(base), "dataset": {"samples": 100, "positives": 30, "prevalence": 0.3}}
        block["haar"] = scorer_block(base - 0.2)
        metrics[name] = block
    if one_class_auc:
        metrics["smilesmiled"]["haar"]["heldout"]["roc_auc"] = None
    smiles_data = {
        "genki4k": {"samples_read": 4000, "duplicates_removed": 3, "duplicate_groups": [{"kept": "a"}],
                    "class_counts": {"0": 1836, "1": 2161}, "face_found": 3950, "face_not_found": 47,
                    "test_class_counts_per_fold": {"0": {"0": 367, "1": 432}}},
        "smilesmiled": {"samples_read": 13165, "conflicting_label_samples_dropped": 10,
                        "note": "No identity labels in SMILEsmileD."},
    }
    metrics_path = root / "reports/metrics/classifier.json"
    metrics_path.write_text(json.dumps(metrics), encoding="utf-8")
    smiles_path = root / "reports/metrics/smiles_data.json"
    smiles_path.write_text(json.dumps(smiles_data), encoding="utf-8")
    figures = root / "reports/classifier/figures"
    figures.mkdir(parents=True)
    rng = np.random.default_rng(1)
    for name, (width, height) in CLASSIFIER_FIGURE_SIZES.items():
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(figures / name, dpi=(50, 50))
    return ["--classifier-metrics", str(metrics_path), "--smiles-data", str(smiles_path),
            "--classifier-figures", str(figures)]


@pytest.fixture(scope="module")
def classifier_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("classifier_report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        argv = write_inputs(root) + write_classifier_inputs(root, one_class_auc=True)
        assert report.main(argv) == 0
    return pdf_text((root / "reports/report.pdf").read_bytes())


@pytest.mark.parametrize("expected", [
    "Happy / non-happy classifier",
    "Classifier, fold mean [95% CI]",
    "Haar, fold mean [95% CI]",
    "0.912",
    "0.912 [0.882, 0.942]",
    "0.671",
    "SMILEsmileD",
    "ROC AUC",
    "samples_read",
    "13165",
    "1 groups",
    "No identity labels in SMILEsmileD.",
    "cannot be grouped by person",
    "47 of 4000 GENKI-4K images",
    "30.0% of GENKI-4K samples",
    "chosen on each fold's training part",
    "Figure 6:",
    "Figure 10:",
    "EmotiveLens face detection and expression report",
    "GENKI-4K: accuracy 0.912, balanced accuracy 0.902, ROC AUC 0.962",
    "own face detector (the final Caltech model), with crop margin",
])
def test_classifier_section_contains(classifier_report: str, expected: str) -> None:
    assert expected in classifier_report


def test_classifier_section_leaves_out_per_fold_counts(classifier_report: str) -> None:
    assert "test_class_counts_per_fold" not in classifier_report


def test_report_without_classifier_has_no_section(built_report: tuple[bytes, str]) -> None:
    _data, text = built_report

    assert "Happy / non-happy classifier" not in text
    assert "Figure 6:" not in text


def test_baseline_rows_put_the_trained_detector_first() -> None:
    detector = {"heldout": {"mean_iou": 0.88, "ap50": 1.0, "ap50_95": 0.76, "recall50": 1.0}}
    baselines = {"haar": {"raw": {"heldout": {"mean_iou": 0.57, "ap50": 0.73}},
                          "calibrated": {"heldout": {"mean_iou": 0.85}}, "ms_per_image": 74.26}}

    rows = report.baseline_rows(detector, baselines)

    assert rows[0] == ("This project's RetinaNet", "trained", "0.880", "1.000", "0.760", "1.000", "")
    assert rows[1] == ("OpenCV Haar cascade", "raw", "0.570", "0.730", "n/a", "n/a", "74.3")
    assert rows[2] == ("", "calibrated", "0.850", "n/a", "n/a", "n/a", "")
    assert rows[3][0] == "BlazeFace"
    assert rows[3][2] == "n/a"


def test_main_prints_the_baseline_table(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    arguments = write_inputs(tmp_path)
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"mtcnn": {"raw": {"heldout": {"mean_iou": 0.49}},
                                               "calibrated": {"heldout": {"mean_iou": 0.873}},
                                               "ms_per_image": 100.0}}), encoding="utf-8")
    monkeypatch.chdir(tmp_path)

    assert report.main([*arguments, "--baselines", str(baselines)]) == 0

    text = pdf_text((tmp_path / "reports/report.pdf").read_bytes())
    assert "Off-the-shelf face detectors" in text
    assert "0.873" in text


def test_classifier_summary_names_both_datasets_and_the_cascade() -> None:
    metrics = {"genki4k": {**scorer_block(0.9), "haar": scorer_block(0.7)}, "smilesmiled": {}}

    summary = report.classifier_summary(metrics)

    assert "GENKI-4K: accuracy 0.900, balanced accuracy 0.890, ROC AUC 0.950" in summary
    assert "(OpenCV smile cascade: 0.700, 0.690, 0.750)" in summary
    assert "SMILEsmileD: accuracy n/a" in summary


def test_classifier_rows_show_null_as_na() -> None:
    metrics = {"genki4k": {**scorer_block(0.9), "haar": {"heldout": {"roc_auc": None}}}}

    rows = report.classifier_result_rows(metrics)

    assert rows[0] == ("GENKI-4K", "Accuracy", "0.900", "0.900 [0.870, 0.930]", "n/a", "n/a")
    assert rows[2][4] == "n/a"
    assert rows[4] == ("SMILEsmileD", "Accuracy", "n/a", "n/a", "n/a", "n/a")


def test_smiles_data_needs_classifier_metrics(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path)
    extra = write_classifier_inputs(tmp_path)

    assert report.main(argv + extra[2:]) == 1

    assert "need --classifier-metrics" in capsys.readouterr().err
    assert not (tmp_path / "reports/report.pdf").exists()


def test_classifier_metrics_bad_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path) + write_classifier_inputs(tmp_path)
    path = tmp_path / "reports/metrics/classifier.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["genki4k"]["haar"]["heldout"]["f1"] = "high"
    path.write_text(json.dumps(metrics), encoding="utf-8")

    assert report.main(argv) == 1

    assert "classifier.json: genki4k.haar.heldout.f1 is 'high', expected a number or null" in capsys.readouterr().err


def test_classifier_section_without_figures_or_smiles_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path) + write_classifier_inputs(tmp_path)[:2]

    assert report.main(argv) == 0

    text = pdf_text((tmp_path / "reports/report.pdf").read_bytes())
    assert "Classifier results" in text
    assert "smiles_data.json (face_not_found)" in text


# --- Focal-loss study ----------------------------------------------------------------


def sweep_row(gamma: float, alpha: float, iou: float) -> dict:
    return {"gamma": gamma, "alpha": alpha, "heldout_ap50": 1.0, "heldout_ap50_fold_sd": 0.0,
            "heldout_ap50_95": iou - 0.1, "heldout_ap50_95_fold_sd": 0.04, "heldout_mean_iou": iou,
            "heldout_mean_iou_fold_sd": 0.0183, "train_mean_iou": iou + 0.03, "train_ap50_95": iou - 0.05,
            "gap_mean_iou": 0.03, "gap_ap50_95": 0.05,
            "pooled": {"heldout_ap50": 1.0, "heldout_ap50_95": iou - 0.1, "heldout_mean_iou": iou,
                       "train_mean_iou": iou + 0.03}}


def focal_sweep_metrics() -> dict:
    settings = {"gamma0-alpha0.25": sweep_row(0, 0.25, 0.8688), "gamma0-alpha0.5": sweep_row(0, 0.5, 0.86),
                "gamma2-alpha0.25": sweep_row(2, 0.25, 0.8819), "gamma2-alpha0.5": sweep_row(2, 0.5, 0.87)}
    difference = {"mean_difference": 0.0131, "ci95_low": 0.0083, "ci95_high": 0.0179, "t_test_p": 0.0017,
                  "wilcoxon_p": 0.0625}
    return {
        "profile": "default", "epochs": 6, "folds": 5, "settings": settings,
        "best": {"setting": "gamma2-alpha0.25", "selected_by": "heldout_mean_iou (fold mean)", "gamma": 2,
                 "alpha": 0.25, "heldout_mean_iou": 0.8819, "heldout_ap50_95": 0.7819},
        "paired_test": {"best": "gamma2-alpha0.25", "reference": "gamma0-alpha0.25",
                        "comparison": "best setting against cross-entropy (gamma 0) at the same alpha",
                        "best_is_gamma0": False, "folds": 5, "mean_iou": difference,
                        "ap50_95": {**difference, "mean_difference": -0.002, "t_test_p": 0.61}},
    }


def write_focal_sweep_inputs(root: Path) -> list[str]:
    """Write focal_sweep.json and the two sweep PNGs; return the extra report arguments."""
    metrics_path = root / "reports/metrics/focal_sweep.json"
    metrics_path.write_text(json.dumps(focal_sweep_metrics()), encoding="utf-8")
    figures = root / "reports/focal_sweep"
    figures.mkdir(parents=True)
    rng = np.random.default_rng(2)
    for name, (width, height) in (("focal_sweep.png", (550, 190)), ("focal_sweep_gap.png", (330, 190))):
        Image.fromarray(rng.integers(0, 255, (height, width, 3), dtype=np.uint8)).save(figures / name, dpi=(50, 50))
    (figures / "focal_sweep.csv").write_text("setting\n", encoding="utf-8")
    return ["--focal-sweep", str(metrics_path), "--focal-sweep-figures", str(figures)]


@pytest.fixture(scope="module")
def focal_sweep_report(tmp_path_factory: pytest.TempPathFactory) -> str:
    root = tmp_path_factory.mktemp("focal_sweep_report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        argv = write_inputs(root) + write_focal_sweep_inputs(root) + write_classifier_inputs(root)
        assert report.main(argv) == 0
    return pdf_text((root / "reports/report.pdf").read_bytes())


# The report states the shipped detector's epochs from the project's params.yaml.
SHIPPED_EPOCHS = load_params(PROJECT_ROOT / "params.yaml", "default")["detector"]["epochs"]


@pytest.mark.parametrize("expected", [
    "Focal-loss study",
    "Focal-loss study (4 settings, 6 epochs each): best gamma 2, alpha 0.25 with held-out mean IoU 0.882",
    "Against gamma0-alpha0.25: +0.013 (95% CI 0.008 to 0.018, paired t-test p = 0.0017)",
    f"for 6 epochs each (the shipped detector trains {SHIPPED_EPOCHS})",
    "0.869 +/- 0.018",
    "2 *",
    "0 (CE)",
    "Held-out AP@[.5:.95] differs by -0.002",
    "Wilcoxon signed-rank p = 0.0625",
    "chosen on the same folds",
    "cannot give a two-sided p below 0.0625",
    "Figure 6: Held-out AP@0.5, AP@[.5:.95] and mean IoU",
    "Figure 7: Training minus held-out mean IoU",
    "Figure 8:",
    "on the same 5 person-grouped folds",
    "more overfitting to the training persons.",
])
def test_focal_sweep_section_contains(focal_sweep_report: str, expected: str) -> None:
    assert expected in focal_sweep_report


def test_report_without_focal_sweep_has_no_section(built_report: tuple[bytes, str]) -> None:
    _data, text = built_report

    assert "Focal-loss study" not in text


@pytest.mark.parametrize("keep", [0, 2])
def test_focal_sweep_options_go_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         capsys: pytest.CaptureFixture, keep: int) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path)
    extra = write_focal_sweep_inputs(tmp_path)

    assert report.main(argv + extra[keep:keep + 2]) == 1

    assert "the focal-loss study section needs both" in capsys.readouterr().err
    assert not (tmp_path / "reports/report.pdf").exists()


def test_focal_sweep_bad_layout(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    argv = write_inputs(tmp_path) + write_focal_sweep_inputs(tmp_path)
    path = tmp_path / "reports/metrics/focal_sweep.json"
    metrics = json.loads(path.read_text(encoding="utf-8"))
    metrics["settings"]["gamma0-alpha0.5"]["heldout_mean_iou"] = "good"
    path.write_text(json.dumps(metrics), encoding="utf-8")

    assert report.main(argv) == 1

    assert "focal_sweep.json: settings.gamma0-alpha0.5.heldout_mean_iou is 'good', expected a number or null" in (
        capsys.readouterr().err)


def test_paired_test_text_without_reference() -> None:
    metrics = focal_sweep_metrics()
    metrics["paired_test"] = {"reference": None, "comparison": "the grid has no gamma > 0 setting"}

    assert report.paired_test_text(metrics) == (
        "Best setting: gamma2-alpha0.25. No paired test: the grid has no gamma > 0 setting.")
    assert report.focal_sweep_summary(metrics).endswith("No paired comparison was possible.")


def test_baseline_rows_show_detector_speed() -> None:
    detector = {"heldout": {"mean_iou": 0.88}, "timing": {"ms_per_image_mean": 25.43, "ms_per_image_median": 24.0,
                                                          "images": 440}}

    rows = report.baseline_rows(detector, {})

    assert rows[0][-1] == "25.4"


@pytest.mark.parametrize(
    ("profile", "heldout", "expected"),
    [
        ("default", {"ap50": 1.0, "mean_iou": 0.881},
         "Goals of the default profile: held-out AP@0.5 of at least 0.99: met; held-out mean IoU of at least 0.88: met."),
        ("default", {"ap50": 0.98, "mean_iou": None},
         "Goals of the default profile: held-out AP@0.5 of at least 0.99: missed; "
         "held-out mean IoU of at least 0.88: not measured."),
        ("paper", {"mean_iou": 0.9}, "Goals of the paper profile: held-out mean IoU of at least 0.943: missed."),
        ("smoke", {"ap50": 1.0, "mean_iou": 1.0}, ""),
    ],
)
def test_accuracy_goals_text(profile, heldout, expected):
    assert report.accuracy_goals_text(profile, heldout, 0.943) == expected


@pytest.mark.parametrize(("settings", "expected"), [
    ({"format": "caltech", "annotations": "data/raw/caltech-faces-1999"},
     "Caltech Faces 1999 (data/raw/caltech-faces-1999): 450 images of 27 persons, 5-fold cross-validation "
     "grouped by person"),
    ({"format": "csv", "annotations": "data/own/faces.csv"},
     "the keras-retinanet annotation CSV (data/own/faces.csv): 450 images in 27 groups, 5-fold cross-validation "
     "that keeps each group in one fold"),
    ({"format": "fddb", "annotations": "data/fddb/FDDB-folds"},
     "the FDDB annotations (data/fddb/FDDB-folds): 450 images in the dataset's own 5 folds"),
])
def test_dataset_text_names_the_dataset(settings: dict, expected: str) -> None:
    dataset = {"images": 450, "persons": 27, "folds": 5, "grouped_by": "person"}

    assert report.dataset_text({"dataset": settings}, dataset) == expected


def test_pdf_names_the_configured_dataset(built_report: tuple[bytes, str]) -> None:
    _data, text = built_report
    params = load_params(PROJECT_ROOT / "params.yaml", "default")

    assert f"on Caltech Faces 1999 ({params['dataset']['annotations']}):" in text


# --- Datasets other than Caltech Faces 1999 ------------------------------------------


# params.yaml dataset blocks of the user-dataset reports, keyed by the grouping they lead to.
OTHER_DATASETS = {
    "csv with groups": {"format": "csv", "annotations": "data/own/faces.csv", "images": "data/own",
                        "classes": None, "groups": "data/own/groups.csv"},
    "csv without groups": {"format": "csv", "annotations": "data/own/faces.csv", "images": "data/own",
                           "classes": None, "groups": None},
    "fddb": {"format": "fddb", "annotations": "data/fddb/FDDB-folds", "images": "data/fddb", "classes": None,
             "groups": None},
}
# Text of the Caltech report that is false for another dataset.
CALTECH_ONLY_TEXT = ("person", "third-party", "0.8797", "Original study, training", "Goals of the",
                     "against the original study's", "honest comparison", "reach 1.000 on this data")


def write_dataset_params(root: Path, dataset: dict) -> Path:
    """Write a copy of the project's params.yaml with ``dataset`` as its dataset block."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["dataset"] = dataset
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture(scope="module", params=list(OTHER_DATASETS))
def other_dataset_report(request: pytest.FixtureRequest,
                         tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str, str]:
    """Build a full report for one user dataset and return (case, detector part, whole text).

    The detector part is the text before the classifier section, whose caveats speak of the
    persons of the smile datasets.
    """
    case = request.param
    root = tmp_path_factory.mktemp("dataset_report")
    with pytest.MonkeyPatch.context() as monkeypatch:
        monkeypatch.chdir(root)
        argv = write_inputs(root) + write_focal_sweep_inputs(root) + write_classifier_inputs(root)
        argv[argv.index("--params") + 1] = str(write_dataset_params(root, OTHER_DATASETS[case]))
        assert report.main(argv) == 0
    strings = pdf_strings((root / "reports/report.pdf").read_bytes())
    classifier_heading = strings.index("Happy / non-happy classifier")
    return case, " ".join(strings[:classifier_heading]), " ".join(strings)


@pytest.mark.parametrize("caltech_text", CALTECH_ONLY_TEXT)
def test_user_dataset_omits_caltech_text(other_dataset_report: tuple[str, str, str], caltech_text: str) -> None:
    _case, detector_part, _text = other_dataset_report

    assert caltech_text.lower() not in detector_part.lower()


@pytest.mark.parametrize("expected", [
    "chosen while developing the pipeline on Caltech Faces 1999 images, not on this dataset",
    "The original study reported training-set IoU on Caltech Faces 1999 only, so its numbers are not compared",
    "the original study's training mean is left out: it was measured on Caltech Faces 1999",
    "reach 1.000 whenever every face is found",
    "The fold intervals are optimistic",
])
def test_user_dataset_report_contains(other_dataset_report: tuple[str, str, str], expected: str) -> None:
    _case, detector_part, _text = other_dataset_report

    assert expected in detector_part


def test_user_dataset_names_final_detector(other_dataset_report: tuple[str, str, str]) -> None:
    case, _detector_part, text = other_dataset_report
    dataset = OTHER_DATASETS[case]
    source = f"{report.DATASET_NAMES[dataset['format']]} ({dataset['annotations']})"

    assert "Caltech model" not in text
    assert f"own face detector, the final model trained on {source}, with crop margin" in text


# Texts that name each dataset's groups: the summary, the split table and its total row, the
# per-fold metrics, the focal-loss study and its gap figure.
GROUPING_TEXT = {
    "csv with groups": [
        "in which that image's group was held out",
        "Each group's images (dataset.groups) are all in one fold, so no test group is seen in training.",
        "Fold Test groups Test images Train images",
        "all 4 groups 8",
        "Held-out: the fold's test groups.",
        "on the same 5 folds grouped by dataset.groups,",
        "more overfitting to the training groups.",
    ],
    "csv without groups": [
        "in which that image was held out",
        "No groups file is set (dataset.groups), so every image is its own group, and images that show the same "
        "face can be in different folds.",
        "Fold Test images Train images 0 4 4 1 4 4 all 8",
        "Held-out: the fold's test images.",
        "on the same 5 folds, for 6 epochs",
        "more overfitting to the training images.",
        "every image is its own group: images that show the same face or scene",
    ],
    "fddb": [
        "in which that image's FDDB fold was held out",
        "Each fold holds out one FDDB fold, so no test image is seen in training.",
        "Fold Test FDDB folds Test images Train images",
        "all 4 FDDB folds 8",
        "Held-out: the images of the FDDB fold that the fold holds out.",
        "on the same 5 FDDB folds,",
        "more overfitting to the training images.",
    ],
}


def test_user_dataset_names_grouping(other_dataset_report: tuple[str, str, str]) -> None:
    case, detector_part, _text = other_dataset_report

    for expected in GROUPING_TEXT[case]:
        assert expected in detector_part, expected


def test_caltech_report_omits_user_dataset_text(built_report: tuple[bytes, str]) -> None:
    _data, text = built_report

    assert "not on this dataset" not in text
    assert "not compared" not in text
    assert "Original study, training" in text


@pytest.mark.parametrize(("dataset", "expected"), [
    ({}, "person"),
    ({"format": "caltech", "groups": None}, "person"),
    ({"format": "csv", "groups": "data/own/groups.csv"}, "group"),
    ({"format": "voc", "groups": "data/voc/groups.csv"}, "group"),
    ({"format": "csv", "groups": None}, "image"),
    ({"format": "voc"}, "image"),
    ({"format": "fddb", "groups": None}, "FDDB fold"),
])
def test_grouping_noun(dataset: dict, expected: str) -> None:
    assert report.grouping_noun({"dataset": dataset}) == expected


def test_split_rows_name_the_grouping() -> None:
    import pandas as pd

    splits = pd.DataFrame({"image": list("abcde"), "person": ["x", "x", "y", "z", "z"], "fold": [0, 0, 1, 0, 0]})

    assert report.split_rows(splits, "group")[-1] == ("all", "3 groups", "5", "")
    assert report.split_rows(splits, "FDDB fold")[1] == ("1", "y", "1", "4")
    assert report.split_rows(splits.head(3), "FDDB fold")[-1] == ("all", "2 FDDB folds", "3", "")
    assert report.split_rows(splits, "image") == [("0", "4", "1"), ("1", "1", "4"), ("all", "5", "")]


def test_split_rows_count_one_group_singular() -> None:
    import pandas as pd

    splits = pd.DataFrame({"image": ["a", "b"], "person": [7, 7], "fold": [0, 0]})

    assert report.split_rows(splits, "group")[-1] == ("all", "1 group", "2", "")


@pytest.mark.parametrize(("heldout", "on_this_data"), [
    ({"ap50": 1.0, "recall50": 1.0}, True),
    ({"ap50": 1.0, "recall50": 0.995}, False),
    ({"ap50": 0.9996, "recall50": 1.0}, False),
    ({"ap50": None, "recall50": None}, False),
])
def test_saturation_caveat_claims_only_measured(heldout: dict, on_this_data: bool) -> None:
    caveat = report.saturation_caveat(heldout)

    assert ("on this data" in caveat) is on_this_data
    assert caveat.startswith("AP@0.5 and recall@0.5 reach 1.000")


def test_caltech_caveats_keep_their_order() -> None:
    caveats = report.detector_caveats({"dataset": {"format": "caltech"}}, {"ap50": 1.0, "recall50": 1.0})

    assert caveats[0] == report.FOLD_INTERVAL_CAVEAT
    assert "on this data" in caveats[1]
    assert caveats[2:] == list(report.CALTECH_CAVEATS)


def test_summary_table_compares_only_caltech() -> None:
    params = load_params(PROJECT_ROOT / "params.yaml", "default")
    heldout, train = part_metrics(0.81, 8), part_metrics(0.9, 4)

    caltech_header, caltech_rows = report.summary_table(params, heldout, train)
    csv_header, csv_rows = report.summary_table({**params, "dataset": OTHER_DATASETS["csv with groups"]},
                                                heldout, train)

    assert caltech_header[-1] == "Original study, training"
    assert caltech_rows[0] == ("Mean IoU", "0.810", "", "0.900", "0.943")
    assert csv_header == caltech_header[:-1]
    assert csv_rows[0] == ("Mean IoU", "0.810", "", "0.900")
    assert all(len(row) == 4 for row in csv_rows)
