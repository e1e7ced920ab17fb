"""The smoke profile runs end to end on real images, through DVC and through Snakemake.

Each orchestrator runs in its own copy of the project. The dataset comes from the mirror folder
named by EMOTIVELENS_MIRROR when it is set, otherwise from the official download.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable

import pytest

PROJECT_ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 900
SMOKE_GAMMAS = (0, 2)
SMOKE_ALPHA = 0.25

pytestmark = pytest.mark.integration


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # The stage commands call plain `python`, so this interpreter's folder goes first on PATH:
    # the tests then pass from an activated environment and from `.venv/bin/python -m pytest`.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PYTHONPATH=str(cwd), PATH=path)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def smoke_params(profile: str) -> Callable[[dict], None]:
    """Return a params.yaml edit that sets ``profile`` and two focal settings for the grid."""

    def edit(params: dict) -> None:
        params["profile"] = profile
        # Two focal settings stand for the grid: the matrix of dvc.yaml reads it from params.yaml.
        params["focal_sweep"].update(gammas=list(SMOKE_GAMMAS), alphas=[SMOKE_ALPHA])

    return edit


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory, copy_project):
    project = copy_project(tmp_path_factory.mktemp("dvc") / "project", smoke_params("smoke"))
    first = run([sys.executable, "-m", "dvc", "repro"], project)
    second = run([sys.executable, "-m", "dvc", "repro"], project)
    return project, first, second


@pytest.fixture(scope="module")
def snakemake_project(tmp_path_factory, copy_project):
    project = copy_project(tmp_path_factory.mktemp("snakemake") / "project", smoke_params("default"))
    run([sys.executable, "-m", "snakemake", "--cores", "2", "--config", "profile=smoke"], project)
    dry_run = run([sys.executable, "-m", "snakemake", "--dry-run", "--config", "profile=smoke"], project)
    return project, dry_run


def read_metrics(project: Path) -> dict:
    return json.loads((project / "reports" / "metrics" / "detector.json").read_text())


def assert_pipeline_outputs(project: Path) -> None:
    metrics = read_metrics(project)
    assert metrics["dataset"]["folds"] == 2
    assert metrics["dataset"]["grouped_by"] == "person"
    assert set(metrics["folds"]) == {"fold0", "fold1"}
    for part in ("heldout", "train"):
        for key in ("mean_iou", "min_iou", "max_iou", "ap50", "ap50_95", "recall50"):
            assert 0.0 <= metrics[part][key] <= 1.0, f"{part}.{key}"
    figures = {path.name for path in (project / "reports" / "figures").glob("*.png")}
    assert {"focal_loss.png", "per_image_iou.png", "examples.png", "pr_curves.png", "training_curves.png"} <= figures
    assert (project / "reports" / "emotivelens-report.pdf").read_bytes().startswith(b"%PDF")
    assert_classifier_outputs(project)
    assert_focal_sweep_outputs(project)
    baselines = json.loads((project / "reports" / "metrics" / "baselines.json").read_text())
    for detector in ("haar", "blazeface", "mtcnn"):
        for variant in ("raw", "calibrated"):
            assert 0.0 <= baselines[detector][variant]["heldout"]["mean_iou"] <= 1.0, f"{detector}.{variant}"


def assert_focal_sweep_outputs(project: Path) -> None:
    sweep = json.loads((project / "reports" / "metrics" / "focal_sweep.json").read_text())
    assert set(sweep["settings"]) == {f"gamma{gamma}-alpha{SMOKE_ALPHA}" for gamma in SMOKE_GAMMAS}
    for name, setting in sweep["settings"].items():
        assert 0.0 <= setting["heldout_mean_iou"] <= 1.0, name
    for gamma in SMOKE_GAMMAS:
        cell = json.loads((project / "reports" / "sweep" / f"gamma{gamma}-alpha{SMOKE_ALPHA}.json").read_text())
        assert cell["setting"]["gamma"] == gamma
        assert set(cell["folds"]) == {"fold0", "fold1"}
    assert (project / "reports" / "focal_sweep" / "focal_sweep.png").is_file()


def assert_classifier_outputs(project: Path) -> None:
    classifier = json.loads((project / "reports" / "metrics" / "classifier.json").read_text())
    for dataset in ("genki4k", "smilesmiled"):
        for key in ("accuracy", "balanced_accuracy", "f1"):
            assert 0.0 <= classifier[dataset]["heldout"][key] <= 1.0, f"{dataset}.heldout.{key}"
        assert "roc_auc" in classifier[dataset]["heldout"]
    smiles = json.loads((project / "reports" / "metrics" / "smiles_data.json").read_text())
    assert set(smiles) >= {"genki4k", "smilesmiled"}
    figures = {path.name for path in (project / "reports" / "classifier" / "figures").glob("*.png")}
    assert len(figures) >= 4, figures
    for final_model in ("detector", "classifier"):
        assert (project / "data" / "models" / "final" / final_model / "model.json").is_file()


def assert_predictor_runs_on_final_models(project: Path) -> None:
    """`emotivelens predict` loads the final models from the paths the pipeline writes."""
    image = next(iter(sorted((project / "data" / "raw" / "caltech-faces-1999").rglob("*.jpg"))))
    out = project / "predictions"
    run([sys.executable, "-m", "stages.app", "predict", str(image), "--out", str(out)], project)
    result = json.loads((out / f"{image.stem}.json").read_text())
    assert result["detector"].endswith("data/models/final/detector")
    for face in result["faces"]:
        assert 0.0 <= face["happy_probability"] <= 1.0


def test_dvc_repro_runs_smoke_profile(dvc_project):
    project, _first, _second = dvc_project
    assert_pipeline_outputs(project)
    assert (project / "dvc.lock").is_file()


def test_second_dvc_repro_does_nothing(dvc_project):
    project, _first, second = dvc_project
    assert "Running stage" not in second.stdout
    status = run([sys.executable, "-m", "dvc", "status"], project)
    assert "Data and pipelines are up to date" in status.stdout


def test_dvc_metrics_show_lists_detector_metrics(dvc_project):
    project, _first, _second = dvc_project
    metrics_output = run([sys.executable, "-m", "dvc", "metrics", "show", "--json"], project)
    assert "heldout" in metrics_output.stdout
    assert "mean_iou" in metrics_output.stdout


def test_snakemake_runs_smoke_profile(snakemake_project):
    project, _dry_run = snakemake_project
    assert_pipeline_outputs(project)


def test_predictor_loads_the_final_models(dvc_project):
    assert_predictor_runs_on_final_models(dvc_project[0])


def test_second_snakemake_run_has_nothing_to_do(snakemake_project):
    _project, dry_run = snakemake_project
    assert "Nothing to be done" in dry_run.stdout + dry_run.stderr


def test_both_orchestrators_make_identical_splits(dvc_project, snakemake_project):
    dvc_folds = (dvc_project[0] / "data" / "splits" / "folds.csv").read_text()
    snakemake_folds = (snakemake_project[0] / "data" / "splits" / "folds.csv").read_text()
    assert dvc_folds == snakemake_folds


def test_dvc_experiment_trains_one_focal_setting(dvc_project):
    """`dvc exp run -S detector.focal...` reruns the detector with one setting; exp show lists it."""
    project, _first, _second = dvc_project
    identity = ["-c", "user.name=EmotiveLens tests", "-c", "user.email=tests@example.invalid"]
    run(["git", "add", "-A"], project)
    run(["git", *identity, "commit", "-q", "-m", "smoke run"], project)
    run([sys.executable, "-m", "dvc", "exp", "run", "--temp", "--name", "cross-entropy",
         "-S", "detector.focal.gamma=0", "-S", "detector.focal.alpha=0.5", "evaluate_detector"], project)
    listing = json.loads(run([sys.executable, "-m", "dvc", "exp", "show", "--json"], project).stdout)
    experiments = {
        experiment["name"]: experiment
        for commit in listing
        for experiment in [*(commit.get("experiments") or [])]
        for experiment in experiment.get("revs", [])
    }
    assert "cross-entropy" in experiments, listing
    params = experiments["cross-entropy"]["data"]["params"]["params.yaml"]["data"]["detector"]["focal"]
    assert params == {"gamma": 0, "alpha": 0.5}
    metrics = experiments["cross-entropy"]["data"]["metrics"]["reports/metrics/detector.json"]["data"]
    assert 0.0 <= metrics["heldout"]["mean_iou"] <= 1.0
