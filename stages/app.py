"""The ``emotivelens`` command line: find faces and label each one happy or not happy.

``emotivelens predict IMAGE... [--out DIR]`` takes files, folders (their image files, sorted)
and glob patterns, which it expands itself so quoted patterns work. For every image it writes
``<out>/<name>.jpg`` (the image with a box and a "happy 0.87" label per face) and
``<out>/<name>.json``::

    {"image": "photos/a.jpg", "width": 640, "height": 480,
     "faces": [{"box": [x1, y1, x2, y2], "face_score": 0.98, "happy_probability": 0.87,
                "label": "happy"}],
     "detector": "data/models/final/detector", "classifier": "data/models/final/classifier"}

``<name>`` is the input's file name without extension, with ``-2``, ``-3`` ... added when two
inputs share it. Images that cannot be read are reported and skipped. Exit status: 0 when
every input succeeded, 1 when any failed, 2 for invalid arguments.

``emotivelens stream --source 0|clip.mp4 [--headless] [--out DIR] [--max-frames N]`` reads
frames from a camera (an integer source is a camera index) or a video file, and draws the faces
and a smoothed frame rate on each. Without ``--headless`` it shows a window (quit with q or
Esc). With ``--headless`` (or ``--out``) it writes ``<out>/annotated.mp4`` and
``<out>/frames.jsonl``, one JSON object per frame::

    {"frame": 1, "timestamp_s": 0.067, "fps": 9.8, "faces": [ ... as above ... ]}

``fps`` is null on frame 0: the rate is measured from the end of the first frame on, because
the first frame also pays for loading the models.

While it runs, the two files have temporary names (``annotated.*.partial.mp4``,
``frames.*.partial.jsonl``). At the end of the stream, after ``--max-frames``, on Ctrl-C and on
SIGTERM the video is closed and both files are renamed, so the video is playable. A process
killed with SIGKILL leaves only the partial files, and that video usually does not play because
MP4 writes its index when it is closed. Exit status: 0 at the end of the stream, 130 after
Ctrl-C, 143 after SIGTERM, 1 when the source cannot be opened or the models are missing.

``emotivelens validate --format csv|voc|fddb|caltech PATH [--classes CSV] [--images DIR] [--strict]``
reads an annotated dataset as the convert stage does and prints one line per problem,
``FILE line N: case: value: action (explanation)``, then a table with the count per case and
action, then what the convert stage would write (images, faces, images without faces). The
cases and their actions (error, dropped, fixed) are listed in ``stages.importers``. Exit
status: 1 when any problem is an error, when no image would be left, or with ``--strict`` when
any face or image would be dropped; 0 otherwise. It writes no files.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from stages.cli import EXIT_INTERRUPTED, EXIT_TERMINATED, LOG_FORMAT
from stages.errors import KNOWN_ERRORS, DataError

log = logging.getLogger(__name__)

PROG = "emotivelens"
DEFAULT_PREDICT_OUT = Path("predictions")
DEFAULT_STREAM_OUT = Path("predictions/stream")
VIDEO_FILE = "annotated.mp4"
FRAMES_FILE = "frames.jsonl"
VIDEO_FOURCC = "mp4v"
# Cameras often report 0 or a wrong frame rate, so their video is written at this rate.
CAMERA_FPS = 30.0
# Video files claiming a rate outside (0, MAX_SOURCE_FPS] are written at CAMERA_FPS instead.
MAX_SOURCE_FPS = 1000.0
# Weight of the previous average in the exponential moving average of the frame time.
FPS_SMOOTHING = 0.9
WINDOW_NAME = "emotivelens"
QUIT_KEYS = (ord("q"), 27)


class StreamError(RuntimeError):
    """A video source that cannot be opened or read, or a display that is not available."""


def _probability(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{text} is outside [0, 1]")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not a positive integer")
    return value


def _add_model_arguments(parser: argparse.ArgumentParser) -> None:
    from stages import predict

    parser.add_argument("--detector", type=Path, default=predict.DEFAULT_DETECTOR_DIR, metavar="DIR",
                        help="face detector model folder (default: %(default)s, written by the pipeline)")
    parser.add_argument("--classifier", type=Path, default=predict.DEFAULT_CLASSIFIER_DIR, metavar="DIR",
                        help="expression classifier model folder (default: %(default)s, written by the pipeline)")
    parser.add_argument("--face-threshold", type=_probability, default=predict.DEFAULT_FACE_THRESHOLD,
                        metavar="P", help="lowest detector score kept as a face, 0 to 1 (default: %(default)s)")
    parser.add_argument("--happy-threshold", type=_probability, default=predict.DEFAULT_HAPPY_THRESHOLD,
                        metavar="P", help="P(happy) at or above which a face is labelled happy (default: %(default)s)")
    parser.add_argument("--max-faces", type=_positive_int, default=None, metavar="N",
                        help="keep at most N faces per image, highest score first (default: all)")


def build_parser() -> argparse.ArgumentParser:
    """Build the ``emotivelens`` argument parser with one subcommand per command."""
    parser = argparse.ArgumentParser(
        prog=PROG, description="Find faces in images or video and classify each as happy or not happy.")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    predict_parser = commands.add_parser(
        "predict", help="annotate image files", description=(
            "Write <out>/<name>.jpg (annotated image) and <out>/<name>.json (faces, boxes, P(happy)) "
            "for every input image. Exit status 1 if any input failed."))
    predict_parser.add_argument("inputs", nargs="+", metavar="IMAGE",
                                help="image file, folder of images, or glob pattern such as 'photos/*.jpg'")
    predict_parser.add_argument("--out", type=Path, default=DEFAULT_PREDICT_OUT, metavar="DIR",
                                help="output folder (default: %(default)s)")
    _add_model_arguments(predict_parser)
    predict_parser.set_defaults(handler=run_predict)

    stream_parser = commands.add_parser(
        "stream", help="annotate a camera or video stream", description=(
            "Detect and classify faces frame by frame. Shows a window, or with --headless writes "
            "<out>/annotated.mp4 and <out>/frames.jsonl. Stop with Ctrl-C (or q in the window)."))
    stream_parser.add_argument("--source", required=True, metavar="SOURCE",
                               help="camera index (0 is the first camera) or video file")
    stream_parser.add_argument("--headless", action="store_true",
                               help="write the annotated video and frame records instead of showing a window")
    stream_parser.add_argument("--out", type=Path, default=None, metavar="DIR",
                               help=f"output folder for annotated.mp4 and frames.jsonl (default with --headless: "
                                    f"{DEFAULT_STREAM_OUT}; without --headless nothing is written unless given)")
    stream_parser.add_argument("--max-frames", type=_positive_int, default=None, metavar="N",
                               help="stop after N frames (default: run to the end of the stream)")
    _add_model_arguments(stream_parser)
    stream_parser.set_defaults(handler=run_stream)

    _add_validate_parser(commands)
    return parser


def _add_validate_parser(commands) -> None:
    from stages.convert import FORMATS

    validate_parser = commands.add_parser(
        "validate", help="check an annotated dataset", description=(
            "Read a dataset as the convert stage does, print every problem with its file, line, value "
            "and action, and count them. Exit status 1 if any problem is an error, if no image would be "
            "left, or, with --strict, if any face or image would be dropped."))
    validate_parser.add_argument("--format", dest="data_format", choices=FORMATS, required=True,
                                 help="annotation format of PATH")
    validate_parser.add_argument("path", type=Path, metavar="PATH",
                                 help="annotation CSV (csv), XML folder (voc), fold-file folder (fddb) "
                                      "or extracted archive folder (caltech)")
    validate_parser.add_argument("--classes", type=Path, default=None, metavar="CSV",
                                 help="class CSV (class_name,id) for csv and voc (default for csv: "
                                      "classes.csv next to PATH; for voc: the object names found)")
    validate_parser.add_argument("--images", type=Path, default=None, metavar="DIR",
                                 help="image folder for voc (default: PATH) and fddb (required)")
    validate_parser.add_argument("--groups", type=Path, default=None, metavar="CSV",
                                 help="groups CSV (image,group or image,fold) for csv and voc, checked as "
                                      "the split stage reads it")
    validate_parser.add_argument("--strict", action="store_true",
                                 help="also exit with status 1 when any face or image would be dropped")
    validate_parser.set_defaults(handler=run_validate)


def _exit_on_sigterm(signum, frame) -> None:
    # SystemExit unwinds the stack, so the stream's finally blocks close and rename its outputs.
    raise SystemExit(EXIT_TERMINATED)


def _run_command(handler: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str) -> int:
    """Run ``handler(args)`` and return its exit status, or 1 for a known error and 130 for Ctrl-C."""
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous_sigterm = signal.signal(signal.SIGTERM, _exit_on_sigterm) if in_main_thread else None
    try:
        from tqdm.contrib.logging import logging_redirect_tqdm

        with logging_redirect_tqdm():
            return handler(args)
    except KNOWN_ERRORS + (StreamError,) as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; the outputs already written are complete", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous_sigterm)


def main(argv: list[str] | None = None) -> int:
    """Run the ``emotivelens`` command line; return the exit status (argparse exits 2 on bad usage)."""
    args = build_parser().parse_args(argv)
    # TensorFlow's C++ start-up messages (CPU features, plug-in registration) would bury the
    # command's own output; a user who sets TF_CPP_MIN_LOG_LEVEL keeps their own level.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return _run_command(args.handler, args, f"{PROG} {args.command}")


# --- predict ---------------------------------------------------------------------------------


def _load_predictor(args: argparse.Namespace):
    from stages import predict

    predictor = predict.load_predictor(args.detector, args.classifier, face_threshold=args.face_threshold,
                                       happy_threshold=args.happy_threshold, max_faces=args.max_faces)
    log.info("loaded detector %s and classifier %s (crop margin %s, size %d px)",
             args.detector, args.classifier, predictor.crop.margin, predictor.crop.size)
    return predictor


def _create_out_dir(out: Path, error_type: type[Exception]) -> None:
    # Creating the folder first turns a bad --out into one message instead of a traceback.
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise error_type(f"--out {out}: failed to create the output folder ({error.strerror})") from None


def run_predict(args: argparse.Namespace) -> int:
    """Annotate every input image; return 0 when all succeeded and 1 when any failed."""
    from tqdm import tqdm

    from stages import predict
    from stages.atomic import write_text_atomic

    paths, failures = predict.expand_inputs(args.inputs)
    for entry, reason in failures:
        log.error("%s: %s", entry, reason)
    # Files in the output folder are skipped, because they may be annotated images of an earlier
    # run, and an input there could be replaced by its own annotated <name>.jpg.
    paths, inside_out = predict.split_by_folder(paths, args.out)
    for path in inside_out:
        log.warning("%s: skipped because it is inside the output folder --out %s", path, args.out)
    if not paths:
        remedy = f"; {len(inside_out)} inputs are inside --out {args.out}, choose another output folder" \
            if inside_out else ""
        raise DataError(f"no images to process in {', '.join(args.inputs)}{remedy}")
    if args.out.exists() and not args.out.is_dir():
        raise DataError(f"--out {args.out} exists and is not a folder")

    predictor = _load_predictor(args)
    _create_out_dir(args.out, DataError)
    names = predict.output_names(paths)
    annotated = 0
    faces_found = 0
    for path, name in tqdm(list(zip(paths, names)), desc="predict", unit="image"):
        try:
            image = predict.read_image(path)
        except predict.ImageReadError as error:
            log.error("%s", error)
            failures.append((str(path), str(error).removeprefix(f"{path}: ")))
            continue
        faces = predictor.predict(image)
        annotated += 1
        faces_found += len(faces)
        record = predict.image_record(path, image, faces, args.detector, args.classifier)
        try:
            predict.write_bytes_atomic(args.out / f"{name}.jpg", predict.encode_jpeg(predict.annotate(image, faces)))
            write_text_atomic(args.out / f"{name}.json", predict.to_json_line(record))
        except OSError as error:
            raise DataError(f"failed to write the outputs of {path} to {args.out}: {error}") from None

    print(f"{PROG} predict: {annotated} of {len(paths)} images annotated, {faces_found} faces, outputs in {args.out}",
          file=sys.stderr)
    if failures:
        listed = "; ".join(f"{entry} ({reason})" for entry, reason in failures)
        print(f"{PROG} predict: {len(failures)} inputs failed: {listed}", file=sys.stderr)
        return 1
    return 0


# --- validate --------------------------------------------------------------------------------


def format_problem_table(problems) -> str:
    """Format the count of problems per case and action as an aligned text table."""
    from stages.importers import count_problems

    counts = sorted(count_problems(problems).items())
    rows = [("case", "action", "count")] + [(case, action, str(count)) for (case, action), count in counts]
    case_width = max(len(row[0]) for row in rows)
    action_width = max(len(row[1]) for row in rows)
    return "\n".join(f"{case:<{case_width}}  {action:<{action_width}}  {count:>5}" for case, action, count in rows)


def _problem_order(problem) -> tuple[str, int]:
    # Orders "FILE line N" by file, then by line number as a number, so line 10 follows line 9.
    file, _, line = problem.where.rpartition(" line ")
    if file and line.isdigit():
        return file, int(line)
    return problem.where, 0


def run_validate(args: argparse.Namespace) -> int:
    """Print every problem of a dataset and their counts.

    Return 1 on errors, when no image is left (the convert stage stops then too) or, with
    --strict, on drops.
    """
    from stages.convert import read_dataset
    from stages.importers import DROPPED, ERROR, no_image_left

    if args.groups is not None and args.data_format in ("caltech", "fddb"):
        raise DataError(f"--groups {args.groups}: the {args.data_format} format has a fixed grouping, "
                        "so leave the option out")
    dataset = read_dataset(args.data_format, args.path, args.classes, args.images)
    for problem in sorted(dataset.problems, key=_problem_order):
        print(problem.line())
    if dataset.problems:
        print()
        print(format_problem_table(dataset.problems))
    else:
        print("no problems found")

    # The groups file is checked first, so that the count line below includes its error.
    groups_failed = bool(args.groups is not None and dataset.images
                         and not check_groups(dataset, args.data_format, args.groups))
    faces = sum(len(image.faces) for image in dataset.images)
    background = sum(not image.faces for image in dataset.images)
    errors = sum(problem.action == ERROR for problem in dataset.problems) + groups_failed
    dropped = sum(problem.action == DROPPED for problem in dataset.problems)
    print(f"\nwould write {len(dataset.images)} of {len(dataset.listed)} images, {faces} faces, "
          f"{_count(background, 'image')} without faces; {_count(errors, 'error')}, {dropped} dropped")
    if not dataset.images:
        print(f"error: no image would be written, so the convert stage would stop: {no_image_left(dataset)}")
        return 1
    if errors:
        return 1
    return 1 if args.strict and dropped else 0


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def check_groups(dataset, data_format: str, groups_csv: Path) -> bool:
    """Print how ``groups_csv`` groups the images that would be written, or why it cannot. Return False on error."""
    from stages.split import dataset_groups

    try:
        groups = dataset_groups(dataset.images, data_format, None, groups_csv)
    except DataError as error:
        print(f"error: {error}")
        return False
    kind = "own fold" if groups.predefined_folds else "group"
    print(f"{groups_csv}: {_count(len(groups.group_of_image), 'image')} in "
          f"{_count(len(set(groups.group_of_image.values())), kind)}")
    return True


# --- stream ----------------------------------------------------------------------------------


def parse_source(text: str) -> int | str:
    """Return a camera index for an all-digit source such as ``0``, else the text (file or URL)."""
    return int(text) if text.isdigit() else text


def display_problem() -> str | None:
    """Return why this OpenCV build cannot show a window, or None when it has a GUI backend.

    opencv-python-headless, which the project installs, is built with ``GUI: NONE``.
    """
    import cv2

    match = re.search(r"^\s*GUI:\s*(\S+)", cv2.getBuildInformation(), re.MULTILINE)
    if match is not None and match.group(1).upper() == "NONE":
        return "this OpenCV build has no window support (opencv-python-headless has no cv2.imshow)"
    return None


def open_source(source: int | str):
    """Open ``source`` with cv2.VideoCapture; raise StreamError naming it when that fails."""
    import cv2

    if isinstance(source, str) and "://" not in source and not Path(source).exists():
        raise StreamError(f"video file {source} not found")
    capture = cv2.VideoCapture(source)
    if not capture.isOpened():
        kind = "camera" if isinstance(source, int) else "video source"
        raise StreamError(f"cannot open {kind} {source!r}; check the camera index or that the file is a video")
    return capture


def output_fps(capture, source: int | str) -> float:
    """Return the frame rate for the annotated video: the file's own, or CAMERA_FPS."""
    import cv2

    if isinstance(source, int):
        return CAMERA_FPS
    fps = capture.get(cv2.CAP_PROP_FPS)
    if not 0 < fps <= MAX_SOURCE_FPS:
        log.warning("%s reports %s frames per second; writing the video at %s", source, fps, CAMERA_FPS)
        return CAMERA_FPS
    return float(fps)


class FpsMeter:
    """Frames per second from an exponential moving average of the time between frames.

    The clock starts when the first frame is done, so the first frame's time, which includes
    loading the models onto the device and compiling them, does not drag the rate down.
    """

    def __init__(self, smoothing: float = FPS_SMOOTHING, clock: Callable[[], float] = time.monotonic):
        self.smoothing = smoothing
        self.clock = clock
        self.last: float | None = None
        self.mean_interval: float | None = None

    def tick(self) -> float | None:
        """Record that a frame is done; return the smoothed frames per second (None after the first)."""
        now = self.clock()
        if self.last is None:
            self.last = now
            return None
        interval = max(now - self.last, 1e-6)
        self.last = now
        if self.mean_interval is None:
            self.mean_interval = interval
        else:
            self.mean_interval = self.smoothing * self.mean_interval + (1.0 - self.smoothing) * interval
        return 1.0 / self.mean_interval


def _current_umask() -> int:
    # os.umask can only be read by setting it, so set it and put it back at once.
    mask = os.umask(0)
    os.umask(mask)
    return mask


class StreamWriter:
    """annotated.mp4 and frames.jsonl of one stream, under temporary names until finish()."""

    def __init__(self, out_dir: Path, fps: float):
        self.out_dir = out_dir
        self.fps = fps
        self.video = None
        self.size: tuple[int, int] | None = None
        self.frames = 0
        _create_out_dir(out_dir, StreamError)
        # The suffix keeps ".mp4" because cv2.VideoWriter picks the container from it.
        video_handle, video_name = tempfile.mkstemp(dir=out_dir, prefix="annotated.", suffix=".partial.mp4")
        os.close(video_handle)
        self.video_temporary = Path(video_name)
        records_handle, records_name = tempfile.mkstemp(dir=out_dir, prefix="frames.", suffix=".partial.jsonl")
        self.records_temporary = Path(records_name)
        self.records = os.fdopen(records_handle, "w", encoding="utf-8")

    def _open_video(self, width: int, height: int) -> None:
        import cv2

        self.video = cv2.VideoWriter(str(self.video_temporary), cv2.VideoWriter_fourcc(*VIDEO_FOURCC), self.fps,
                                     (width, height))
        if not self.video.isOpened():
            raise StreamError(f"cannot write {VIDEO_FOURCC} video {self.video_temporary}")
        self.size = (width, height)

    def write(self, annotated, record: dict) -> None:
        """Append one annotated BGR frame and its JSON record."""
        import cv2

        from stages.predict import to_json_line

        height, width = annotated.shape[:2]
        if self.video is None:
            self._open_video(width, height)
        if (width, height) != self.size:
            # A video file has one frame size, so frames that differ from the first are resized.
            annotated = cv2.resize(annotated, self.size, interpolation=cv2.INTER_AREA)
        self.video.write(annotated)
        self.records.write(to_json_line(record))
        self.frames += 1

    def finish(self) -> tuple[Path, Path] | None:
        """Close both files and rename them to their final names; return the final paths.

        With no frame written, the temporary files are removed and None is returned.
        """
        self.records.close()
        if self.video is not None:
            self.video.release()
        if self.frames == 0:
            self.discard()
            return None
        video_path, records_path = self.out_dir / VIDEO_FILE, self.out_dir / FRAMES_FILE
        # mkstemp creates files that only the owner can read, so they get the umask's usual mode here.
        mode = 0o666 & ~_current_umask()
        os.chmod(self.video_temporary, mode)
        os.chmod(self.records_temporary, mode)
        os.replace(self.video_temporary, video_path)
        os.replace(self.records_temporary, records_path)
        return video_path, records_path

    def discard(self) -> None:
        """Close and remove the temporary files."""
        if not self.records.closed:
            self.records.close()
        if self.video is not None:
            self.video.release()
        self.video_temporary.unlink(missing_ok=True)
        self.records_temporary.unlink(missing_ok=True)


class Window:
    """An OpenCV window that shows annotated frames; closing it or pressing q or Esc stops."""

    def __init__(self):
        import cv2

        problem = display_problem()
        if problem is not None:
            raise StreamError(f"{problem}; rerun with --headless --out DIR to write an annotated video instead, "
                              f"or install opencv-python in place of opencv-python-headless")
        try:
            cv2.namedWindow(WINDOW_NAME, cv2.WINDOW_NORMAL)
        except cv2.error as error:
            raise StreamError(f"cannot open a window ({error}); rerun with --headless --out DIR") from None

    def show(self, frame) -> bool:
        """Show ``frame``; return False when the user asked to stop."""
        import cv2

        cv2.imshow(WINDOW_NAME, frame)
        key = cv2.waitKey(1) & 0xFF
        if key in QUIT_KEYS:
            return False
        return cv2.getWindowProperty(WINDOW_NAME, cv2.WND_PROP_VISIBLE) >= 1

    def close(self) -> None:
        """Close the window."""
        import cv2

        cv2.destroyWindow(WINDOW_NAME)


class StopRequest:
    """Turn the first Ctrl-C into a flag that the frame loop checks between frames.

    Stopping between frames keeps annotated.mp4 and frames.jsonl at the same frame count. A
    second Ctrl-C raises KeyboardInterrupt at once. Outside the main thread, where Python
    cannot install signal handlers, Ctrl-C raises KeyboardInterrupt as usual.
    """

    def __init__(self):
        self.requested = False
        self._previous = None
        self._installed = False

    def _handle(self, signum, frame) -> None:
        self.requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
            self._installed = True
        return self

    def __exit__(self, *exc_info) -> None:
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)


@dataclass
class StreamProgress:
    """Counts of one stream run, updated after every frame; ``stop_reason`` is set at the end."""

    frames: int = 0
    faces: int = 0
    stop_reason: str = "end of stream"
    started: float = field(default_factory=time.monotonic)


def _frame_record(index: int, timestamp_s: float, fps: float, faces) -> dict:
    return {"frame": index, "timestamp_s": round(timestamp_s, 6), "fps": None if fps is None else round(fps, 3),
            "faces": [face.to_dict() for face in faces]}


def _process_frames(capture, predictor, source: int | str, video_fps: float, writer: StreamWriter | None,
                    window: Window | None, max_frames: int | None, stop: StopRequest,
                    progress: StreamProgress) -> None:
    """Read, predict, annotate and output frames until the stream ends or a stop is requested."""
    import cv2
    from tqdm import tqdm

    from stages.predict import annotate

    frame_count = 0 if isinstance(source, int) else int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    total = min(filter(None, (frame_count, max_frames)), default=None)
    meter = FpsMeter()
    with tqdm(total=total, desc="stream", unit="frame") as bar:
        while max_frames is None or progress.frames < max_frames:
            if stop.requested:
                progress.stop_reason = "interrupted"
                return
            ok, frame = capture.read()
            if not ok:
                if progress.frames == 0:
                    raise StreamError(f"no frame could be read from {source!r}")
                return
            if frame.ndim == 2:
                frame = cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR)
            faces = predictor.predict(frame)
            fps = meter.tick()
            annotated = annotate(frame, faces, fps=fps)
            if isinstance(source, int):
                timestamp_s = time.monotonic() - progress.started
            else:
                # Exact for constant-frame-rate files; variable-rate files get a nominal time.
                timestamp_s = progress.frames / video_fps
            if writer is not None:
                writer.write(annotated, _frame_record(progress.frames, timestamp_s, fps, faces))
            progress.frames += 1
            progress.faces += len(faces)
            bar.update(1)
            if window is not None and not window.show(annotated):
                progress.stop_reason = "window closed"
                return
        progress.stop_reason = f"--max-frames {max_frames} reached"


def _stream_outputs(args: argparse.Namespace) -> Path | None:
    if args.out is not None:
        return args.out
    return DEFAULT_STREAM_OUT if args.headless else None


def run_stream(args: argparse.Namespace) -> int:
    """Annotate a camera or video stream; return 0 at its end and 130 after Ctrl-C."""
    source = parse_source(args.source)
    out_dir = _stream_outputs(args)
    if out_dir is not None and out_dir.exists() and not out_dir.is_dir():
        raise StreamError(f"--out {out_dir} exists and is not a folder")
    window = None if args.headless else Window()
    try:
        capture = open_source(source)
        try:
            predictor = _load_predictor(args)
            video_fps = output_fps(capture, source)
            writer = StreamWriter(out_dir, video_fps) if out_dir is not None else None
            progress = StreamProgress()
            _stream_with_writer(capture, predictor, source, video_fps, writer, window, args.max_frames, progress)
        finally:
            capture.release()
    finally:
        if window is not None:
            window.close()

    seconds = time.monotonic() - progress.started
    written = f"; wrote {out_dir / VIDEO_FILE} and {out_dir / FRAMES_FILE}" if writer and writer.frames else ""
    print(f"{PROG} stream: {progress.stop_reason} after {progress.frames} frames in {seconds:.1f} s, "
          f"{progress.faces} faces{written}", file=sys.stderr)
    return EXIT_INTERRUPTED if progress.stop_reason == "interrupted" else 0


def _stream_with_writer(capture, predictor, source, video_fps, writer, window, max_frames, progress) -> None:
    """Run the frame loop and publish the outputs on every ending except an error."""
    published = False
    try:
        with StopRequest() as stop:
            try:
                _process_frames(capture, predictor, source, video_fps, writer, window, max_frames, stop, progress)
            except KeyboardInterrupt:
                progress.stop_reason = "interrupted"
        if writer is not None:
            writer.finish()
        published = True
    except SystemExit:
        # SIGTERM: keep what was written, as for Ctrl-C.
        if writer is not None:
            writer.finish()
        published = True
        raise
    finally:
        if writer is not None and not published:
            writer.discard()


if __name__ == "__main__":
    sys.exit(main())
