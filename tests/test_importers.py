"""Tests of stages.importers: ellipse boxes, box checks, and the CSV, VOC and FDDB readers."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from stages import importers
from stages.errors import DataError
from stages.importers import RawBox

WIDTH = 100
HEIGHT = 80
FDDB_FOLD_COUNTS = {1: (290, 515), 2: (285, 519), 3: (274, 517), 4: (302, 517), 5: (298, 514),
                    6: (302, 518), 7: (279, 518), 8: (276, 518), 9: (259, 514), 10: (280, 521)}


def write_image(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT), mode: str = "RGB") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    color = {"L": 128, "RGBA": (10, 200, 30, 128)}.get(mode, (200, 120, 40))
    image_format = "PNG" if path.suffix == ".png" else "JPEG"
    Image.new(mode, size, color).save(path, format=image_format)
    return path


def write_csv_dataset(root: Path, rows: list[str], classes: str = "face,0\n") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.csv").write_text(classes)
    annotations = root / "annotations.csv"
    annotations.write_text("".join(f"{row}\n" for row in rows))
    return annotations


def cases(dataset: importers.Dataset) -> list[tuple[str, str, str]]:
    return [(problem.case, problem.where.rsplit("/", 1)[-1], problem.action) for problem in dataset.problems]


def check(box: tuple[float, float, float, float]) -> tuple[importers.Face | None, list[importers.Problem]]:
    log = importers.ProblemLog()
    face = importers.check_box(RawBox(box, "face", "a.csv line 1"), WIDTH, HEIGHT, log)
    return face, log.problems


# --- ellipse boxes -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("angle", "expected"),
    [
        (0.0, (30.0, 50.0, 70.0, 70.0)),
        (math.pi / 2, (40.0, 40.0, 60.0, 80.0)),
        # a = 20, b = 10, t = 45 degrees: half-width = half-height = sqrt((400 + 100) / 2) = sqrt(250).
        (math.pi / 4, (50 - math.sqrt(250), 60 - math.sqrt(250), 50 + math.sqrt(250), 60 + math.sqrt(250))),
        # t = 30 degrees: half-width sqrt(400 * 3/4 + 100 / 4) = sqrt(325), half-height sqrt(400 / 4 + 100 * 3/4).
        (math.pi / 6, (50 - math.sqrt(325), 60 - math.sqrt(175), 50 + math.sqrt(325), 60 + math.sqrt(175))),
        (-math.pi / 6, (50 - math.sqrt(325), 60 - math.sqrt(175), 50 + math.sqrt(325), 60 + math.sqrt(175))),
    ],
)
def test_ellipse_box_hand_computed(angle, expected):
    assert importers.ellipse_box(20.0, 10.0, angle, 50.0, 60.0) == pytest.approx(expected)


def test_ellipse_box_circle_ignores_angle():
    for angle in (0.0, 0.3, -1.2, math.pi):
        assert importers.ellipse_box(7.0, 7.0, angle, 10.0, 20.0) == pytest.approx((3.0, 13.0, 17.0, 27.0))


def test_ellipse_box_rounded_outward():
    box = importers.ellipse_box(20.0, 10.0, math.pi / 4, 50.0, 60.0)

    face, problems = check(box)

    assert (face.x1, face.y1, face.x2, face.y2) == (34, 44, 66, 76)
    assert problems == []


def test_ellipse_box_clipped_at_border():
    # Centre (5, 75), radii 10 and 6 at t = 0: box (-5, 69, 15, 81) in a 100 x 80 image.
    box = importers.ellipse_box(10.0, 6.0, 0.0, 5.0, 75.0)

    face, problems = check(box)

    assert (face.x1, face.y1, face.x2, face.y2) == (0, 69, 15, 80)
    assert face.clipped
    assert [(problem.case, problem.action) for problem in problems] == [(importers.PARTLY_OUTSIDE, "fixed")]


# --- box checks --------------------------------------------------------------------------


def test_box_inside_unchanged():
    face, problems = check((10.0, 20.0, 30.0, 40.0))

    assert (face.x1, face.y1, face.x2, face.y2, face.clipped) == (10, 20, 30, 40, False)
    assert problems == []


def test_box_without_area_dropped():
    face, problems = check((10.0, 20.0, 10.0, 40.0))

    assert face is None
    assert [(problem.case, problem.action) for problem in problems] == [(importers.BOX_WITHOUT_AREA, "dropped")]
    assert problems[0].where == "a.csv line 1"
    assert problems[0].value == "x1=10 y1=20 x2=10 y2=40"


def test_box_corners_in_wrong_order_error():
    face, problems = check((30.0, 20.0, 10.0, 40.0))

    assert face is None
    assert [(problem.case, problem.action) for problem in problems] == [(importers.CORNER_ORDER, "error")]


def test_box_wholly_outside_dropped():
    face, problems = check((120.0, 10.0, 150.0, 30.0))

    assert face is None
    assert [(problem.case, problem.action) for problem in problems] == [(importers.WHOLLY_OUTSIDE, "dropped")]


def test_box_partly_outside_clipped():
    face, problems = check((-3.0, 60.0, 20.0, 90.0))

    assert (face.x1, face.y1, face.x2, face.y2) == (0, 60, 20, 80)
    assert [(problem.case, problem.action) for problem in problems] == [(importers.PARTLY_OUTSIDE, "fixed")]


def test_box_swapped_xy_error():
    # In the 100 x 80 image, (x1, y1, x2, y2) = (50, 85, 70, 98) lies below the image, and its
    # transpose (85, 50, 98, 70) fits: y and x were written in each other's columns.
    face, problems = check((50.0, 85.0, 70.0, 98.0))

    assert face is None
    assert [(problem.case, problem.action) for problem in problems] == [(importers.SWAPPED_XY, "error")]
    assert "transpose" in problems[0].message


def test_box_slightly_below_edge_clipped_not_swapped():
    face, problems = check((10.0, 70.0, 30.0, 82.0))

    assert (face.y1, face.y2) == (70, 80)
    assert [problem.case for problem in problems] == [importers.PARTLY_OUTSIDE]


@pytest.mark.parametrize(
    ("text", "value", "case"),
    [("210", 210.0, None), ("210.0", 210.0, importers.INTEGER_AS_FLOAT), (" 7 ", 7.0, None),
     ("210.4", 210.4, importers.FRACTIONAL_COORDINATE), ("2.1e2", 210.0, importers.INTEGER_AS_FLOAT)],
)
def test_parse_coordinate_cases(text, value, case):
    log = importers.ProblemLog()

    assert importers.parse_coordinate(text, "x1", "a.csv line 3", log) == value
    assert [problem.case for problem in log.problems] == ([case] if case else [])
    assert all(problem.action == "fixed" for problem in log.problems)


@pytest.mark.parametrize("text", ["abc", "", "nan", "inf"])
def test_parse_coordinate_invalid_error(text):
    log = importers.ProblemLog()

    assert importers.parse_coordinate(text, "y2", "a.csv line 3", log) is None
    assert [(problem.case, problem.action) for problem in log.problems] == [(importers.MALFORMED, "error")]
    assert log.problems[0].value == f"y2={text!r}"


def test_fractional_box_rounded_outward():
    face, _ = check((10.2, 20.7, 30.1, 40.0))

    assert (face.x1, face.y1, face.x2, face.y2) == (10, 20, 31, 40)


# --- CSV reader --------------------------------------------------------------------------


def test_csv_reader_several_faces_one_image(tmp_path):
    write_image(tmp_path / "data" / "images" / "a.jpg")
    annotations = write_csv_dataset(tmp_path / "data", ["images/a.jpg,1,2,30,40,face", "images/a.jpg,50,10,90,70,face"])

    dataset = importers.read_csv(annotations)

    assert len(dataset.images) == 1
    image = dataset.images[0]
    assert image.key == "images/a.jpg"
    assert (image.width, image.height) == (WIDTH, HEIGHT)
    assert [(face.x1, face.y1, face.x2, face.y2) for face in image.faces] == [(1, 2, 30, 40), (50, 10, 90, 70)]
    assert [face.source.rsplit("/", 1)[-1] for face in image.faces] == ["annotations.csv line 1", "annotations.csv line 2"]
    assert dataset.problems == []


def test_csv_reader_background_row_kept(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "empty.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40,face", "empty.jpg,,,,,"])

    dataset = importers.read_csv(annotations)

    assert [(image.key, len(image.faces)) for image in dataset.images] == [("a.jpg", 1), ("empty.jpg", 0)]
    assert dataset.problems == []


def test_csv_reader_background_row_beside_faces(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,,,,,", "a.jpg,1,2,30,40,face"])

    dataset = importers.read_csv(annotations)

    assert [(image.key, len(image.faces)) for image in dataset.images] == [("a.jpg", 1)]
    assert [(problem.case, problem.where.rsplit("/", 1)[-1], problem.action) for problem in dataset.problems] == [
        (importers.BACKGROUND_WITH_FACES, "annotations.csv line 1", importers.FIXED)]


def test_csv_reader_absolute_dot_dot_paths(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    (tmp_path / "other").mkdir()
    annotations = write_csv_dataset(tmp_path, [f"{tmp_path}/other/../images/a.jpg,1,2,30,40,face",
                                               f"{tmp_path}/images/a.jpg,50,10,90,70,face"])

    dataset = importers.read_csv(annotations)

    assert [(image.key, len(image.faces)) for image in dataset.images] == [(f"{tmp_path}/images/a.jpg", 2)]


def test_csv_reader_paths_relative_to_csv_folder(tmp_path, monkeypatch):
    write_image(tmp_path / "dataset" / "a.jpg")
    # An image of the same name in the working folder must not be picked up.
    write_image(tmp_path / "work" / "a.jpg", size=(10, 10))
    annotations = write_csv_dataset(tmp_path / "dataset", ["a.jpg,1,2,30,40,face"])
    monkeypatch.chdir(tmp_path / "work")

    dataset = importers.read_csv(Path(os.path.relpath(annotations)))

    assert dataset.images[0].path.resolve() == (tmp_path / "dataset" / "a.jpg").resolve()
    assert dataset.images[0].width == WIDTH


def test_csv_reader_windows_separators_fixed(tmp_path):
    write_image(tmp_path / "images" / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["images\\a.jpg,1,2,30,40,face"])

    dataset = importers.read_csv(annotations)

    assert dataset.images[0].key == "images/a.jpg"
    assert cases(dataset) == [(importers.WINDOWS_SEPARATOR, "annotations.csv line 1", "fixed")]


def test_csv_reader_float_coordinates(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,10.0,2,30.5,40,face"])

    dataset = importers.read_csv(annotations)

    face = dataset.images[0].faces[0]
    assert (face.x1, face.x2) == (10, 31)
    assert [case for case, _, _ in cases(dataset)] == [importers.INTEGER_AS_FLOAT, importers.FRACTIONAL_COORDINATE]


def test_csv_reader_class_spelling_fixed(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40, Face "])

    dataset = importers.read_csv(annotations)

    assert dataset.images[0].faces[0].class_name == "face"
    assert cases(dataset) == [(importers.CLASS_NAME_SPELLING, "annotations.csv line 1", "fixed")]


def test_csv_reader_unknown_class_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40,face", "a.jpg,1,2,30,40,cat"])

    dataset = importers.read_csv(annotations)

    assert cases(dataset) == [(importers.UNKNOWN_CLASS, "annotations.csv line 2", "error")]
    assert dataset.problems[0].value == "'cat'"


@pytest.mark.parametrize(
    ("mapping", "where"),
    [("face,0\n Face,1\n", "classes.csv line 2"), ("face,0\nperson,0\n", "classes.csv line 2"),
     ("face,0\nFACE,1\n", "classes.csv line 2")],
)
def test_class_mapping_duplicate_error(tmp_path, mapping, where):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40,face"], classes=mapping)

    dataset = importers.read_csv(annotations)

    assert (importers.DUPLICATE_CLASS, where, "error") in cases(dataset)


def test_csv_reader_missing_image_dropped(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40,face", "gone.jpg,1,2,30,40,face"])

    dataset = importers.read_csv(annotations)

    assert [image.key for image in dataset.images] == ["a.jpg"]
    assert cases(dataset) == [(importers.MISSING_IMAGE, "annotations.csv line 2", "dropped")]
    assert dataset.missing == ["gone.jpg"]
    assert dataset.listed == ["a.jpg", "gone.jpg"]


def test_csv_reader_truncated_jpeg_dropped(tmp_path):
    noise = Image.effect_noise((WIDTH, HEIGHT), 60).convert("RGB")
    noise.save(tmp_path / "cut.jpg", format="JPEG", quality=95)
    data = (tmp_path / "cut.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["cut.jpg,1,2,30,40,face", "a.jpg,1,2,30,40,face"])

    dataset = importers.read_csv(annotations)

    assert [image.key for image in dataset.images] == ["a.jpg"]
    assert cases(dataset) == [(importers.UNREADABLE_IMAGE, "annotations.csv line 1", "dropped")]


def test_csv_reader_grayscale_and_rgba_kept(tmp_path):
    write_image(tmp_path / "gray.jpg", mode="L")
    write_image(tmp_path / "alpha.png", mode="RGBA")
    annotations = write_csv_dataset(tmp_path, ["gray.jpg,1,2,30,40,face", "alpha.png,1,2,30,40,face"])

    dataset = importers.read_csv(annotations)

    assert [image.key for image in dataset.images] == ["gray.jpg", "alpha.png"]
    assert [(case, action) for case, _, action in cases(dataset)] == [(importers.NOT_RGB, "fixed")] * 2
    assert [problem.value.rsplit(" ", 1)[-1] for problem in dataset.problems] == ["L", "RGBA"]


def test_csv_reader_malformed_rows_all_listed(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(
        tmp_path, ["path,x1,y1,x2,y2,class_name", "a.jpg,1,2,30,face", "", "a.jpg,1,2,30,40,face"]
    )

    dataset = importers.read_csv(annotations)

    assert cases(dataset) == [
        *[(importers.MALFORMED, "annotations.csv line 1", "error")] * 4,
        (importers.UNKNOWN_CLASS, "annotations.csv line 1", "error"),
        (importers.MALFORMED, "annotations.csv line 2", "error"),
        (importers.BLANK_LINE, "annotations.csv line 3", "fixed"),
    ]
    with pytest.raises(DataError, match=r"(?s)6 errors.*line 1: malformed input: x1='x1'.*line 2: malformed input"):
        importers.raise_on_errors(dataset)


# --- writer ------------------------------------------------------------------------------


def test_writer_background_and_relative_paths(tmp_path):
    write_image(tmp_path / "raw" / "sub" / "a.jpg")
    write_image(tmp_path / "raw" / "empty.jpg")
    annotations = write_csv_dataset(tmp_path / "raw", ["sub\\a.jpg,1,2,30,40,face", "empty.jpg,,,,,"])
    dataset = importers.read_csv(annotations)

    text = importers.format_annotations_csv(dataset.images, tmp_path / "interim")

    assert text == "../raw/sub/a.jpg,1,2,30,40,face\n../raw/empty.jpg,,,,,\n"
    assert importers.format_classes_csv({"person": 1, "face": 0}) == "face,0\nperson,1\n"


# --- VOC reader --------------------------------------------------------------------------


def write_voc(path: Path, filename: str, size: tuple[int, int], objects: list[tuple[str, str, str, str, str]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"<annotation><filename>{filename}</filename>",
             f"<size><width>{size[0]}</width><height>{size[1]}</height><depth>3</depth></size>"]
    for name, xmin, ymin, xmax, ymax in objects:
        parts.append(f"<object><name>{name}</name><bndbox><xmin>{xmin}</xmin><ymin>{ymin}</ymin>"
                     f"<xmax>{xmax}</xmax><ymax>{ymax}</ymax></bndbox></object>")
    parts.append("</annotation>")
    path.write_text("\n".join(parts))
    return path


def test_voc_reader_one_based_to_edges(tmp_path):
    write_image(tmp_path / "JPEGImages" / "a.jpg")
    write_voc(tmp_path / "Annotations" / "a.xml", "a.jpg", (WIDTH, HEIGHT),
              [("face", "1", "1", "100", "80"), ("face", "11", "21", "30", "40")])

    dataset = importers.read_voc(tmp_path / "Annotations", tmp_path / "JPEGImages")

    faces = dataset.images[0].faces
    assert [(face.x1, face.y1, face.x2, face.y2) for face in faces] == [(0, 0, 100, 80), (10, 20, 30, 40)]
    assert dataset.classes == {"face": 0}
    assert dataset.problems == []


def test_voc_reader_size_mismatch_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (HEIGHT, WIDTH), [("face", "1", "1", "10", "10")])

    dataset = importers.read_voc(tmp_path)

    assert dataset.images == []
    assert cases(dataset) == [(importers.SIZE_MISMATCH, "a.xml", "error")]
    assert dataset.problems[0].value == f"{HEIGHT}x{WIDTH}"


def test_voc_reader_zero_size_fixed(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (0, 0), [("face", "1", "1", "10", "10")])

    dataset = importers.read_voc(tmp_path)

    assert len(dataset.images[0].faces) == 1
    assert cases(dataset) == [(importers.SIZE_MISSING, "a.xml", "fixed")]


def test_voc_reader_invalid_xml_error(tmp_path):
    (tmp_path / "bad.xml").write_text("<annotation>\n<filename>a.jpg</filename>\n<size>\n</annotation>\n")

    dataset = importers.read_voc(tmp_path)

    assert [(problem.case, problem.where.rsplit("/", 1)[-1]) for problem in dataset.problems] == [
        (importers.MALFORMED, "bad.xml line 4")
    ]


def test_voc_reader_found_names_case_folded(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (WIDTH, HEIGHT),
              [("face", "1", "1", "10", "10"), ("Face", "21", "1", "40", "10"), (" face ", "1", "21", "10", "40")])

    dataset = importers.read_voc(tmp_path)

    assert dataset.classes == {"Face": 0}
    assert [face.class_name for face in dataset.images[0].faces] == ["Face", "Face", "Face"]
    assert [problem.case for problem in dataset.problems] == [importers.CLASS_NAME_SPELLING] * 2


def test_voc_reader_two_files_same_image(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a1.xml", "a.jpg", (WIDTH, HEIGHT), [("face", "1", "1", "10", "10")])
    write_voc(tmp_path / "a2.xml", "a.jpg", (WIDTH, HEIGHT), [("face", "21", "1", "40", "10")])

    dataset = importers.read_voc(tmp_path)

    assert len(dataset.images) == 1
    assert len(dataset.images[0].faces) == 2


def test_voc_reader_skips_other_classes(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_image(tmp_path / "street.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (WIDTH, HEIGHT),
              [("person", "1", "1", "100", "80"), ("face", "11", "21", "30", "40")])
    write_voc(tmp_path / "street.xml", "street.jpg", (WIDTH, HEIGHT), [("car", "1", "1", "50", "50")])
    (tmp_path / "classes.csv").write_text("face,0\n")

    dataset = importers.read_voc(tmp_path, classes_csv=tmp_path / "classes.csv")

    # street.jpg may show faces that are not annotated, so it is not kept as an image without faces.
    assert [(image.key, len(image.faces)) for image in dataset.images] == [("a.jpg", 1)]
    assert cases(dataset) == [(importers.OTHER_CLASS, "a.xml object 1", "dropped"),
                              (importers.OTHER_CLASS, "street.xml object 1", "dropped"),
                              (importers.NO_FACE_LEFT, "street.xml", "dropped")]


def test_voc_reader_skips_broken_other_class(tmp_path):
    # The box of a class that is left out is never used, so it is not checked either.
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename>"
        f"<size><width>{WIDTH}</width><height>{HEIGHT}</height></size>"
        "<object><name>person</name></object>"
        "<object><name>face</name><bndbox><xmin>11</xmin><ymin>21</ymin><xmax>30</xmax><ymax>40</ymax></bndbox></object>"
        "</annotation>")
    (tmp_path / "classes.csv").write_text("face,0\n")

    dataset = importers.read_voc(tmp_path, classes_csv=tmp_path / "classes.csv")

    assert cases(dataset) == [(importers.OTHER_CLASS, "a.xml object 1", "dropped")]
    assert len(dataset.images[0].faces) == 1


@pytest.mark.parametrize("classes", [None, "face,0\n"])
def test_voc_reader_empty_class_name_error(tmp_path, classes):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (WIDTH, HEIGHT), [("  ", "1", "1", "10", "10"), ("face", "21", "1", "40", "10")])
    if classes:
        (tmp_path / "classes.csv").write_text(classes)

    dataset = importers.read_voc(tmp_path, classes_csv=tmp_path / "classes.csv" if classes else None)

    assert cases(dataset) == [(importers.MALFORMED, "a.xml object 1", "error")]


def test_voc_reader_several_classes_without_class_csv_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (WIDTH, HEIGHT),
              [("person", "1", "1", "100", "80"), ("face", "11", "21", "30", "40")])

    dataset = importers.read_voc(tmp_path)

    assert [problem.case for problem in dataset.errors()] == [importers.UNSUPPORTED_CLASSES]
    assert "give a class CSV with the face class only" in dataset.errors()[0].message


# --- FDDB reader -------------------------------------------------------------------------


def write_fddb_fold(folder: Path, fold: int, entries: list[tuple[str, list[str]]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"FDDB-fold-{fold:02d}.txt").write_text("".join(f"{name}\n" for name, _ in entries))
    lines = []
    for name, faces in entries:
        lines += [name, str(len(faces)), *faces]
    (folder / f"FDDB-fold-{fold:02d}-ellipseList.txt").write_text("\n".join(lines) + "\n")


def test_fddb_reader_tiny_folds(tmp_path):
    write_fddb_fold(tmp_path / "folds", 1, [("2002/07/19/big/img_1", ["20 10 0 50 40 1", "10 10 -0.5 5 5 1"])])
    write_fddb_fold(tmp_path / "folds", 2, [("2003/01/13/big/img_2", ["20 10 1.5707963267948966 50 40 1"])])
    write_image(tmp_path / "images" / "2002/07/19/big/img_1.jpg")
    write_image(tmp_path / "images" / "2003/01/13/big/img_2.jpg")

    dataset = importers.read_fddb(tmp_path / "folds", tmp_path / "images")

    assert [(image.key, image.group) for image in dataset.images] == [
        ("2002/07/19/big/img_1.jpg", 1), ("2003/01/13/big/img_2.jpg", 2)
    ]
    assert [(face.x1, face.y1, face.x2, face.y2) for face in dataset.images[0].faces] == [(30, 30, 70, 50), (0, 0, 15, 15)]
    assert [(face.x1, face.y1, face.x2, face.y2) for face in dataset.images[1].faces] == [(40, 20, 60, 60)]
    assert dataset.images[0].faces[0].source.endswith("FDDB-fold-01-ellipseList.txt line 3")
    assert cases(dataset) == [(importers.PARTLY_OUTSIDE, "FDDB-fold-01-ellipseList.txt line 4", "fixed")]


def test_fddb_reader_order_mismatch_error(tmp_path):
    write_fddb_fold(tmp_path, 1, [("img_a", ["20 10 0 50 40 1"]), ("img_b", [])])
    (tmp_path / "FDDB-fold-01.txt").write_text("img_b\nimg_a\n")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert (importers.MALFORMED, "FDDB-fold-01.txt line 1", "error") in cases(dataset)


def test_fddb_reader_short_face_line_error(tmp_path):
    write_fddb_fold(tmp_path, 1, [("img_a", ["20 10 0 50 1"])])
    write_image(tmp_path / "img_a.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "FDDB-fold-01-ellipseList.txt line 3", "error")]


def test_fddb_reader_face_count_too_high(tmp_path):
    # img_a declares 2 faces but has 1: the error is on the count, and img_b is still read.
    (tmp_path / "FDDB-fold-01.txt").write_text("img_a\nimg_b\n")
    (tmp_path / "FDDB-fold-01-ellipseList.txt").write_text("img_a\n2\n20 10 0 50 40 1\nimg_b\n1\n20 10 0 50 40 1\n")
    write_image(tmp_path / "img_a.jpg")
    write_image(tmp_path / "img_b.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "FDDB-fold-01-ellipseList.txt line 2", "error")]
    assert dataset.problems[0].message == "img_a declares 2 faces but has 1: line 4 is the image line 'img_b'"
    assert [(image.key, len(image.faces)) for image in dataset.images] == [("img_a.jpg", 1), ("img_b.jpg", 1)]


def test_fddb_reader_face_count_past_end_of_file(tmp_path):
    write_fddb_fold(tmp_path, 1, [("img_a", ["20 10 0 50 40 1"])])
    (tmp_path / "FDDB-fold-01-ellipseList.txt").write_text("img_a\n3\n20 10 0 50 40 1\n")
    write_image(tmp_path / "img_a.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert dataset.problems[0].message == "img_a declares 3 faces but has 1: line 4 is the end of the file"


def test_fddb_reader_face_count_too_low(tmp_path):
    # img_a declares 1 face but has 2: the extra face line is the error, and img_b is still read.
    (tmp_path / "FDDB-fold-01.txt").write_text("img_a\nimg_b\n")
    (tmp_path / "FDDB-fold-01-ellipseList.txt").write_text(
        "img_a\n1\n20 10 0 50 40 1\n10 10 0 20 20 1\nimg_b\n1\n20 10 0 50 40 1\n")
    write_image(tmp_path / "img_a.jpg")
    write_image(tmp_path / "img_b.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "FDDB-fold-01-ellipseList.txt line 4", "error")]
    assert dataset.problems[0].message == (
        "a face line where an image path was expected: img_a has more face lines than its face count")
    assert [(image.key, len(image.faces)) for image in dataset.images] == [("img_a.jpg", 1), ("img_b.jpg", 1)]


def test_fddb_reader_missing_count_line(tmp_path):
    (tmp_path / "FDDB-fold-01.txt").write_text("img_a\nimg_b\n")
    (tmp_path / "FDDB-fold-01-ellipseList.txt").write_text("img_a\n20 10 0 50 40 1\nimg_b\n1\n20 10 0 50 40 1\n")
    write_image(tmp_path / "img_a.jpg")
    write_image(tmp_path / "img_b.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "FDDB-fold-01-ellipseList.txt line 2", "error")]
    assert dataset.problems[0].message == "expected the number of faces of img_a"
    assert [image.key for image in dataset.images if image.faces] == ["img_b.jpg"]


def test_fddb_reader_blank_line_between_faces(tmp_path):
    (tmp_path / "FDDB-fold-01.txt").write_text("img_a\n")
    (tmp_path / "FDDB-fold-01-ellipseList.txt").write_text("img_a\n2\n20 10 0 50 40 1\n\n10 10 0 20 20 1\n")
    write_image(tmp_path / "img_a.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert dataset.errors() == []
    assert len(dataset.images[0].faces) == 2


def test_fddb_real_fold_files(fddb_folds, tmp_path):
    images = tmp_path / "images"
    # The fold files give no image sizes. Each stand-in image is just large enough to contain
    # all of its ellipses' boxes, so no face is clipped.
    for _, _, ellipse_path in importers.fddb_fold_files(fddb_folds):
        for name, _, boxes in importers._read_ellipse_list(ellipse_path, importers.ProblemLog()):
            width = max([1] + [math.ceil(raw.box[2]) for raw in boxes])
            height = max([1] + [math.ceil(raw.box[3]) for raw in boxes])
            path = images / f"{name}.jpg"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.new("L", (width, height)).save(path, format="JPEG", quality=10)

    dataset = importers.read_fddb(fddb_folds, images)

    assert dataset.errors() == []
    assert {problem.case for problem in dataset.problems} <= {importers.PARTLY_OUTSIDE, importers.NOT_RGB}
    counts = {}
    for image in dataset.images:
        image_count, face_count = counts.get(image.group, (0, 0))
        counts[image.group] = (image_count + 1, face_count + len(image.faces))
    assert counts == FDDB_FOLD_COUNTS
    assert len(dataset.images) == 2845
    assert sum(len(image.faces) for image in dataset.images) == 5171


# --- bad input found by review -------------------------------------------------------------


def test_csv_reader_empty_file_error(tmp_path):
    annotations = write_csv_dataset(tmp_path, [])

    dataset = importers.read_csv(annotations)

    assert cases(dataset) == [(importers.MALFORMED, "annotations.csv", "error")]


def test_csv_reader_duplicate_box_dropped(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(
        tmp_path, ["a.jpg,1,2,30,40,face", "a.jpg,1,2,30,40,face", "a.jpg,1.0,2,30,40,Face", "a.jpg,2,2,30,40,face"]
    )

    dataset = importers.read_csv(annotations)

    faces = dataset.images[0].faces
    assert [(face.x1, face.y1, face.x2, face.y2) for face in faces] == [(1, 2, 30, 40), (2, 2, 30, 40)]
    duplicates = [problem for problem in dataset.problems if problem.case == importers.DUPLICATE_BOX]
    assert [problem.where.rsplit("/", 1)[-1] for problem in duplicates] == ["annotations.csv line 2",
                                                                             "annotations.csv line 3"]
    assert all(problem.action == "dropped" for problem in duplicates)


def test_csv_reader_16_bit_png_error(tmp_path):
    pixels = (np.arange(WIDTH * HEIGHT, dtype=np.uint16).reshape(HEIGHT, WIDTH) * 7)
    Image.fromarray(pixels).save(tmp_path / "deep.png")
    annotations = write_csv_dataset(tmp_path, ["deep.png,1,2,30,40,face"])

    dataset = importers.read_csv(annotations)

    assert dataset.images == []
    assert cases(dataset) == [(importers.HIGH_BIT_DEPTH, "annotations.csv line 1", "error")]


@pytest.mark.parametrize(
    ("mapping", "case", "where"),
    [
        ("face,-1\n", importers.MALFORMED, "classes.csv line 1"),
        (",0\n", importers.MALFORMED, "classes.csv line 1"),
        ("face,1\n", importers.UNSUPPORTED_CLASSES, "classes.csv"),
        ("face,0\nhead,1\n", importers.UNSUPPORTED_CLASSES, "classes.csv"),
    ],
)
def test_class_mapping_detector_cannot_train_error(tmp_path, mapping, case, where):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40,face"], classes=mapping)

    dataset = importers.read_csv(annotations)

    assert (case, where, "error") in cases(dataset)


def test_voc_reader_entities_error(tmp_path):
    (tmp_path / "bomb.xml").write_text(
        '<?xml version="1.0"?>\n<!DOCTYPE a [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;">]>\n'
        "<annotation><filename>&lol2;</filename></annotation>\n"
    )

    dataset = importers.read_voc(tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "bomb.xml", "error")]
    assert "EntitiesForbidden" in dataset.problems[0].value


def test_voc_reader_nested_object_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    (tmp_path / "a.xml").write_text(
        "<annotation><filename>a.jpg</filename><folder><object><name>face</name><bndbox><xmin>1</xmin>"
        "<ymin>1</ymin><xmax>10</xmax><ymax>10</ymax></bndbox></object></folder></annotation>"
    )

    dataset = importers.read_voc(tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "a.xml <object>", "error")]


def test_voc_reader_two_sizes_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    write_voc(tmp_path / "a.xml", "a.jpg", (WIDTH, HEIGHT), [("face", "1", "1", "10", "10")])
    text = (tmp_path / "a.xml").read_text()
    (tmp_path / "a.xml").write_text(text.replace("</filename>", "</filename><size><width>9</width></size>"))

    dataset = importers.read_voc(tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "a.xml <size>", "error")]
    assert dataset.images == []


@pytest.mark.parametrize(
    ("face_line", "case"),
    [
        ("nan 10 0 50 40 1", importers.MALFORMED),
        ("20 inf 0 50 40 1", importers.MALFORMED),
        ("-20 10 0 50 40 1", importers.MALFORMED),
        ("20 10 72.5 50 40 1", importers.FDDB_ANGLE),
        ("20 10 -1.6 50 40 1", importers.FDDB_ANGLE),
    ],
)
def test_fddb_reader_bad_ellipse_error(tmp_path, face_line, case):
    write_fddb_fold(tmp_path, 1, [("img_a", [face_line])])
    write_image(tmp_path / "img_a.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert cases(dataset) == [(case, "FDDB-fold-01-ellipseList.txt line 3", "error")]


def test_fddb_reader_image_in_two_folds_error(tmp_path):
    write_fddb_fold(tmp_path, 1, [("img_a", ["20 10 0 50 40 1"])])
    write_fddb_fold(tmp_path, 2, [("img_a", ["20 10 0 50 40 1"])])
    write_image(tmp_path / "img_a.jpg")

    dataset = importers.read_fddb(tmp_path, tmp_path)

    assert cases(dataset) == [(importers.MALFORMED, "FDDB-fold-02-ellipseList.txt line 1", "error")]
    assert [(image.group, len(image.faces)) for image in dataset.images] == [(1, 1)]


def test_csv_reader_not_utf8_error(tmp_path):
    write_image(tmp_path / "a.jpg")
    annotations = write_csv_dataset(tmp_path, ["a.jpg,1,2,30,40,face"])
    annotations.write_bytes(annotations.read_bytes() + "café.jpg,1,2,30,40,face\n".encode("latin-1"))

    with pytest.raises(DataError, match=r"annotations\.csv line 2: byte 0xe9 is not valid UTF-8"):
        importers.read_csv(annotations)


def test_fddb_reader_not_utf8_error(tmp_path):
    write_fddb_fold(tmp_path, 1, [("img_a", ["20 10 0 50 40 1"])])
    (tmp_path / "FDDB-fold-01.txt").write_bytes("img_\xe9\n".encode("latin-1"))

    with pytest.raises(DataError, match=r"FDDB-fold-01\.txt line 1: byte 0xe9 is not valid UTF-8"):
        importers.read_fddb(tmp_path, tmp_path)
