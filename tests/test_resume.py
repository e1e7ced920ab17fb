"""Detector training killed with SIGKILL and rerun: it resumes and leaves no half-written file.

The training command runs as a real subprocess, so the kill lands wherever the process is,
as it would when a machine loses power or the kernel's out-of-memory killer stops it.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from stages.params import PROJECT_ROOT

EPOCHS = 2
STEPS_PER_EPOCH = 6
# Tiny detector, so that its 12 training steps take seconds on a CPU.
TINY_DETECTOR = {"weights": "none", "image_min_side": 64, "image_max_side": 96, "feature_size": 8,
                 "batch_size": 2, "epochs": EPOCHS, "steps_per_epoch": STEPS_PER_EPOCH}
# Generous bound for one training process on a loaded 2-core machine.
RUN_TIMEOUT_S = 300
POLL_INTERVAL_S = 0.02

# Runs the training command, but the process kills itself with SIGKILL as soon as the per-step
# curve file exists and before any row is in it. A kill inside append_row leaves this state.
KILL_ON_EMPTY_STEPS_CSV = """
import os, runpy, signal, sys
from stages import curves

real_append_row = curves.append_row

def append_row(path, columns, row):
    if path.name == "steps.csv" and not path.exists():
        path.touch()
        os.kill(os.getpid(), signal.SIGKILL)
    real_append_row(path, columns, row)

curves.append_row = append_row
sys.argv = ["stages.train_detector", *sys.argv[1:]]
runpy.run_module("stages.train_detector", run_name="__main__", alter_sys=True)
"""


def write_params(root: Path) -> Path:
    """Write a copy of the project's params.yaml with the tiny detector, for profile default."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text(encoding="utf-8"))
    params["profile"] = "default"
    params["detector"].update(TINY_DETECTOR)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return path


def training_arguments(root: Path) -> list[str]:
    return ["--params", str(root / "params.yaml"), "--profile", "default",
            "--splits", str(root / "splits"), "--classes", str(root / "classes.csv"),
            "--out", str(root / "output" / "models"), "--curves", str(root / "output" / "curves"),
            "--checkpoints", str(root / "checkpoints")]


def subprocess_env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(PROJECT_ROOT), TF_CPP_MIN_LOG_LEVEL="2")


def work_file(root: Path, name: str) -> Path | None:
    """Return the fold's working file ``name`` under the hashed checkpoint folder, if it exists."""
    matches = sorted((root / "checkpoints").glob(f"*/fold0/{name}"))
    return matches[0] if matches else None


def second_epoch_started(root: Path) -> bool:
    steps = work_file(root, "steps.csv")
    checkpoint = work_file(root, "checkpoints/checkpoint")
    if steps is None or checkpoint is None:
        return False
    return any(line.startswith("2,") for line in steps.read_text(encoding="utf-8").splitlines())


def kill_in_second_epoch(root: Path, log_path: Path) -> int:
    """Start training, SIGKILL it once epoch 1 is checkpointed and epoch 2 has logged a step."""
    with log_path.open("w") as log:
        process = subprocess.Popen([sys.executable, "-m", "stages.train_detector", *training_arguments(root)],
                                   cwd=PROJECT_ROOT, env=subprocess_env(), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + RUN_TIMEOUT_S
        try:
            while not second_epoch_started(root):
                if process.poll() is not None:
                    pytest.fail(f"training exited with {process.returncode} before epoch 2 started:\n"
                                f"{log_path.read_text()[-4000:]}")
                if time.monotonic() > deadline:
                    pytest.fail(f"epoch 2 did not start within {RUN_TIMEOUT_S} s")
                time.sleep(POLL_INTERVAL_S)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait(timeout=60)
    return process.returncode


def read_rows(path: Path) -> list[dict]:
    with path.open(newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def leftover_temporary_files(*folders: Path) -> list[str]:
    """List files and folders that atomic writes name with a leading dot or a .tmp suffix."""
    found = []
    for folder in folders:
        for path in folder.rglob("*"):
            if path.name.startswith(".") or path.name.endswith(".tmp") or "_temp" in path.name:
                found.append(str(path.relative_to(folder.parent)))
    return found


def test_training_resumes_after_sigkill(tmp_path, write_training_fold):
    write_training_fold(tmp_path)
    write_params(tmp_path)

    killed_early = subprocess.run([sys.executable, "-c", KILL_ON_EMPTY_STEPS_CSV, *training_arguments(tmp_path)],
                                  cwd=PROJECT_ROOT, env=subprocess_env(), capture_output=True, text=True,
                                  timeout=RUN_TIMEOUT_S)
    assert killed_early.returncode == -signal.SIGKILL, killed_early.stderr[-4000:]
    empty_steps = work_file(tmp_path, "steps.csv")
    assert empty_steps is not None
    assert empty_steps.stat().st_size == 0
    assert work_file(tmp_path, "checkpoints/checkpoint") is None

    # The rerun starts from the empty steps.csv, and the test kills it again inside epoch 2.
    returncode = kill_in_second_epoch(tmp_path, tmp_path / "killed.log")
    assert returncode == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-4000:]
    assert not (tmp_path / "output").exists()
    assert [row["epoch"] for row in read_rows(work_file(tmp_path, "epochs.csv"))] == ["1"]

    resumed = subprocess.run([sys.executable, "-m", "stages.train_detector", *training_arguments(tmp_path)],
                             cwd=PROJECT_ROOT, env=subprocess_env(), capture_output=True, text=True,
                             timeout=RUN_TIMEOUT_S)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert "fold 0: resuming after epoch 1 from" in resumed.stderr

    models = tmp_path / "output" / "models" / "fold0"
    assert (models / "weights.h5").is_file()
    assert (models / "model.json").is_file()
    curves = tmp_path / "output" / "curves"
    steps = read_rows(curves / "fold0-steps.csv")
    expected_steps = [(epoch, step) for epoch in range(1, EPOCHS + 1) for step in range(1, STEPS_PER_EPOCH + 1)]
    assert [(int(row["epoch"]), int(row["step"])) for row in steps] == expected_steps
    assert [int(row["global_step"]) for row in steps] == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1))
    assert all(np.isfinite(float(row["loss"])) for row in steps)
    epochs = read_rows(curves / "fold0-epochs.csv")
    assert [int(row["epoch"]) for row in epochs] == list(range(1, EPOCHS + 1))

    assert leftover_temporary_files(tmp_path / "output", work_file(tmp_path, "final").parent) == []
    assert sorted(path.name for path in (tmp_path / "output").iterdir()) == ["curves", "models"]
