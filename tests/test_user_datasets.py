"""Users' own datasets through the pipeline: the dataset section of params.yaml, groups and folds.

The fast tests run the convert, split and download stages in-process. The integration tests
run the smoke profile through DVC (``dvc repro evaluate_detector``) in a copy of the project.
One runs on a small keras-retinanet CSV dataset written here. The other runs on the real FDDB
fold files, reduced to a few images per fold: from the mirror named by EMOTIVELENS_MIRROR
(``fddb-folds/FDDB-folds.tar``) when it is set, otherwise from the official FDDB archive. FDDB distributes its images apart from the annotations, so the tests
draw images of the sizes that the ellipses need.
"""

from __future__ import annotations

import csv
import functools
import http.server
import json
import math
import os
import shutil
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import yaml
from PIL import Image, ImageDraw

from stages import convert, download, split
from stages.errors import ChecksumError
from stages.importers import ellipse_box

PROJECT_ROOT = Path(__file__).resolve().parents[1]
PERSONS_CSV = PROJECT_ROOT / "stages" / "resources" / "caltech_persons.csv"
TIMEOUT_S = 900
FDDB_FOLDS = 10
# Images per FDDB fold in the reduced fold files, so that training and evaluation stay small.
FDDB_IMAGES_PER_FOLD = 3
# Blank border around the faces of a drawn FDDB image, in pixels.
FDDB_IMAGE_MARGIN = 16


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # The stage commands call plain `python`, so this interpreter's folder goes first on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = dict(os.environ, PYTHONPATH=str(cwd), PATH=path)
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUT_S)
    assert result.returncode == 0, f"{' '.join(command)} failed:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    return result


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def write_params(path: Path, dataset: dict, **sections: dict) -> Path:
    """Write params.yaml with the project's values, ``dataset`` and other sections updated."""
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["profile"] = "default"
    params["dataset"].update(dataset)
    for name, values in sections.items():
        params[name].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def draw_image(path: Path, size: tuple[int, int], boxes: list[tuple[float, float, float, float]], mode: str = "RGB",
               seed: int = 0) -> None:
    """Save a noisy gray picture of ``size`` (width, height) with a light ellipse in each box."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(40, 90, size=(size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGB")
    drawing = ImageDraw.Draw(image)
    for x1, y1, x2, y2 in boxes:
        drawing.ellipse((x1, y1, x2 - 1, y2 - 1), fill=(225, 190, 160))
    path.parent.mkdir(parents=True, exist_ok=True)
    image.convert(mode).save(path)


# --- a keras-retinanet CSV dataset ---------------------------------------------------------

# Image file, mode, person and boxes as written in the CSV, floats on purpose. No boxes make a background row.
CSV_IMAGES = [
    ("images/p1_a.jpg", "RGB", "p1", [("20.0", "30.0", "80.0", "100.0"), ("110.5", "20", "170", "90.25")]),
    ("images/p1_b.jpg", "RGB", "p1", [("40", "30", "120", "110")]),
    ("images/p2_a.jpg", "L", "p2", [("50", "20", "130", "100")]),
    ("images/p2_b.png", "RGBA", "p2", [("30", "30", "100", "110")]),
    ("images/p3_a.jpg", "RGB", "p3", [("60", "40", "140", "120")]),
    ("images/p3_b.jpg", "RGB", "p3", [("10", "10", "70", "80"), ("100", "50", "160", "120")]),
    ("images/p4_a.jpg", "RGB", "p4", [("70", "20", "150", "100")]),
    ("images/p4_empty.jpg", "RGB", "p4", []),
]
CSV_IMAGE_SIZE = (200, 150)
# The converted rows, seen from data/interim/: integers, rounded outward, background row kept.
CSV_CONVERTED = (
    "../user/images/p1_a.jpg,20,30,80,100,face\n"
    "../user/images/p1_a.jpg,110,20,170,91,face\n"
    "../user/images/p1_b.jpg,40,30,120,110,face\n"
    "../user/images/p2_a.jpg,50,20,130,100,face\n"
    "../user/images/p2_b.png,30,30,100,110,face\n"
    "../user/images/p3_a.jpg,60,40,140,120,face\n"
    "../user/images/p3_b.jpg,10,10,70,80,face\n"
    "../user/images/p3_b.jpg,100,50,160,120,face\n"
    "../user/images/p4_a.jpg,70,20,150,100,face\n"
    "../user/images/p4_empty.jpg,,,,,\n"
)


def write_csv_dataset(root: Path) -> None:
    """Write annotations.csv, classes.csv, groups.csv and the images of CSV_IMAGES under ``root``."""
    rows, groups = [], [["image", "group"]]
    for seed, (name, mode, person, boxes) in enumerate(CSV_IMAGES):
        float_boxes = [tuple(float(value) for value in box) for box in boxes]
        draw_image(root / name, CSV_IMAGE_SIZE, float_boxes, mode=mode, seed=seed)
        rows.extend([name, *box, "face"] for box in boxes)
        if not boxes:
            rows.append([name, "", "", "", "", ""])
        groups.append([name, person])
    with (root / "annotations.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(rows)
    with (root / "groups.csv").open("w", newline="") as handle:
        csv.writer(handle, lineterminator="\n").writerows(groups)
    (root / "classes.csv").write_text("face,0\n")


def convert_argv(params: Path, out: Path, *extra: str) -> list[str]:
    return ["--params", str(params), *extra, "--out-csv", str(out / "annotations.csv"),
            "--out-classes", str(out / "classes.csv"), "--out-groups", str(out / "groups.csv"),
            "--summary", str(out / "data.json")]


def test_convert_reads_dataset_params(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv_dataset(Path("data/user"))
    params = write_params(Path("params.yaml"), {"format": "csv", "annotations": "data/user/annotations.csv",
                                                "images": "data/user", "groups": "data/user/groups.csv"})

    assert convert.main(convert_argv(params, Path("data/interim"))) == 0

    assert Path("data/interim/annotations.csv").read_text() == CSV_CONVERTED
    groups = read_rows(Path("data/interim/groups.csv"))
    assert groups[0] == ["image", "group"]
    assert groups[1:] == [[f"../user/{name}", person] for name, _, person, _ in CSV_IMAGES]


def test_convert_without_groups_one_group_per_image(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv_dataset(Path("data/user"))
    params = write_params(Path("params.yaml"), {"format": "csv", "annotations": "data/user/annotations.csv",
                                                "images": "data/user"})

    assert convert.main(convert_argv(params, Path("out"))) == 0

    groups = read_rows(Path("out/groups.csv"))[1:]
    assert [group for _, group in groups] == [name for name, _, _, _ in CSV_IMAGES]


def test_convert_groups_must_list_every_image(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_csv_dataset(Path("data/user"))
    Path("data/user/groups.csv").write_text("image,group\nimages/p1_a.jpg,p1\n")
    params = write_params(Path("params.yaml"), {"format": "csv", "annotations": "data/user/annotations.csv",
                                                "images": "data/user", "groups": "data/user/groups.csv"})

    assert convert.main(convert_argv(params, Path("out"))) == 1

    assert "data/user/groups.csv: no group for 7 of 8 images (for example 'images/p1_b.jpg'" in capsys.readouterr().err
    assert not Path("out/annotations.csv").exists()


def test_convert_warns_of_untracked_images(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    write_csv_dataset(Path("data/user"))
    Path("data/user/pictures").mkdir()
    params = write_params(Path("params.yaml"), {"format": "csv", "annotations": "data/user/annotations.csv",
                                                "images": "data/user/pictures"})

    assert convert.main(convert_argv(params, Path("out"))) == 0

    assert "8 images are outside dataset.images (data/user/pictures), so DVC does not rerun" in caplog.text


@pytest.mark.parametrize("key", ["groups", "classes"])
def test_convert_rejects_groups_for_fddb(tmp_path, capsys, key):
    params = write_params(tmp_path / "params.yaml", {"format": "fddb", key: "mine.csv"})

    assert convert.main(convert_argv(params, tmp_path)) == 1

    assert f"dataset.{key} is 'mine.csv', but the fddb format has a fixed" in capsys.readouterr().err


def test_caltech_groups_are_the_persons(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    raw = Path("data/raw/caltech-faces-1999")
    raw.mkdir(parents=True)
    boxes = [(10.2, 20.7, 30.1, 40.0), (2.0, 3.0, 60.0, 45.0), (5.0, 5.0, 50.0, 50.0)] * 8
    # Columns of ImageData.mat: the corners bottom-left, top-left, top-right, bottom-right.
    corners = np.array([[x1, y2, x1, y1, x2, y1, x2, y2] for x1, y1, x2, y2 in boxes], dtype=float).T
    scipy.io.savemat(raw / convert.MAT_FILE, {convert.MAT_VARIABLE: corners})
    for number in range(1, len(boxes) + 1):
        draw_image(raw / convert.image_name(number), (80, 64), [])
    params = write_params(Path("params.yaml"), {})
    without_groups = ["--params", str(params), "--raw", str(raw), "--out-csv", "data/plain/annotations.csv",
                      "--out-classes", "data/plain/classes.csv", "--summary", "data/plain/data.json"]

    assert convert.main(convert_argv(params, Path("data/interim"), "--persons", str(PERSONS_CSV))) == 0
    assert convert.main(without_groups) == 0

    assert Path("data/interim/annotations.csv").read_bytes() == Path("data/plain/annotations.csv").read_bytes()
    ranges = split.parse_persons(PERSONS_CSV.read_text(), str(PERSONS_CSV))
    groups = read_rows(Path("data/interim/groups.csv"))
    assert groups[0] == ["image", "group"]
    for image, group in groups[1:]:
        number = split.image_number(image)
        person = next(entry.person for entry in ranges if entry.first_image <= number <= entry.last_image)
        assert int(group) == person, image


def test_download_skips_other_formats(tmp_path, caplog):
    params = write_params(tmp_path / "params.yaml", {"format": "csv"}, download={"url": "http://127.0.0.1:9/none"})
    out = tmp_path / "raw"
    (out / "stale").mkdir(parents=True)

    with caplog.at_level("INFO"):
        assert download.main(["--params", str(params), "--out", str(out)]) == 0

    assert out.is_dir()
    assert list(out.iterdir()) == []
    assert "dataset.format is csv, not caltech: nothing to download" in caplog.text


# --- FDDB ------------------------------------------------------------------------------------


@pytest.fixture
def served_folder(tmp_path):
    """Serve a new folder over HTTP on the loopback address and yield (folder, base URL)."""
    folder = tmp_path / "served"
    folder.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def pack_folds(folds_dir: Path, archive: Path) -> None:
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(folds_dir, arcname="FDDB-folds")


def test_fddb_folds_download_without_mirror(fddb_folds, fetch_fddb_folds, served_folder, tmp_path):
    folder, base_url = served_folder
    pack_folds(fddb_folds, folder / "FDDB-folds.tgz")
    target = tmp_path / "fetched"
    target.mkdir()
    folds_dir = fetch_fddb_folds(None, target, f"{base_url}/FDDB-folds.tgz")
    assert sorted(path.name for path in folds_dir.iterdir()) == sorted(path.name for path in fddb_folds.iterdir())


def test_fddb_folds_changed_file_rejected(fddb_folds, fetch_fddb_folds, served_folder, tmp_path):
    folder, base_url = served_folder
    changed = tmp_path / "changed" / "FDDB-folds"
    shutil.copytree(fddb_folds, changed)
    with (changed / "FDDB-fold-03.txt").open("a") as handle:
        handle.write("2002/08/11/big/img_591\n")
    pack_folds(changed, folder / "FDDB-folds.tgz")
    target = tmp_path / "fetched"
    target.mkdir()
    with pytest.raises(ChecksumError, match="FDDB-fold-03.txt: sha256 is"):
        fetch_fddb_folds(None, target, f"{base_url}/FDDB-folds.tgz")


def read_ellipse_entries(path: Path) -> list[tuple[str, list[str]]]:
    """Return (image path, face lines) per image of an FDDB ellipse list."""
    lines = path.read_text().splitlines()
    entries, index = [], 0
    while index < len(lines):
        name, count = lines[index].strip(), int(lines[index + 1])
        entries.append((name, lines[index + 2:index + 2 + count]))
        index += 2 + count
    return entries


def write_fddb_subset(folds_dir: Path, out_folds: Path, images_dir: Path) -> dict[int, list[str]]:
    """Write reduced fold files, draw their images and return the image paths of each fold.

    Each fold keeps its first FDDB_IMAGES_PER_FOLD images. Two of them share a file name
    (img_393 of folds 5 and 7), as 660 of FDDB's 2,845 images do, so the evaluation must tell
    images apart by path. Each image is drawn large enough for every ellipse's box plus
    FDDB_IMAGE_MARGIN.
    """
    out_folds.mkdir(parents=True)
    fold_images: dict[int, list[str]] = {}
    for fold in range(1, FDDB_FOLDS + 1):
        entries = read_ellipse_entries(folds_dir / f"FDDB-fold-{fold:02d}-ellipseList.txt")
        chosen = entries[:FDDB_IMAGES_PER_FOLD]
        fold_images[fold] = [name for name, _ in chosen]
        (out_folds / f"FDDB-fold-{fold:02d}.txt").write_text("".join(f"{name}\n" for name, _ in chosen))
        (out_folds / f"FDDB-fold-{fold:02d}-ellipseList.txt").write_text(
            "".join(f"{name}\n{len(faces)}\n" + "".join(f"{face}\n" for face in faces) for name, faces in chosen))
        for seed, (name, faces) in enumerate(chosen):
            boxes = [ellipse_box(*[float(value) for value in face.split()[:5]]) for face in faces]
            size = (math.ceil(max(box[2] for box in boxes)) + FDDB_IMAGE_MARGIN,
                    math.ceil(max(box[3] for box in boxes)) + FDDB_IMAGE_MARGIN)
            draw_image(images_dir / f"{name}.jpg", size, boxes, seed=fold * 100 + seed)
    file_names = [Path(name).name for names in fold_images.values() for name in names]
    assert len(set(file_names)) < len(file_names), "the subset should contain a repeated file name"
    return fold_images


def fddb_image_names(fold_images: dict[int, list[str]]) -> dict[int, list[str]]:
    """Return the folds.csv names of each fold's images.

    File names repeat, so the split stage names each image by its path below the deepest
    folder that contains all images of the subset (2002/ when every image is from 2002).
    """
    common = os.path.commonpath([name for names in fold_images.values() for name in names])
    return {fold: [Path(f"{name}.jpg").relative_to(common).as_posix() for name in names]
            for fold, names in fold_images.items()}


def count_faces(folds_dir: Path) -> int:
    return sum(len(faces) for path in folds_dir.glob("*-ellipseList.txt") for _, faces in read_ellipse_entries(path))


def convert_and_split(params: Path) -> None:
    """Run the convert stage into interim/ and the split stage into splits/, in the working folder."""
    assert convert.main(convert_argv(params, Path("interim"))) == 0
    split_argv = ["--params", str(params), "--annotations", "interim/annotations.csv",
                  "--groups", "interim/groups.csv", "--out", "splits"]
    assert split.main(split_argv) == 0


def test_fddb_import_keeps_its_folds(fddb_folds, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    fold_images = write_fddb_subset(fddb_folds, Path("fddb/folds"), Path("fddb/images"))
    params = write_params(Path("params.yaml"), {"format": "fddb", "annotations": "fddb/folds",
                                                "images": "fddb/images"}, split={"folds": FDDB_FOLDS})

    convert_and_split(params)

    assert len(read_rows(Path("interim/annotations.csv"))) == count_faces(Path("fddb/folds"))
    assert read_rows(Path("interim/groups.csv"))[0] == ["image", "fold"]
    folds_table = read_rows(Path("splits/folds.csv"))[1:]
    for fold, names in fold_images.items():
        test_images = sorted(image for image, _, image_fold, _ in folds_table if int(image_fold) == fold - 1)
        assert test_images == sorted(fddb_image_names(fold_images)[fold]), f"FDDB fold {fold}"
        test_rows = read_rows(Path(f"splits/fold{fold - 1}/test.csv"))
        test_paths = {os.path.normpath(Path(f"splits/fold{fold - 1}") / row[0]) for row in test_rows}
        assert test_paths == {os.path.normpath(Path(f"fddb/images/{name}.jpg")) for name in names}


def test_fddb_evaluation_keeps_repeated_names_apart(fddb_folds, tmp_path, monkeypatch):
    from stages import evaluate_detector

    monkeypatch.chdir(tmp_path)
    fold_images = write_fddb_subset(fddb_folds, Path("fddb/folds"), Path("fddb/images"))
    params = write_params(Path("params.yaml"), {"format": "fddb", "annotations": "fddb/folds",
                                                "images": "fddb/images"}, split={"folds": FDDB_FOLDS})
    convert_and_split(params)

    # The fake detector returns the converted boxes of the image it reads, so every face is found.
    boxes_of_image: dict[str, list[list[float]]] = {}
    for path, *box, _ in read_rows(Path("interim/annotations.csv")):
        boxes_of_image.setdefault(os.path.normpath(Path("interim") / path), []).append([float(v) for v in box])

    def load(fold):
        def predict(path):
            boxes = boxes_of_image[os.path.normpath(path)]
            return np.asarray(boxes, dtype=np.float32), np.full(len(boxes), 0.9, dtype=np.float32)

        return predict

    argv = ["--params", str(params), "--splits", "splits", "--models", "models", "--predictions", "predictions",
            "--metrics", "detector.json", "--per-image", "per_image.csv", "--pr-curves", "pr_curves.csv",
            "--data-summary", "interim/data.json"]
    assert evaluate_detector.main(argv, load_predictor=load) == 0

    metrics = json.loads(Path("detector.json").read_text())
    images = sum(len(names) for names in fold_images.values())
    assert metrics["dataset"]["images"] == images
    assert metrics["dataset"]["faces"] == count_faces(Path("fddb/folds"))
    assert metrics["heldout"]["mean_iou"] == 1.0
    assert metrics["heldout"]["recall50"] == 1.0
    per_image = list(csv.DictReader(Path("per_image.csv").open()))
    heldout_images = {row["image"] for row in per_image if row["part"] == "heldout"}
    assert len(heldout_images) == images


def test_fddb_split_needs_its_fold_count(fddb_folds, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_fddb_subset(fddb_folds, Path("fddb/folds"), Path("fddb/images"))
    params = write_params(Path("params.yaml"), {"format": "fddb", "annotations": "fddb/folds",
                                                "images": "fddb/images"}, split={"folds": 5})
    assert convert.main(convert_argv(params, Path("interim"))) == 0

    status = split.main(["--params", str(params), "--annotations", "interim/annotations.csv",
                         "--groups", "interim/groups.csv", "--out", "splits"])

    assert status == 1
    message = "the dataset defines 10 folds (1, 2, 3, 4, 5, 6, 7, 8, 9, 10) but split.folds = 5; set split.folds to 10"
    assert message in capsys.readouterr().err


# --- the smoke profile through DVC ---------------------------------------------------------


def smoke_project(copy_project, destination: Path, dataset: dict, profile_overrides: dict) -> Path:
    """Copy the project to ``destination`` with the smoke profile, ``dataset`` and profile overrides."""

    def edit(params: dict) -> None:
        params["profile"] = "smoke"
        params["dataset"].update(dataset)
        # Two focal settings stand for the grid of the focal-loss study.
        params["focal_sweep"].update(gammas=[0, 2], alphas=[0.25])

    project = copy_project(destination, edit)
    profile_path = project / "workflow" / "profiles" / "smoke.yaml"
    profile = yaml.safe_load(profile_path.read_text())
    for section, values in profile_overrides.items():
        profile.setdefault(section, {}).update(values)
    profile_path.write_text(yaml.safe_dump(profile, sort_keys=False))
    return project


def assert_sane_metrics(project: Path, folds: int) -> dict:
    metrics = json.loads((project / "reports" / "metrics" / "detector.json").read_text())
    assert metrics["dataset"]["folds"] == folds
    assert set(metrics["folds"]) == {f"fold{fold}" for fold in range(folds)}
    for part in ("heldout", "train"):
        for key in ("mean_iou", "ap50", "recall50"):
            assert 0.0 <= metrics[part][key] <= 1.0, f"{part}.{key}"
    return metrics


@pytest.mark.integration
def test_dvc_smoke_on_csv_dataset(copy_project, tmp_path):
    # The whole pipeline, the focal-loss study and the report included. The classifier stages
    # run on the smile datasets as for Caltech.
    project = smoke_project(copy_project, tmp_path / "project",
                            {"format": "csv", "annotations": "data/user/annotations.csv", "images": "data/user",
                             "groups": "data/user/groups.csv"}, {})
    write_csv_dataset(project / "data" / "user")

    run([sys.executable, "-m", "dvc", "repro"], project)

    # The download stage runs but fetches nothing for a csv dataset.
    assert list((project / "data" / "raw" / "caltech-faces-1999").iterdir()) == []
    assert (project / "data" / "interim" / "annotations.csv").read_text() == CSV_CONVERTED
    folds_table = read_rows(project / "data" / "splits" / "folds.csv")[1:]
    fold_of_person: dict[str, set[str]] = {}
    for _, person, fold, _ in folds_table:
        fold_of_person.setdefault(person, set()).add(fold)
    assert all(len(folds) == 1 for folds in fold_of_person.values()), fold_of_person
    metrics = assert_sane_metrics(project, folds=2)
    assert metrics["dataset"]["images"] == len(CSV_IMAGES)
    assert metrics["dataset"]["faces"] == CSV_CONVERTED.count(",face\n")
    assert metrics["dataset"]["background_images"] == 1
    sweep = json.loads((project / "reports" / "metrics" / "focal_sweep.json").read_text())
    assert set(sweep["settings"]) == {"gamma0-alpha0.25", "gamma2-alpha0.25"}
    assert (project / "reports" / "focal_sweep" / "focal_sweep.png").is_file()
    assert (project / "reports" / "emotivelens-report.pdf").read_bytes().startswith(b"%PDF")


@pytest.mark.integration
def test_dvc_smoke_on_fddb_annotations(fddb_folds, copy_project, tmp_path):
    # Every image of the reduced fold files is kept. One epoch of one step per fold keeps ten
    # folds within the time of the two-fold smoke run.
    overrides = {"convert": {"max_images": None}, "split": {"folds": FDDB_FOLDS},
                 "detector": {"epochs": 1, "steps_per_epoch": 1}}
    project = smoke_project(copy_project, tmp_path / "project",
                            {"format": "fddb", "annotations": "data/fddb/folds", "images": "data/fddb/images"}, overrides)
    fddb_dir = project / "data" / "fddb"
    fold_images = write_fddb_subset(fddb_folds, fddb_dir / "folds", fddb_dir / "images")

    run([sys.executable, "-m", "dvc", "repro", "evaluate_detector"], project)

    annotations = read_rows(project / "data" / "interim" / "annotations.csv")
    assert len(annotations) == count_faces(fddb_dir / "folds")
    folds_table = read_rows(project / "data" / "splits" / "folds.csv")[1:]
    for fold, names in fold_images.items():
        test_images = sorted(image for image, _, image_fold, _ in folds_table if int(image_fold) == fold - 1)
        assert test_images == sorted(fddb_image_names(fold_images)[fold]), f"FDDB fold {fold}"
    metrics = assert_sane_metrics(project, folds=FDDB_FOLDS)
    assert metrics["dataset"]["images"] == sum(len(names) for names in fold_images.values())


def test_convert_groups_same_image_two_spellings(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    write_csv_dataset(Path("data/user"))
    groups = Path("data/user/groups.csv")
    groups.write_text(groups.read_text() + "./images/p1_a.jpg,p9\n")
    params = write_params(Path("params.yaml"), {"format": "csv", "annotations": "data/user/annotations.csv",
                                                "images": "data/user", "groups": "data/user/groups.csv"})

    assert convert.main(convert_argv(params, Path("out"))) == 1

    assert "'images/p1_a.jpg' and './images/p1_a.jpg' are the same file" in capsys.readouterr().err
    assert not Path("out/groups.csv").exists()
