"""`dvc metrics diff` against a commit that has no metrics file lists the metrics as new.

The tests build a throwaway git and DVC repository whose first commit declares a metrics file
in dvc.yaml without the file, and whose second commit adds the project's own detector metrics.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from stages.params import PROJECT_ROOT

METRICS = Path("reports/metrics/detector.json")
DVC_YAML = f"""\
stages:
  evaluate_detector:
    cmd: python -m stages.evaluate_detector
    metrics:
      - {METRICS.as_posix()}:
          cache: false
"""
# Identity for the temporary repository's commits, so that no global git configuration is needed.
GIT_IDENTITY = {"GIT_AUTHOR_NAME": "test", "GIT_AUTHOR_EMAIL": "test@example.org",
                "GIT_COMMITTER_NAME": "test", "GIT_COMMITTER_EMAIL": "test@example.org"}
TIMEOUT_S = 120


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, **GIT_IDENTITY, DVC_NO_ANALYTICS="1")
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
    return result


def dvc(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    return run([sys.executable, "-m", "dvc", *arguments], cwd)


def commit_metrics(repo: Path, metrics: dict) -> None:
    (repo / METRICS).write_text(json.dumps(metrics, indent=2), encoding="utf-8")
    run(["git", "add", METRICS.as_posix()], repo)
    run(["git", "commit", "-q", "-m", "Add metrics"], repo)


@pytest.fixture
def repo(tmp_path) -> Path:
    """Return a git + DVC repository whose only commit declares the metrics file but lacks it."""
    run(["git", "init", "-q"], tmp_path)
    dvc("init", "-q", cwd=tmp_path)
    (tmp_path / "dvc.yaml").write_text(DVC_YAML, encoding="utf-8")
    (tmp_path / METRICS.parent).mkdir(parents=True)
    run(["git", "add", "-A"], tmp_path)
    run(["git", "commit", "-q", "-m", "Declare metrics"], tmp_path)
    return tmp_path


def flatten(value, prefix: str = "") -> dict:
    """Flatten nested objects to dotted keys, keeping numbers, strings and booleans as DVC does."""
    if isinstance(value, dict):
        flat = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix}{key}."))
        return flat
    if isinstance(value, (int, float, str, bool)):
        return {prefix.removesuffix("."): value}
    return {}


def project_metrics() -> dict:
    return json.loads((PROJECT_ROOT / METRICS).read_text(encoding="utf-8"))


def test_diff_lists_new_metrics_as_json(repo):
    metrics = project_metrics()
    commit_metrics(repo, metrics)

    result = dvc("metrics", "diff", "HEAD~1", "--json", cwd=repo)
    diff = json.loads(result.stdout)

    assert list(diff) == [METRICS.as_posix()]
    changes = diff[METRICS.as_posix()]
    assert {key: change["new"] for key, change in changes.items()} == flatten(metrics)
    assert all(change["old"] is None for change in changes.values())
    assert "failed to load some metrics for following revisions: 'HEAD~1'" in result.stderr


def test_diff_table_shows_missing_old_value(repo):
    commit_metrics(repo, project_metrics())

    result = dvc("metrics", "diff", "HEAD~1", cwd=repo)
    lines = result.stdout.splitlines()

    assert lines[0].split() == ["Path", "Metric", "HEAD~1", "workspace", "Change"]
    row = next(line.split() for line in lines if " heldout.ap50 " in line)
    assert row == [METRICS.as_posix(), "heldout.ap50", "-", str(project_metrics()["heldout"]["ap50"]), "-"]
    assert len(lines) == 1 + len(flatten(project_metrics()))


def test_diff_between_commits_without_workspace_file(repo):
    commit_metrics(repo, {"heldout": {"ap50": 0.5}})
    (repo / METRICS).unlink()

    diff = json.loads(dvc("metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=repo).stdout)

    assert diff == {METRICS.as_posix(): {"heldout.ap50": {"old": None, "new": 0.5}}}


def test_diff_leaves_out_null_and_list_values(repo):
    # A fold without annotations reports null metrics, and dvc metrics diff (dvc 3.67) does not list them.
    commit_metrics(repo, {"heldout": {"ap50": None, "images": 0}, "missing_images": ["image_0001.jpg"]})

    diff = json.loads(dvc("metrics", "diff", "HEAD~1", "--json", cwd=repo).stdout)

    assert diff == {METRICS.as_posix(): {"heldout.images": {"old": None, "new": 0}}}

