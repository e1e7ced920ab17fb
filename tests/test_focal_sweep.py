"""Tests of stages.focal_sweep on per-setting files made from the committed detector.json."""

from __future__ import annotations

import copy
import json
import logging
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from stages import focal_sweep as stage
from stages.errors import DataError
from stages.params import PROJECT_ROOT

DETECTOR_JSON = PROJECT_ROOT / "reports" / "metrics" / "detector.json"
GAMMAS = [0, 2]
ALPHAS = [0.25, 0.5]
EPOCHS = 6
# Per-fold held-out mean IoU of the reference (gamma 0, alpha 0.25), and the best setting's
# differences from it. The absolute differences are distinct and one is negative, so the
# Wilcoxon signed-rank statistic is W- = 1 (rank of 0.004) and its exact two-sided p is
# 2 * P(W- <= 1) = 2 * 2 / 2^5 = 0.125.
REFERENCE_IOU = [0.85, 0.83, 0.86, 0.84, 0.82]
BEST_DIFFERENCES = [0.01, 0.02, 0.005, 0.03, -0.004]
# Student-t quantile t(0.975, 4 degrees of freedom), from a printed table.
T_975_DF4 = 2.776445


def setting_report(gamma: float, alpha: float, heldout_iou: list[float], epochs: int = EPOCHS) -> dict:
    """Return detector.json with a setting block, the given per-fold held-out IoUs and AP@[.5:.95] 0.1 below them."""
    report = copy.deepcopy(json.loads(DETECTOR_JSON.read_text(encoding="utf-8")))
    report["setting"] = {"gamma": gamma, "alpha": alpha, "epochs": epochs}
    for key, iou in zip(sorted(report["folds"], key=lambda key: int(key[4:])), heldout_iou):
        report["folds"][key]["heldout"]["mean_iou"] = iou
        report["folds"][key]["heldout"]["ap50_95"] = iou - 0.1
    return report


def default_reports() -> dict[str, dict]:
    """Return the four settings of the test grid; gamma 2, alpha 0.25 has the highest held-out IoU."""
    best = [value + difference for value, difference in zip(REFERENCE_IOU, BEST_DIFFERENCES)]
    lower = [value - 0.05 for value in REFERENCE_IOU]
    return {
        "gamma0-alpha0.25": setting_report(0, 0.25, REFERENCE_IOU),
        "gamma0-alpha0.5": setting_report(0, 0.5, lower),
        "gamma2-alpha0.25": setting_report(2, 0.25, best),
        "gamma2-alpha0.5": setting_report(2, 0.5, [value - 0.01 for value in lower]),
    }


def write_reports(folder: Path, reports: dict[str, dict]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, report in reports.items():
        (folder / f"{name}.json").write_text(json.dumps(report), encoding="utf-8")


def write_params(root: Path, epochs: int = EPOCHS) -> Path:
    """Write params.yaml with a focal_sweep grid of GAMMAS x ALPHAS; the rest is the project's file."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["focal_sweep"] = {**(params.get("focal_sweep") or {}), "gammas": GAMMAS, "alphas": ALPHAS,
                             "epochs": epochs}
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def stage_arguments(root: Path) -> list[str]:
    return [
        "--params", str(root / "params.yaml"), "--profile", "default",
        "--results", str(root / "reports" / "sweep"),
        "--metrics", str(root / "reports" / "metrics" / "focal_sweep.json"),
        "--figures", str(root / "reports" / "focal_sweep"),
    ]  # fmt: skip


def run_summary(root: Path, reports: dict[str, dict] | None = None) -> int:
    write_params(root)
    write_reports(root / "reports" / "sweep", default_reports() if reports is None else reports)
    return stage.main(stage_arguments(root))


def read_summary(root: Path) -> dict:
    return json.loads((root / "reports" / "metrics" / "focal_sweep.json").read_text(encoding="utf-8"))


def t_distribution_cdf_df4(t: float) -> float:
    """Return the Student-t CDF with 4 degrees of freedom from its closed form."""
    scaled = t / math.sqrt(1 + t * t / 4)
    return 0.5 + 0.375 * scaled * (1 - t * t / (12 * (1 + t * t / 4)))


@pytest.fixture(scope="module")
def summary_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("sweep")
    assert run_summary(root) == 0
    return root


def test_summary_best_setting(summary_run: Path) -> None:
    summary = read_summary(summary_run)

    assert list(summary["settings"]) == ["gamma0-alpha0.25", "gamma0-alpha0.5", "gamma2-alpha0.25", "gamma2-alpha0.5"]
    assert summary["best"]["setting"] == "gamma2-alpha0.25"
    assert summary["best"]["selected_by"] == "heldout_mean_iou (fold mean)"
    assert summary["epochs"] == EPOCHS
    assert summary["folds"] == 5
    assert summary["profile"] == "default"


def test_summary_setting_row(summary_run: Path) -> None:
    detector = json.loads(DETECTOR_JSON.read_text(encoding="utf-8"))
    row = read_summary(summary_run)["settings"]["gamma0-alpha0.25"]

    train_iou = np.mean([fold["train"]["mean_iou"] for fold in detector["folds"].values()])
    assert row["gamma"] == 0
    assert row["alpha"] == 0.25
    assert row["heldout_mean_iou"] == pytest.approx(np.mean(REFERENCE_IOU), abs=1e-4)
    assert row["heldout_mean_iou_fold_sd"] == pytest.approx(np.std(REFERENCE_IOU, ddof=1), abs=1e-4)
    assert row["heldout_ap50_95"] == pytest.approx(np.mean(REFERENCE_IOU) - 0.1, abs=1e-4)
    assert row["train_mean_iou"] == pytest.approx(train_iou, abs=1e-4)
    assert row["gap_mean_iou"] == pytest.approx(train_iou - np.mean(REFERENCE_IOU), abs=1e-4)
    # The pooled values are copied from the file's own heldout block, which the test leaves as it is.
    assert row["pooled"]["heldout_mean_iou"] == detector["heldout"]["mean_iou"]
    assert row["pooled"]["train_mean_iou"] == detector["train"]["mean_iou"]


def test_paired_test_matches_hand_computation(summary_run: Path) -> None:
    test = read_summary(summary_run)["paired_test"]

    differences = np.array(BEST_DIFFERENCES)
    mean = differences.sum() / 5
    sd = math.sqrt(((differences - mean) ** 2).sum() / 4)
    t = mean / (sd / math.sqrt(5))
    assert test["best"] == "gamma2-alpha0.25"
    assert test["reference"] == "gamma0-alpha0.25"
    assert test["best_is_gamma0"] is False
    assert test["folds"] == 5
    iou = test["mean_iou"]
    assert iou["mean_difference"] == pytest.approx(mean, abs=1e-4)
    assert iou["ci95_low"] == pytest.approx(mean - T_975_DF4 * sd / math.sqrt(5), abs=1e-4)
    assert iou["ci95_high"] == pytest.approx(mean + T_975_DF4 * sd / math.sqrt(5), abs=1e-4)
    assert iou["t_test_p"] == pytest.approx(2 * (1 - t_distribution_cdf_df4(t)), abs=1e-4)
    assert iou["wilcoxon_p"] == pytest.approx(0.125, abs=1e-4)
    # AP@[.5:.95] is IoU - 0.1 in every fold of the test files, so its differences are the same.
    assert test["ap50_95"]["mean_difference"] == pytest.approx(mean, abs=1e-4)


def test_best_gamma0_is_compared_with_best_focal(tmp_path: Path) -> None:
    reports = default_reports()
    reports["gamma0-alpha0.5"] = setting_report(0, 0.5, [value + 0.1 for value in REFERENCE_IOU])

    assert run_summary(tmp_path, reports) == 0

    test = read_summary(tmp_path)["paired_test"]
    assert test["best"] == "gamma0-alpha0.5"
    assert test["reference"] == "gamma2-alpha0.25"
    assert test["best_is_gamma0"] is True
    assert "best gamma > 0 setting" in test["comparison"]


def test_paired_difference_all_equal() -> None:
    values = np.array([0.8, 0.9, 0.85])

    result = stage.paired_difference(values, values)

    assert result["mean_difference"] == 0.0
    assert result["ci95_low"] == 0.0
    assert result["t_test_p"] is None


def test_figures_and_table_written(summary_run: Path) -> None:
    out = summary_run / "reports" / "focal_sweep"

    assert sorted(path.name for path in out.iterdir()) == ["focal_sweep.csv", "focal_sweep.png", "focal_sweep_gap.png"]
    for name in ("focal_sweep.png", "focal_sweep_gap.png"):
        with Image.open(out / name) as image:
            assert image.format == "PNG"
            assert image.width > 800
    table = pd.read_csv(out / "focal_sweep.csv")
    assert len(table) == 4
    assert {"setting", "gamma", "alpha", "heldout_mean_iou", "gap_mean_iou", "pooled_heldout_ap50"} <= set(table)


def test_extra_file_is_ignored(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    reports = default_reports()
    reports["gamma1-alpha0.25"] = setting_report(1, 0.25, [0.99] * 5)

    with caplog.at_level(logging.WARNING):
        assert run_summary(tmp_path, reports) == 0

    assert "gamma1-alpha0.25.json: not in the focal_sweep grid" in caplog.text
    assert "gamma1-alpha0.25" not in read_summary(tmp_path)["settings"]


def break_fold_images(reports: dict) -> None:
    reports["gamma2-alpha0.5"]["folds"]["fold3"]["heldout"]["images"] = 90


def drop_setting(reports: dict) -> None:
    del reports["gamma2-alpha0.5"]["setting"]


def wrong_gamma(reports: dict) -> None:
    reports["gamma2-alpha0.5"]["setting"]["gamma"] = 1


def null_fold_value(reports: dict) -> None:
    reports["gamma0-alpha0.5"]["folds"]["fold1"]["train"]["mean_iou"] = None


def bad_layout(reports: dict) -> None:
    reports["gamma0-alpha0.5"]["folds"]["fold1"]["heldout"]["ap50"] = "high"


def other_epochs(reports: dict) -> None:
    reports["gamma2-alpha0.25"]["setting"]["epochs"] = 3


def missing_fold(reports: dict) -> None:
    del reports["gamma2-alpha0.25"]["folds"]["fold4"]


def other_profile(reports: dict) -> None:
    reports["gamma2-alpha0.5"]["profile"] = "paper"


def nan_fold_value(reports: dict) -> None:
    # json.dumps writes NaN, which json.loads reads back as a float.
    reports["gamma0-alpha0.5"]["folds"]["fold1"]["heldout"]["mean_iou"] = math.nan


def infinite_pooled_value(reports: dict) -> None:
    reports["gamma2-alpha0.5"]["heldout"]["ap50"] = math.inf


def padded_fold_key(reports: dict) -> None:
    for report in reports.values():
        report["folds"]["fold01"] = copy.deepcopy(report["folds"]["fold1"])


@pytest.mark.parametrize(("change", "message"), [
    (break_fold_images, r"gamma2-alpha0\.5\.json: folds\.fold3\.heldout\.images is 90, but 91 in .*gamma0-alpha0\.25"),
    (drop_setting, r"gamma2-alpha0\.5\.json: setting is None, expected an object"),
    (wrong_gamma, r"gamma2-alpha0\.5\.json: setting\.gamma is 1, but the file name gives 2"),
    (null_fold_value, r"gamma0-alpha0\.5\.json: folds\.fold1\.train\.mean_iou is missing or null"),
    (bad_layout, r"gamma0-alpha0\.5\.json: folds\.fold1\.heldout\.ap50 is 'high', expected a number or null"),
    (other_epochs, r"gamma2-alpha0\.25\.json: setting\.epochs is 3, but 6 in"),
    (missing_fold, r"gamma2-alpha0\.25\.json: folds fold0, fold1, fold2, fold3 differ from"),
    (other_profile, r"gamma2-alpha0\.5\.json: profile is 'paper', but this summary uses profile 'default'"),
    (nan_fold_value, r"gamma0-alpha0\.5\.json: folds\.fold1\.heldout\.mean_iou is nan, which is not a finite number"),
    (infinite_pooled_value, r"gamma2-alpha0\.5\.json: heldout\.ap50 is inf, which is not a finite number"),
    (padded_fold_key, r"gamma0-alpha0\.25\.json: folds\.fold01: fold key is not of the form fold<k>"),
])
def test_bad_setting_file_is_rejected(tmp_path: Path, capsys: pytest.CaptureFixture, change, message) -> None:
    reports = default_reports()
    change(reports)

    assert run_summary(tmp_path, reports) == 1

    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert "Traceback" not in error


def test_missing_setting_file_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    reports = default_reports()
    del reports["gamma2-alpha0.5"]

    assert run_summary(tmp_path, reports) == 1

    assert "missing setting file(s) gamma2-alpha0.5.json" in capsys.readouterr().err


def test_empty_results_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert run_summary(tmp_path, {}) == 1

    assert "no gamma*-alpha*.json files found" in capsys.readouterr().err


def test_invalid_json_is_named(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_reports(tmp_path / "reports" / "sweep", default_reports())
    (tmp_path / "reports" / "sweep" / "gamma0-alpha0.5.json").write_text("{", encoding="utf-8")

    assert run_summary(tmp_path, {}) == 1

    assert "gamma0-alpha0.5.json: invalid JSON" in capsys.readouterr().err


def test_params_epochs_must_match(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    write_reports(tmp_path / "reports" / "sweep", default_reports())
    write_params(tmp_path, epochs=EPOCHS + 1)

    assert stage.main(stage_arguments(tmp_path)) == 1

    assert f"focal_sweep.epochs in {tmp_path / 'params.yaml'} is {EPOCHS + 1}" in capsys.readouterr().err


def test_null_params_epochs_means_detector_epochs(tmp_path: Path) -> None:
    result = stage.SettingResult("gamma0-alpha0.25", tmp_path / "gamma0-alpha0.25.json", 0, 0.25,
                                 setting_report(0, 0.25, REFERENCE_IOU, epochs=20))

    stage.check_sweep_epochs(result, {"epochs": None}, 20, "params.yaml")
    with pytest.raises(DataError, match=r"setting\.epochs is 20, but detector\.epochs \(focal_sweep\.epochs is null\)"):
        stage.check_sweep_epochs(result, {"epochs": None}, 12, "params.yaml")


def test_failed_run_keeps_previous_outputs(tmp_path: Path) -> None:
    assert run_summary(tmp_path) == 0
    outputs = [tmp_path / "reports" / "metrics" / "focal_sweep.json",
               *sorted((tmp_path / "reports" / "focal_sweep").iterdir())]
    before = {path: path.read_bytes() for path in outputs}
    reports = default_reports()
    wrong_gamma(reports)

    assert run_summary(tmp_path, reports) == 1

    assert {path: path.read_bytes() for path in outputs} == before
    assert sorted((tmp_path / "reports" / "focal_sweep").iterdir()) == outputs[1:]
    assert list(tmp_path.rglob("*.tmp")) == []


def test_expected_settings_use_yaml_spelling() -> None:
    grid = stage.expected_settings({"gammas": [0, 0.5, 2], "alphas": [0.25]})

    assert list(grid) == ["gamma0-alpha0.25", "gamma0.5-alpha0.25", "gamma2-alpha0.25"]


def test_read_setting_accepts_timing_block(tmp_path: Path) -> None:
    report = setting_report(0, 0.25, REFERENCE_IOU)
    report["timing"] = {"ms_per_image_mean": 25.0, "ms_per_image_median": 24.0, "images": 440}
    path = tmp_path / "gamma0-alpha0.25.json"
    path.write_text(json.dumps(report), encoding="utf-8")

    result = stage.read_setting(path, 0, 0.25)

    assert result.name == "gamma0-alpha0.25"
    with pytest.raises(DataError, match=r"setting\.alpha is 0\.25, but the file name gives 0\.5"):
        stage.read_setting(path, 0, 0.5)


@pytest.mark.parametrize("key", ["gamma", "alpha"])
def test_summary_layout_needs_setting_numbers(summary_run: Path, key: str) -> None:
    summary = read_summary(summary_run)
    summary["settings"]["gamma2-alpha0.5"][key] = None

    with pytest.raises(DataError, match=rf"focal_sweep\.json: settings\.gamma2-alpha0\.5\.{key} is None, expected a finite number"):
        stage.check_summary_layout(summary, "focal_sweep.json")


@pytest.mark.parametrize(("option", "path", "message"), [
    ("--figures", "reports/sweep", "overlaps --results"),
    ("--figures", "reports", "overlaps --results"),
    ("--figures", "reports/sweep/figures", "overlaps --results"),
    ("--metrics", "reports/focal_sweep/focal_sweep.json", "--metrics .* is inside --figures"),
])
def test_figures_overlapping_inputs_rejected(tmp_path: Path, capsys: pytest.CaptureFixture, option: str, path: str,
                                             message: str) -> None:
    write_params(tmp_path)
    write_reports(tmp_path / "reports" / "sweep", default_reports())
    before = {file: file.read_bytes() for file in sorted((tmp_path / "reports").rglob("*")) if file.is_file()}
    arguments = stage_arguments(tmp_path)
    arguments[arguments.index(option) + 1] = str(tmp_path / path)

    with pytest.raises(SystemExit) as exit_info:
        stage.main(arguments)

    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert {file: file.read_bytes() for file in sorted((tmp_path / "reports").rglob("*")) if file.is_file()} == before
