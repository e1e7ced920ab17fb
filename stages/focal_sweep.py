"""Summarize the focal-loss sweep: one detector per (gamma, alpha) setting on the same folds.

Reads one metrics JSON per setting, ``gamma{G}-alpha{A}.json`` with G and A written as Python
``str()`` of the focal_sweep.gammas and focal_sweep.alphas values in params.yaml. Each file has
the layout of reports/metrics/detector.json (see stages.evaluate_detector) plus a block
``"setting": {"gamma": G, "alpha": A, "epochs": E}``.

The primary numbers are means over folds of the per-fold held-out and training metrics, because
the folds are the units that the paired tests compare. The values pooled over all held-out
images of a setting (its file's ``heldout`` block) are kept under ``pooled``. The best setting
has the highest fold-mean held-out IoU. It is compared fold by fold with cross-entropy
(gamma 0) at its own alpha, or, when it is itself gamma 0, with the best gamma > 0 setting.

    python -m stages.focal_sweep --params params.yaml --profile default --results reports/sweep \\
        --metrics reports/metrics/focal_sweep.json --figures reports/focal_sweep
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402  (the backend must be chosen before matplotlib draws anything)
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from scipy import stats  # noqa: E402

from stages.atomic import atomic_directory  # noqa: E402
from stages.cli import run_stage  # noqa: E402
from stages.errors import DataError  # noqa: E402
from stages.evaluate_detector import (  # noqa: E402
    check_metrics_layout,
    json_ready,
    read_json_object,
    write_json_atomic,
)
from stages.figures import DPI, PALETTE, STYLE  # noqa: E402
from stages.params import ParamsError, add_params_arguments, load_params  # noqa: E402

log = logging.getLogger(__name__)

SETTING_FILE_PATTERN = "gamma*-alpha*.json"
SWEEP_PNG = "focal_sweep.png"
GAP_PNG = "focal_sweep_gap.png"
TABLE_CSV = "focal_sweep.csv"

# Metrics compared across settings, as (key in the per-setting files, label in figures).
PANEL_METRICS = (("ap50", "held-out AP@0.5"), ("ap50_95", "held-out AP@[.5:.95]"), ("mean_iou", "held-out mean IoU"))
# Metrics of the paired test between the best setting and its reference.
PAIRED_METRICS = ("mean_iou", "ap50_95")
# Per-fold values every setting file must have (not null), as (part, metric).
REQUIRED_FOLD_VALUES = (("heldout", "ap50"), ("heldout", "ap50_95"), ("heldout", "mean_iou"),
                        ("heldout", "images"), ("train", "ap50_95"), ("train", "mean_iou"), ("train", "images"))
SELECTED_BY = "heldout_mean_iou"
CONFIDENCE_LEVEL = 0.95
# Horizontal offset between the alpha lines at one gamma, in category widths, so error bars do not overlap.
ALPHA_DODGE = 0.08


@dataclass
class SettingResult:
    """One setting's metrics file: its name, path, (gamma, alpha) and the parsed report."""

    name: str
    path: Path
    gamma: float
    alpha: float
    report: dict


def setting_name(gamma: float, alpha: float) -> str:
    """Return the file stem of a setting, e.g. ``gamma0.5-alpha0.25`` for gamma 0.5 and alpha 0.25."""
    return f"gamma{gamma}-alpha{alpha}"


def expected_settings(sweep_params: Mapping[str, Any]) -> dict[str, tuple[float, float]]:
    """Return the grid focal_sweep.gammas x focal_sweep.alphas as {name: (gamma, alpha)}, gamma-major."""
    return {setting_name(gamma, alpha): (gamma, alpha)
            for gamma in sweep_params["gammas"] for alpha in sweep_params["alphas"]}


# --- Input files ---------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def check_finite_numbers(value: Any, source: str, key: str = "") -> None:
    """Raise DataError naming ``source`` and the key of the first NaN, infinite or float-overflowing number.

    Python's json module reads NaN and Infinity, which the layout check accepts as numbers, but
    the summary cannot average or write them.
    """
    if isinstance(value, Mapping):
        for name, item in value.items():
            check_finite_numbers(item, source, f"{key}.{name}" if key else str(name))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            check_finite_numbers(item, source, f"{key}[{index}]")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            finite = math.isfinite(value)
        except OverflowError:
            finite = False
        if not finite:
            raise DataError(f"{source}: {key} is {value!r}, which is not a finite number; "
                            "rerun the sweep stage for this setting")


def check_setting_block(report: Mapping[str, Any], source: str, gamma: float, alpha: float) -> None:
    """Raise DataError unless ``report["setting"]`` contains this file's gamma and alpha and a positive epoch count."""
    setting = report.get("setting")
    if not isinstance(setting, dict):
        raise DataError(f"{source}: setting is {setting!r}, expected an object with gamma, alpha and epochs")
    for key, expected in (("gamma", gamma), ("alpha", alpha)):
        value = setting.get(key)
        if not _is_number(value):
            raise DataError(f"{source}: setting.{key} is {value!r}, expected a finite number")
        if not math.isclose(value, expected, rel_tol=1e-9, abs_tol=1e-12):
            raise DataError(f"{source}: setting.{key} is {value!r}, but the file name gives {expected}; "
                            "rerun the sweep stage for this setting")
    epochs = setting.get("epochs")
    if not isinstance(epochs, int) or isinstance(epochs, bool) or epochs < 1:
        raise DataError(f"{source}: setting.epochs is {epochs!r}, expected a positive integer")


def fold_keys(report: Mapping[str, Any], source: str = "metrics") -> list[str]:
    """Return the report's fold keys (fold<k>) sorted by k; raise DataError naming ``source`` for another form."""
    keys = list((report.get("folds") or {}).keys())
    for key in keys:
        # Zero-padded keys are rejected, so fold01 cannot repeat fold1 under another name.
        if not re.fullmatch(r"fold(0|[1-9]\d*)", key):
            raise DataError(f"{source}: folds.{key}: fold key is not of the form fold<k> (k without leading zeros)")
    return sorted(keys, key=lambda key: int(key[4:]))


def check_fold_values(report: Mapping[str, Any], source: str) -> None:
    """Raise DataError naming the key when a fold lacks a value of REQUIRED_FOLD_VALUES or there are no folds."""
    keys = fold_keys(report, source)
    if not keys:
        raise DataError(f"{source}: folds is empty or missing; expected one block per fold")
    for key in keys:
        fold = report["folds"][key] or {}
        for part, metric in REQUIRED_FOLD_VALUES:
            value = (fold.get(part) or {}).get(metric)
            if value is None:
                raise DataError(f"{source}: folds.{key}.{part}.{metric} is missing or null; "
                                "every fold needs it to compare settings fold by fold")


def read_setting(path: Path, gamma: float, alpha: float) -> SettingResult:
    """Read and check one setting's metrics file (layout, setting block and per-fold values)."""
    source = str(path)
    report = read_json_object(path, remedy="; rerun the sweep stage for this setting")
    check_metrics_layout(report, source)
    check_finite_numbers(report, source)
    check_setting_block(report, source, gamma, alpha)
    check_fold_values(report, source)
    return SettingResult(name=path.stem, path=path, gamma=gamma, alpha=alpha, report=report)


def read_sweep(results_dir: Path, sweep_params: Mapping[str, Any]) -> list[SettingResult]:
    """Read the metrics file of every setting of the grid from ``results_dir``, in grid order.

    Files that match gamma*-alpha*.json but are not in the grid are skipped with a warning.

    Raises:
        DataError: when the folder has no setting file, a setting of the grid has no file, or a
            file is invalid.
    """
    if not results_dir.is_dir():
        raise DataError(f"{results_dir}: folder not found; run the sweep stage first")
    found = {path.stem: path for path in results_dir.glob(SETTING_FILE_PATTERN) if not path.name.startswith(".")}
    if not found:
        raise DataError(f"{results_dir}: no {SETTING_FILE_PATTERN} files found; run the sweep stage first")
    grid = expected_settings(sweep_params)
    for name in sorted(set(found) - set(grid)):
        log.warning("%s: not in the focal_sweep grid of params.yaml, so it is ignored", found[name])
    missing = [f"{name}.json" for name in grid if name not in found]
    if missing:
        raise DataError(f"{results_dir}: missing setting file(s) {', '.join(missing)} of the focal_sweep grid; "
                        "run the sweep stage for them")
    return [read_setting(found[name], gamma, alpha) for name, (gamma, alpha) in grid.items()]


def check_same_folds(results: Sequence[SettingResult]) -> None:
    """Raise DataError unless every setting has the same folds, image counts and epochs as the first one."""
    reference = results[0]
    reference_folds = fold_keys(reference.report)
    for result in results[1:]:
        folds = fold_keys(result.report)
        if folds != reference_folds:
            raise DataError(f"{result.path}: folds {', '.join(folds)} differ from {', '.join(reference_folds)} in "
                            f"{reference.path}; every setting must be evaluated on the same folds")
        for key in folds:
            for part in ("heldout", "train"):
                images = result.report["folds"][key][part]["images"]
                expected = reference.report["folds"][key][part]["images"]
                if images != expected:
                    raise DataError(f"{result.path}: folds.{key}.{part}.images is {images}, but {expected} in "
                                    f"{reference.path}; every setting must be evaluated on the same folds")
        epochs = result.report["setting"]["epochs"]
        if epochs != reference.report["setting"]["epochs"]:
            raise DataError(f"{result.path}: setting.epochs is {epochs}, but {reference.report['setting']['epochs']} "
                            f"in {reference.path}; rerun the sweep so that every setting trains as long")


def check_sweep_epochs(result: SettingResult, sweep_params: Mapping[str, Any], detector_epochs: int,
                       source: str) -> None:
    """Raise DataError unless the setting trained focal_sweep.epochs epochs (detector.epochs when that is null)."""
    expected = sweep_params.get("epochs")
    name = "focal_sweep.epochs"
    if expected is None:
        expected, name = detector_epochs, "detector.epochs (focal_sweep.epochs is null)"
    epochs = result.report["setting"]["epochs"]
    if epochs != expected:
        raise DataError(f"{result.path}: setting.epochs is {epochs}, but {name} in {source} is {expected}; "
                        "rerun the sweep stage")


def check_sweep_profile(results: Sequence[SettingResult], profile: str, source: str) -> None:
    """Raise DataError unless every setting was trained and evaluated with ``profile``.

    Settings of another profile may have another backbone and image size, so they are not comparable.
    """
    for result in results:
        trained = result.report.get("profile")
        if trained != profile:
            raise DataError(f"{result.path}: profile is {trained!r}, but this summary uses profile {profile!r} of "
                            f"{source}; rerun the sweep stage for this setting with --profile {profile}")


# --- Summary -------------------------------------------------------------------------


def fold_values(result: SettingResult, part: str, metric: str) -> np.ndarray:
    """Return the per-fold values of ``part``.``metric``, ordered by fold number."""
    folds = result.report["folds"]
    return np.array([folds[key][part][metric] for key in fold_keys(result.report)], dtype=np.float64)


def _sd(values: np.ndarray) -> float:
    return float(values.std(ddof=1)) if len(values) > 1 else 0.0


def summarize_setting(result: SettingResult) -> dict[str, Any]:
    """Return a setting's row of the summary: fold means, held-out fold SDs, train-minus-held-out gaps, pooled values.

    A gap is the fold mean of (train value - held-out value) of the same fold, which equals the
    difference of the two fold means.
    """
    summary: dict[str, Any] = {"gamma": result.gamma, "alpha": result.alpha}
    for metric, _label in PANEL_METRICS:
        values = fold_values(result, "heldout", metric)
        summary[f"heldout_{metric}"] = float(values.mean())
        summary[f"heldout_{metric}_fold_sd"] = _sd(values)
    for metric in PAIRED_METRICS:
        train = fold_values(result, "train", metric)
        summary[f"train_{metric}"] = float(train.mean())
        summary[f"gap_{metric}"] = float((train - fold_values(result, "heldout", metric)).mean())
    heldout = result.report.get("heldout") or {}
    train = result.report.get("train") or {}
    summary["pooled"] = {**{f"heldout_{metric}": heldout.get(metric) for metric, _label in PANEL_METRICS},
                         "train_mean_iou": train.get("mean_iou")}
    return summary


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def paired_difference(values: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """Compare two settings fold by fold: mean of ``values - reference``, its Student-t 95% CI and two p values.

    ``t_test_p`` is the two-sided paired t-test (``scipy.stats.ttest_rel``) and ``wilcoxon_p``
    the two-sided Wilcoxon signed-rank test (``scipy.stats.wilcoxon``). With 5 folds the
    smallest possible Wilcoxon p is 2 / 2^5 = 0.0625, so it can never fall below 0.05. A value
    that scipy cannot compute (fewer than two folds, or all differences equal to zero for the
    t-test) is None.
    """
    differences = values - reference
    count = len(differences)
    mean = float(differences.mean())
    result: dict[str, Any] = {"mean_difference": mean, "ci95_low": None, "ci95_high": None,
                              "t_test_p": None, "wilcoxon_p": None}
    if count < 2:
        return result
    half_width = float(stats.t.ppf(0.5 + CONFIDENCE_LEVEL / 2, df=count - 1)) * _sd(differences) / math.sqrt(count)
    result["ci95_low"] = mean - half_width
    result["ci95_high"] = mean + half_width
    with warnings.catch_warnings():
        # scipy warns about zero or tied differences and falls back to an approximate p; that p is kept.
        warnings.simplefilter("ignore", category=RuntimeWarning)
        warnings.simplefilter("ignore", category=UserWarning)
        result["t_test_p"] = _finite_or_none(stats.ttest_rel(values, reference).pvalue)
        result["wilcoxon_p"] = _finite_or_none(stats.wilcoxon(values, reference).pvalue)
    return result


def choose_best(results: Sequence[SettingResult], summaries: Mapping[str, Mapping[str, Any]],
                candidates: Sequence[str] | None = None) -> SettingResult:
    """Return the setting with the highest fold-mean held-out IoU; a tie goes to the first in grid order."""
    pool = [result for result in results if candidates is None or result.name in candidates]
    return max(pool, key=lambda result: summaries[result.name][SELECTED_BY])


def choose_reference(results: Sequence[SettingResult], summaries: Mapping[str, Mapping[str, Any]],
                     best: SettingResult) -> tuple[SettingResult | None, str]:
    """Return the setting the best one is tested against, and a sentence that describes how it was chosen.

    A best setting with gamma > 0 is compared with gamma 0 at its own alpha. A best setting with
    gamma 0 is compared with the best gamma > 0 setting. The reference is None when the grid
    has no such setting.
    """
    if best.gamma != 0:
        for result in results:
            if result.gamma == 0 and result.alpha == best.alpha:
                return result, "best setting against cross-entropy (gamma 0) at the same alpha"
        return None, f"no gamma 0 setting at alpha {best.alpha} in the grid, so there is no paired test"
    focal = [result.name for result in results if result.gamma != 0]
    if not focal:
        return None, "the grid has no gamma > 0 setting, so there is no paired test"
    reference = choose_best(results, summaries, focal)
    return reference, "the best setting is cross-entropy (gamma 0), so it is compared with the best gamma > 0 setting"


def paired_test(results: Sequence[SettingResult], summaries: Mapping[str, Mapping[str, Any]],
                best: SettingResult) -> dict[str, Any]:
    """Compare the best setting with its reference (see ``choose_reference``) on every metric of PAIRED_METRICS."""
    reference, comparison = choose_reference(results, summaries, best)
    test: dict[str, Any] = {"best": best.name, "reference": reference.name if reference else None,
                            "comparison": comparison, "best_is_gamma0": best.gamma == 0,
                            "folds": len(fold_keys(best.report))}
    for metric in PAIRED_METRICS:
        if reference is None:
            test[metric] = None
            continue
        test[metric] = paired_difference(fold_values(best, "heldout", metric),
                                         fold_values(reference, "heldout", metric))
    return test


def summarize_sweep(results: Sequence[SettingResult], profile: str) -> dict[str, Any]:
    """Build the focal_sweep.json report: per-setting rows, the best setting and its paired test."""
    summaries = {result.name: summarize_setting(result) for result in results}
    best = choose_best(results, summaries)
    best_summary = summaries[best.name]
    return {
        "profile": profile,
        "epochs": results[0].report["setting"]["epochs"],
        "folds": len(fold_keys(results[0].report)),
        "settings": summaries,
        "best": {"setting": best.name, "selected_by": f"{SELECTED_BY} (fold mean)", "gamma": best.gamma,
                 "alpha": best.alpha, "heldout_mean_iou": best_summary["heldout_mean_iou"],
                 "heldout_ap50_95": best_summary["heldout_ap50_95"]},
        "paired_test": paired_test(results, summaries, best),
    }


def summary_table(summary: Mapping[str, Any]) -> pd.DataFrame:
    """Return one row per setting, with the pooled values as pooled_* columns."""
    rows = []
    for name, values in summary["settings"].items():
        row = {"setting": name, **{key: value for key, value in values.items() if key != "pooled"}}
        row.update({f"pooled_{key}": value for key, value in values["pooled"].items()})
        rows.append(row)
    return pd.DataFrame(rows)


def check_summary_layout(summary: Any, source: str) -> None:
    """Raise DataError naming ``source`` and the key where a focal_sweep.json departs from ``summarize_sweep``'s layout."""
    if not isinstance(summary, dict):
        raise DataError(f"{source}: expected a JSON object, found {type(summary).__name__}")
    settings = summary.get("settings")
    if not isinstance(settings, dict) or not settings:
        raise DataError(f"{source}: settings is {settings!r}, expected a non-empty JSON object")
    for name, row in settings.items():
        if not isinstance(row, dict):
            raise DataError(f"{source}: settings.{name} is {row!r}, expected a JSON object")
        # The report sorts the settings by gamma and alpha, so these two cannot be null.
        for key in ("gamma", "alpha"):
            if not _is_number(row.get(key)):
                raise DataError(f"{source}: settings.{name}.{key} is {row.get(key)!r}, expected a finite number")
        values = {**{key: value for key, value in row.items() if key != "pooled"},
                  **{f"pooled.{key}": value for key, value in (row.get("pooled") or {}).items()}}
        for key, value in values.items():
            if value is not None and not _is_number(value):
                raise DataError(f"{source}: settings.{name}.{key} is {value!r}, expected a number or null")
    best = summary.get("best")
    if not isinstance(best, dict) or best.get("setting") not in settings:
        raise DataError(f"{source}: best is {best!r}, expected an object whose setting is one of settings")
    test = summary.get("paired_test")
    if not isinstance(test, dict):
        raise DataError(f"{source}: paired_test is {test!r}, expected a JSON object")
    for metric in PAIRED_METRICS:
        block = test.get(metric)
        if block is not None and not isinstance(block, dict):
            raise DataError(f"{source}: paired_test.{metric} is {block!r}, expected a JSON object or null")


# --- Figures -------------------------------------------------------------------------


def gamma_tick_labels(gammas: Sequence[float]) -> list[str]:
    """Return the x tick labels: each gamma, with gamma 0 marked as cross-entropy."""
    return [f"{gamma:g}\n(cross-entropy)" if gamma == 0 else f"{gamma:g}" for gamma in gammas]


def _alpha_colour(index: int) -> str:
    return PALETTE[index % len(PALETTE)]


def plot_sweep(results: Sequence[SettingResult], gammas: Sequence[float], alphas: Sequence[float]) -> Figure:
    """Plot held-out AP@0.5, AP@[.5:.95] and mean IoU against gamma, one line per alpha.

    Markers are fold means and error bars one fold SD (ddof 1). Gammas sit at evenly spaced
    positions, so the x axis is categorical, not to scale.
    """
    by_setting = {(result.gamma, result.alpha): result for result in results}
    positions = np.arange(len(gammas), dtype=np.float64)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(11, 3.8), layout="constrained")
        axes = fig.subplots(1, len(PANEL_METRICS))
        for ax, (metric, label) in zip(axes, PANEL_METRICS):
            for index, alpha in enumerate(alphas):
                offset = (index - (len(alphas) - 1) / 2) * ALPHA_DODGE
                folds = [fold_values(by_setting[(gamma, alpha)], "heldout", metric) for gamma in gammas]
                ax.errorbar(positions + offset, [values.mean() for values in folds],
                            yerr=[_sd(values) for values in folds], color=_alpha_colour(index), marker="o",
                            markersize=5, linewidth=1.6, capsize=3, label=rf"$\alpha$ = {alpha:g}")
            ax.set_xticks(positions, gamma_tick_labels(gammas))
            ax.set_xlabel(r"focusing parameter $\gamma$")
            ax.set_ylabel(r"fold mean $\pm$ SD")
            ax.set_title(label)
        axes[0].legend(loc="best")
    return fig


def plot_gap(results: Sequence[SettingResult], gammas: Sequence[float], alphas: Sequence[float]) -> Figure:
    """Plot the train-minus-held-out mean IoU gap per setting as grouped bars, error bars one fold SD."""
    by_setting = {(result.gamma, result.alpha): result for result in results}
    positions = np.arange(len(gammas), dtype=np.float64)
    width = 0.8 / len(alphas)
    with matplotlib.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 3.8), layout="constrained")
        ax = fig.subplots()
        for index, alpha in enumerate(alphas):
            gaps = [fold_values(by_setting[(gamma, alpha)], "train", "mean_iou")
                    - fold_values(by_setting[(gamma, alpha)], "heldout", "mean_iou") for gamma in gammas]
            ax.bar(positions + (index - (len(alphas) - 1) / 2) * width, [gap.mean() for gap in gaps], width,
                   yerr=[_sd(gap) for gap in gaps], capsize=2.5, color=_alpha_colour(index),
                   error_kw={"ecolor": "0.35", "elinewidth": 1}, label=rf"$\alpha$ = {alpha:g}")
        ax.axhline(0.0, color="0.3", linewidth=0.8)
        ax.set_xticks(positions, gamma_tick_labels(gammas))
        ax.set_xlabel(r"focusing parameter $\gamma$")
        ax.set_ylabel("train - held-out mean IoU\n" + r"(fold mean $\pm$ SD)")
        ax.set_title("Generalization gap of mean IoU")
        ax.legend(loc="best")
    return fig


# --- Command line --------------------------------------------------------------------


def read_sweep_params(params: Mapping[str, Any], source: str) -> dict[str, Any]:
    """Return the focal_sweep section, or raise ParamsError when it or its gammas and alphas are missing."""
    sweep = params.get("focal_sweep")
    if not isinstance(sweep, dict):
        raise ParamsError(f"{source}: section focal_sweep is missing; it lists the gammas and alphas of the sweep")
    for key in ("gammas", "alphas"):
        if not isinstance(sweep.get(key), list) or not sweep[key]:
            raise ParamsError(f"{source}: focal_sweep.{key} is {sweep.get(key)!r}, expected a non-empty list")
    return sweep


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the focal-sweep summary stage."""
    parser = argparse.ArgumentParser(prog="python -m stages.focal_sweep", description=__doc__.split("\n\n")[0])
    add_params_arguments(parser)
    parser.add_argument("--results", type=Path, required=True,
                        help="folder with one gamma<G>-alpha<A>.json metrics file per setting")
    parser.add_argument("--metrics", type=Path, required=True, help="output summary JSON (focal_sweep.json)")
    parser.add_argument("--figures", type=Path, required=True,
                        help=f"output folder for {SWEEP_PNG}, {GAP_PNG} and {TABLE_CSV}; replaced as a whole")
    return parser


def output_path_problem(args: argparse.Namespace) -> str | None:
    """Return why ``--figures`` would delete an input or the summary, or None when it would not.

    ``--figures`` is replaced as a whole, so it must not be, contain or lie inside ``--results``,
    and must not contain ``--params`` or ``--metrics``.
    """
    figures = args.figures.resolve()
    results = args.results.resolve()
    if figures == results or figures in results.parents or results in figures.parents:
        return (f"--figures {args.figures} overlaps --results {args.results}; --figures is replaced as a whole, "
                "so choose a separate folder")
    for option, path in (("--params", args.params), ("--metrics", args.metrics)):
        if figures in path.resolve().parents:
            return f"{option} {path} is inside --figures {args.figures}, which is replaced as a whole; choose a path outside it"
    return None


def summarize(args: argparse.Namespace) -> None:
    """Read every setting's metrics, then write the summary JSON, the figures and the table."""
    params = load_params(args.params, args.profile)
    sweep_params = read_sweep_params(params, str(args.params))
    results = read_sweep(args.results, sweep_params)
    check_same_folds(results)
    check_sweep_epochs(results[0], sweep_params, params["detector"]["epochs"], str(args.params))
    check_sweep_profile(results, params["profile"], str(args.params))

    summary = json_ready(summarize_sweep(results, params["profile"]))
    figures = {SWEEP_PNG: lambda: plot_sweep(results, sweep_params["gammas"], sweep_params["alphas"]),
               GAP_PNG: lambda: plot_gap(results, sweep_params["gammas"], sweep_params["alphas"])}
    # All outputs are built before any is published, so a failure leaves the previous ones in place.
    with atomic_directory(args.figures) as staging:
        for name, draw in figures.items():
            draw().savefig(staging / name, dpi=DPI, format="png", facecolor="white")
        summary_table(summary).to_csv(staging / TABLE_CSV, index=False)
    write_json_atomic(summary, args.metrics)

    best = summary["best"]
    log.info("%d settings, best %s (held-out mean IoU %.4f over %d folds); wrote %s and %s",
             len(results), best["setting"], best["heldout_mean_iou"], summary["folds"], args.metrics, args.figures)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the focal-sweep summary stage; return 0 on success and 1 on a known error. Invalid paths exit with status 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    problem = output_path_problem(args)
    if problem is not None:
        parser.error(problem)
    return run_stage(summarize, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
