"""Schema checks of params.yaml: each bad value is named with its key and the expected type or range."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from stages.params import PROJECT_ROOT, ParamsError, load_params

# (case id, dotted key, bad value, fragments the error message must contain).
# The value REMOVE deletes the key instead of setting it.
REMOVE = object()
BAD_VALUES = [
    ("string-for-number", "detector.learning_rate", "0.001x", ["detector.learning_rate", "'0.001x'", "'number'"]),
    ("negative-epochs", "detector.epochs", -3, ["detector.epochs", "-3", "minimum of 1"]),
    ("alpha-above-one", "detector.focal.alpha", 1.5, ["detector.focal.alpha", "1.5", "maximum of 1"]),
    ("float-for-integer", "detector.batch_size", 8.0, ["detector.batch_size", "8.0", "'integer'"]),
    ("bool-for-integer", "split.folds", True, ["split.folds", "True", "'integer'"]),
    ("unknown-key", "detector.learning_rates", 0.01, ["detector", "'learning_rates' was unexpected"]),
    ("null-not-allowed", "detector.epochs", None, ["detector.epochs", "None", "'integer'"]),
    ("missing-key", "detector.epochs", REMOVE, ["detector", "'epochs' is a required property"]),
    ("nan-number", "detector.clipnorm", float("nan"), ["detector.clipnorm", "nan", "'number'"]),
    ("unknown-backbone", "detector.backbone", "resnet18", ["detector.backbone", "'resnet18'", "resnet50"]),
    ("huge-timeout", "download.timeout_s", 1e12, ["download.timeout_s", "1000000000000.0", "maximum of 3600"]),
    ("min-above-max-side", "detector.image_min_side", 400,
     ["detector.image_min_side (400)", "detector.image_max_side (336)"]),
    ("paper-iou-order", "report.paper_train_min_iou", 0.99,
     ["report.paper_train_min_iou (0.99)", "paper_train_max_iou (0.995)", "min <= mean <= max"]),
]


def write_params(folder: Path, key: str, value) -> Path:
    """Write the project's params.yaml into ``folder`` with ``key`` set to ``value`` (or removed)."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    *sections, name = key.split(".")
    node = params
    for section in sections:
        node = node[section]
    if value is REMOVE:
        del node[name]
    else:
        node[name] = value
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def test_project_params_are_valid():
    for profile in ("default", "paper", "smoke"):
        assert load_params(PROJECT_ROOT / "params.yaml", profile)["profile"] == profile


@pytest.mark.parametrize(("key", "value", "fragments"), [case[1:] for case in BAD_VALUES],
                         ids=[case[0] for case in BAD_VALUES])
def test_bad_value_names_key_and_expectation(tmp_path, key, value, fragments):
    path = write_params(tmp_path, key, value)
    with pytest.raises(ParamsError) as raised:
        load_params(path, "default")
    message = str(raised.value)
    assert str(path) in message
    for fragment in fragments:
        assert fragment in message


def test_every_problem_is_listed(tmp_path):
    path = write_params(tmp_path, "detector.epochs", -3)
    params = yaml.safe_load(path.read_text(encoding="utf-8"))
    params["split"]["folds"] = 1
    path.write_text(yaml.safe_dump(params), encoding="utf-8")
    with pytest.raises(ParamsError) as raised:
        load_params(path, "default")
    assert "detector.epochs" in str(raised.value)
    assert "split.folds" in str(raised.value)


def test_yaml_integers_accepted_for_numbers(tmp_path):
    # "alpha: 1" and "gamma: 0" are YAML integers, which the focal loss converts to floats.
    path = write_params(tmp_path, "detector.focal", {"alpha": 1, "gamma": 0})
    assert load_params(path, "default")["detector"]["focal"] == {"alpha": 1, "gamma": 0}


@pytest.mark.parametrize("where", ["option", "file"])
def test_unknown_profile_lists_known_ones(tmp_path, where):
    path = write_params(tmp_path, "profile", "fast" if where == "file" else "default")
    with pytest.raises(ParamsError, match=r"profile 'fast': .* not found; known profiles: default, paper, smoke"):
        load_params(path, "fast" if where == "option" else None)


def test_profile_override_is_validated(tmp_path):
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "default.yaml").write_text("detector:\n  epochs: 0\n", encoding="utf-8")
    from stages import params as params_module

    raw = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    merged = params_module.apply_profile(raw, "default", profiles)
    with pytest.raises(ParamsError, match=r"detector.epochs: 0 is less than the minimum of 1"):
        params_module.validate_params(merged)


# Runs each stage's main() on every bad params file in one fresh interpreter and reports the
# exit status, the error output and whether TensorFlow was imported.
CHILD_SCRIPT = textwrap.dedent("""
    import contextlib, io, json, sys
    from stages import evaluate_detector, train_detector

    results = {}
    for case, params_path in json.loads(sys.argv[1]).items():
        for name, stage in (("train", train_detector), ("evaluate", evaluate_detector)):
            stderr = io.StringIO()
            arguments = ["--params", params_path, "--splits", "splits", "--classes", "classes.csv",
                         "--out", "models", "--curves", "curves"]
            if name == "evaluate":
                arguments = ["--params", params_path] + [
                    value for option in ("--splits", "--models", "--predictions", "--metrics",
                                         "--per-image", "--pr-curves", "--data-summary")
                    for value in (option, "unused")]
            with contextlib.redirect_stderr(stderr):
                status = stage.main(arguments)
            results[f"{case}/{name}"] = [status, stderr.getvalue()]
    print(json.dumps({"results": results, "tensorflow": "tensorflow" in sys.modules}))
""")


def test_stages_reject_bad_values_before_tensorflow(tmp_path):
    files = {}
    for case, key, value, _ in BAD_VALUES:
        folder = tmp_path / case
        folder.mkdir()
        files[case] = str(write_params(folder, key, value))

    completed = subprocess.run(
        [sys.executable, "-c", CHILD_SCRIPT, json.dumps(files)],
        cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300, check=True,
    )
    report = json.loads(completed.stdout.strip().splitlines()[-1])

    assert report["tensorflow"] is False
    for case, _, _, fragments in BAD_VALUES:
        for stage in ("train", "evaluate"):
            status, stderr = report["results"][f"{case}/{stage}"]
            assert status == 1, f"{case}/{stage}: {stderr}"
            assert "invalid parameters" in stderr, f"{case}/{stage}: {stderr}"
            assert fragments[0] in stderr, f"{case}/{stage}: {stderr}"
