"""Tests for ``emotivelens stream`` on a short generated video, with tiny random-weight models."""

from __future__ import annotations

import json
import os
import re
import signal
from pathlib import Path

import cv2
import numpy as np
import pytest

from stages import app, predict

VIDEO_FRAMES = 10
VIDEO_FPS = 8.0
FRAME_SIZE = (224, 148)
RECORD_KEYS = {"frame", "timestamp_s", "fps", "faces"}
FACE_KEYS = {"box", "face_score", "happy_probability", "label"}


# Every test here reuses the models loaded by earlier tests of the module (see conftest.py).
pytestmark = pytest.mark.usefixtures("reuse_loaded_predictors")


@pytest.fixture(scope="module")
def clip(tmp_path_factory, request) -> Path:
    """Write a VIDEO_FRAMES-frame mp4v clip, from Caltech faces when the mirror is set."""
    if os.environ.get("EMOTIVELENS_MIRROR"):
        raw = request.getfixturevalue("caltech_raw_dir")
        paths = sorted(raw.glob("image_*.jpg"))[:VIDEO_FRAMES]
        frames = [cv2.resize(cv2.imread(str(path)), FRAME_SIZE, interpolation=cv2.INTER_AREA) for path in paths]
    else:
        generator = np.random.default_rng(3)
        frames = [generator.integers(0, 255, (FRAME_SIZE[1], FRAME_SIZE[0], 3), dtype=np.uint8)
                  for _ in range(VIDEO_FRAMES)]
    path = tmp_path_factory.mktemp("video") / "clip.mp4"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), VIDEO_FPS, FRAME_SIZE)
    for frame in frames:
        writer.write(frame)
    writer.release()
    return path


def stream_args(models: tuple[Path, Path], source: Path | str, out: Path, *extra: str) -> list[str]:
    return ["stream", "--source", str(source), "--headless", "--out", str(out), "--detector", str(models[0]),
            "--classifier", str(models[1]), "--face-threshold", "0", "--max-faces", "2", *extra]


def count_video_frames(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    assert capture.isOpened(), f"{path} does not open as a video"
    frames = 0
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        assert frame.shape == (FRAME_SIZE[1], FRAME_SIZE[0], 3)
        frames += 1
    capture.release()
    return frames


def read_records(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def check_records(records: list[dict]) -> None:
    for index, record in enumerate(records):
        assert set(record) == RECORD_KEYS
        assert record["frame"] == index
        assert record["timestamp_s"] == pytest.approx(index / VIDEO_FPS)
        if index == 0:
            assert record["fps"] is None
        else:
            assert record["fps"] > 0
        assert 1 <= len(record["faces"]) <= 2
        for face in record["faces"]:
            assert set(face) == FACE_KEYS
            assert 0.0 <= face["happy_probability"] <= 1.0


def test_stream_headless_whole_clip(tiny_models, clip, tmp_path, capsys):
    out = tmp_path / "out"

    status = app.main(stream_args(tiny_models, clip, out))

    assert status == 0
    assert sorted(path.name for path in out.iterdir()) == [app.VIDEO_FILE, app.FRAMES_FILE]
    assert count_video_frames(out / app.VIDEO_FILE) == VIDEO_FRAMES
    records = read_records(out / app.FRAMES_FILE)
    assert len(records) == VIDEO_FRAMES
    check_records(records)
    assert f"end of stream after {VIDEO_FRAMES} frames" in capsys.readouterr().err


def test_stream_outputs_follow_umask(tiny_models, clip, tmp_path):
    out = tmp_path / "out"
    previous = os.umask(0o022)
    try:
        status = app.main(stream_args(tiny_models, clip, out, "--max-frames", "1"))
    finally:
        os.umask(previous)

    assert status == 0
    for name in (app.VIDEO_FILE, app.FRAMES_FILE):
        assert (out / name).stat().st_mode & 0o777 == 0o644


def test_stream_out_below_a_file(tiny_models, clip, tmp_path, capsys):
    (tmp_path / "file").write_text("not a folder")

    status = app.main(stream_args(tiny_models, clip, tmp_path / "file" / "out"))

    assert status == 1
    assert "failed to create the output folder" in capsys.readouterr().err


def test_stream_max_frames(tiny_models, clip, tmp_path):
    out = tmp_path / "out"

    status = app.main(stream_args(tiny_models, clip, out, "--max-frames", "4"))

    assert status == 0
    assert count_video_frames(out / app.VIDEO_FILE) == 4
    assert len(read_records(out / app.FRAMES_FILE)) == 4


def test_stream_ctrl_c_keeps_playable_video(tiny_models, clip, tmp_path, monkeypatch, capsys):
    frames_before_interrupt = 3
    real_open = app.open_source

    class InterruptingCapture:
        """Capture wrapper that raises KeyboardInterrupt on the read after the first k frames."""

        def __init__(self, capture):
            self.capture = capture
            self.reads = 0

        def read(self):
            if self.reads == frames_before_interrupt:
                raise KeyboardInterrupt
            self.reads += 1
            return self.capture.read()

        def __getattr__(self, name):
            return getattr(self.capture, name)

    monkeypatch.setattr(app, "open_source", lambda source: InterruptingCapture(real_open(source)))
    out = tmp_path / "out"

    status = app.main(stream_args(tiny_models, clip, out))

    assert status == 130
    assert sorted(path.name for path in out.iterdir()) == [app.VIDEO_FILE, app.FRAMES_FILE]
    assert count_video_frames(out / app.VIDEO_FILE) == frames_before_interrupt
    records = read_records(out / app.FRAMES_FILE)
    assert len(records) == frames_before_interrupt
    check_records(records)
    assert f"interrupted after {frames_before_interrupt} frames" in capsys.readouterr().err


def test_stream_stop_request_between_frames():
    stop = app.StopRequest()

    with stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested
        # A second Ctrl-C is not held back.
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)


@pytest.mark.parametrize("source, message", [
    ("missing.mp4", "video file .*missing.mp4 not found"),
    ("not-a-video.mp4", "cannot open video source"),
    ("97", "cannot open camera 97"),
])
def test_stream_bad_source(tiny_models, tmp_path, capsys, source, message):
    (tmp_path / "not-a-video.mp4").write_text("plain text", encoding="utf-8")
    if not source.isdigit():
        source = str(tmp_path / source)
    out = tmp_path / "out"

    status = app.main(stream_args(tiny_models, source, out))

    assert status == 1
    error = capsys.readouterr().err
    assert re.search(message, error), error
    assert error.count("error:") == 1
    assert not out.exists() or not list(out.iterdir())


def test_stream_without_display_suggests_headless(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(app, "display_problem", lambda: "this OpenCV build has no window support")

    status = app.main(["stream", "--source", "0"])

    assert status == 1
    error = capsys.readouterr().err
    assert "no window support" in error
    assert "--headless" in error


def test_stream_window_mode(tiny_models, clip, monkeypatch):
    shown = []
    monkeypatch.setattr(app, "display_problem", lambda: None)
    monkeypatch.setattr(cv2, "namedWindow", lambda name, flags: None)
    monkeypatch.setattr(cv2, "imshow", lambda name, frame: shown.append(frame.shape))
    # The user presses q on the third frame.
    keys = iter([-1, -1, ord("q")])
    monkeypatch.setattr(cv2, "waitKey", lambda delay: next(keys))
    monkeypatch.setattr(cv2, "getWindowProperty", lambda name, prop: 1.0)
    monkeypatch.setattr(cv2, "destroyWindow", lambda name: None)

    status = app.main(["stream", "--source", str(clip), "--detector", str(tiny_models[0]),
                       "--classifier", str(tiny_models[1])])

    assert status == 0
    assert shown == [(FRAME_SIZE[1], FRAME_SIZE[0], 3)] * 3


def test_fps_meter_smooths():
    times = iter([0.0, 0.1, 0.2, 0.5])
    meter = app.FpsMeter(smoothing=0.5, clock=lambda: next(times))

    assert meter.tick() is None
    assert meter.tick() == pytest.approx(10.0)
    assert meter.tick() == pytest.approx(10.0)
    # Mean interval 0.5 * 0.1 + 0.5 * 0.3 = 0.2 s.
    assert meter.tick() == pytest.approx(5.0)


def test_parse_source():
    assert app.parse_source("0") == 0
    assert app.parse_source("12") == 12
    assert app.parse_source("clip.mp4") == "clip.mp4"
