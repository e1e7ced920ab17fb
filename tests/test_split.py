"""Tests of stages.split: person ranges, person-grouped folds, path rewriting and the command line."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pytest
import yaml

from stages import convert, split
from stages.errors import DataError
from stages.params import PROJECT_ROOT

PERSONS_CSV = PROJECT_ROOT / "stages" / "resources" / "caltech_persons.csv"
# Ten persons with three images each: person p shows images 3p-2 .. 3p.
TEN_PERSONS = "person,first_image,last_image\n" + "".join(f"{p},{3 * p - 2},{3 * p}\n" for p in range(1, 11))


def annotation_text(numbers: range, prefix: str = "../raw/faces", extra_box_for: tuple[int, ...] = ()) -> str:
    """Return keras-retinanet rows, one per image and a second row for images in ``extra_box_for``."""
    lines = []
    for number in numbers:
        lines.append(f"{prefix}/image_{number:04d}.jpg,1,2,30,40,face")
        if number in extra_box_for:
            lines.append(f"{prefix}/image_{number:04d}.jpg,5,6,20,25,face")
    return "\n".join(lines) + "\n"


def parse_csv(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def fold_files(text: str, persons_text: str = TEN_PERSONS, folds: int = 3, seed: int = 1) -> dict[str, str]:
    rows_by_image = split.parse_annotations(text, "annotations.csv")
    persons = split.assign_persons(list(rows_by_image), split.parse_persons(persons_text, "persons.csv"), "persons.csv")
    fold_of_image = split.assign_folds(persons, folds, seed)
    return split.build_split_files(rows_by_image, persons, fold_of_image, Path("data/interim"), Path("data/splits"))


def person_of(path: str) -> int:
    """Return the person of an image in TEN_PERSONS."""
    return (split.image_number(path) - 1) // 3 + 1


# --- person ranges -----------------------------------------------------------------------


def test_shipped_persons_cover_all_images():
    ranges = split.parse_persons(PERSONS_CSV.read_text(), str(PERSONS_CSV))

    assert sorted(entry.person for entry in ranges) == list(range(1, 28))
    covered = sorted(number for entry in ranges for number in range(entry.first_image, entry.last_image + 1))
    assert covered == list(range(1, 451))
    person_27 = next(entry for entry in ranges if entry.person == 27)
    assert (person_27.first_image, person_27.last_image) == (399, 403)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("person,first,last\n1,1,2\n", r"persons\.csv line 1: expected the header person,first_image,last_image"),
        ("", r"persons\.csv line 1: expected the header .* found an empty file"),
        ("person,first_image,last_image\n1,1,2\n2,x,5\n", r"persons\.csv line 3: first_image is 'x', expected a positive"),
        ("person,first_image,last_image\n1,0,2\n", r"persons\.csv line 2: first_image is 0, expected a positive"),
        ("person,first_image,last_image\n1,5,2\n", r"persons\.csv line 2: first_image 5 is after last_image 2"),
        ("person,first_image,last_image\n1,1,2,9\n", r"persons\.csv line 2: expected 3 fields, found 4"),
        ("person,first_image,last_image\n1,1,2\n1,3,4\n", r"persons\.csv line 3: person 1 already defined on line 2"),
        (
            "person,first_image,last_image\n1,1,5\n2,5,9\n",
            r"persons\.csv line 3: images 5-9 of person 2 overlap images 1-5 of person 1 on line 2",
        ),
    ],
)
def test_parse_persons_rejects_bad_rows(text, message):
    with pytest.raises(DataError, match=message):
        split.parse_persons(text, "persons.csv")


def test_assign_persons_image_outside_ranges():
    ranges = split.parse_persons(TEN_PERSONS, "persons.csv")

    message = r"image '\.\./raw/image_0031\.jpg': image number 31 is in no person range of persons\.csv"
    with pytest.raises(DataError, match=message):
        split.assign_persons(["../raw/image_0001.jpg", "../raw/image_0031.jpg"], ranges, "persons.csv")


def test_image_number_needs_standard_name():
    assert split.image_number("../../raw/image_0042.jpg") == 42
    with pytest.raises(DataError, match=r"image 'faces/face1\.png': file name does not match image_NNNN\.jpg"):
        split.image_number("faces/face1.png")


# --- annotations -------------------------------------------------------------------------


def test_parse_annotations_groups_rows_by_image():
    rows_by_image = split.parse_annotations(annotation_text(range(1, 4), extra_box_for=(2,)), "annotations.csv")

    assert list(rows_by_image) == [f"../raw/faces/image_{n:04d}.jpg" for n in range(1, 4)]
    assert [len(rows) for rows in rows_by_image.values()] == [1, 2, 1]


def test_parse_annotations_wrong_field_count():
    with pytest.raises(DataError, match=r"annotations\.csv line 2: expected 6 fields path,x1,y1,x2,y2,class_name, found 5"):
        split.parse_annotations("a.jpg,1,2,3,4,face\nb.jpg,1,2,3,4\n", "annotations.csv")


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ("b.jpg,x1,2,3,4,face", r"annotations\.csv line 2: x1 is 'x1', expected an integer pixel coordinate"),
        ("b.jpg,1,2,3.5,4,face", r"annotations\.csv line 2: x2 is '3\.5', expected an integer pixel coordinate"),
        ("b.jpg,1,2,3,4,", r"annotations\.csv line 2: class_name is empty"),
    ],
)
def test_parse_annotations_rejects_bad_values(row, message):
    with pytest.raises(DataError, match=message):
        split.parse_annotations(f"a.jpg,1,2,3,4,face\n{row}\n", "annotations.csv")


def test_several_faces_stay_in_one_fold():
    files = fold_files(annotation_text(range(1, 31), extra_box_for=(2, 17)))

    folds = parse_csv(files["folds.csv"])[1:]
    assert len(folds) == 30
    for fold in range(3):
        test_rows = parse_csv(files[f"fold{fold}/test.csv"])
        train_rows = parse_csv(files[f"fold{fold}/train.csv"])
        assert len(test_rows) + len(train_rows) == 32
        for name in ("image_0002.jpg", "image_0017.jpg"):
            in_test = [row for row in test_rows if row[0].endswith(name)]
            in_train = [row for row in train_rows if row[0].endswith(name)]
            assert sorted([len(in_test), len(in_train)]) == [0, 2]


def test_rebase_path():
    assert split.rebase_path("../raw/a.jpg", Path("data/interim"), Path("data/splits/fold0")) == "../../raw/a.jpg"
    assert split.rebase_path("../raw/a.jpg", Path("data/interim"), Path("data/splits")) == "../raw/a.jpg"
    assert split.rebase_path("/abs/a.jpg", Path("data/interim"), Path("data/splits")) == "/abs/a.jpg"


# --- folds -------------------------------------------------------------------------------


def test_folds_separate_images_and_persons():
    files = fold_files(annotation_text(range(1, 31), extra_box_for=(4, 17)), folds=3)

    test_images_seen: list[str] = []
    for fold in range(3):
        train = parse_csv(files[f"fold{fold}/train.csv"])
        test = parse_csv(files[f"fold{fold}/test.csv"])
        train_images = {row[0] for row in train}
        test_images = {row[0] for row in test}
        assert train_images.isdisjoint(test_images)
        assert {person_of(path) for path in train_images}.isdisjoint({person_of(path) for path in test_images})
        assert len(train_images) + len(test_images) == 30
        assert len(train) + len(test) == 32, "an image with two boxes keeps both rows"
        test_images_seen.extend(test_images)
    assert sorted(test_images_seen) == sorted(f"../../raw/faces/image_{n:04d}.jpg" for n in range(1, 31))


def test_folds_table_matches_fold_files():
    files = fold_files(annotation_text(range(1, 31)), folds=3)

    table = parse_csv(files["folds.csv"])
    assert table[0] == ["image", "person", "fold", "path"]
    assert len(table) == 31
    for image, person, fold, path in table[1:]:
        assert int(person) == person_of(image)
        assert path == f"../raw/faces/{image}"
        assert f"../../raw/faces/{image}" in files[f"fold{fold}/test.csv"]
    assert sorted({row[2] for row in table[1:]}) == ["0", "1", "2"]


def test_same_seed_same_folds():
    text = annotation_text(range(1, 31))

    assert fold_files(text, seed=5) == fold_files(text, seed=5)


def test_different_seed_different_folds():
    text = annotation_text(range(1, 31))

    assert fold_files(text, seed=5)["folds.csv"] != fold_files(text, seed=6)["folds.csv"]


def test_fewer_persons_than_folds():
    with pytest.raises(DataError, match=r"annotations\.csv: images of 2 persons, fewer than split\.folds = 3"):
        split.assign_folds([1, 1, 2, 2], folds=3, seed=0, source="annotations.csv")


# --- command line ------------------------------------------------------------------------


def write_params(path: Path, folds: int, seed: int = 3) -> Path:
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["split"] = {"folds": folds, "seed": seed}
    path.write_text(yaml.safe_dump(params))
    return path


def split_argv(params: Path, annotations: Path, persons: Path, out: Path) -> list[str]:
    return ["--params", str(params), "--annotations", str(annotations), "--persons", str(persons), "--out", str(out)]


def test_main_writes_fold_folders(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("data/interim").mkdir(parents=True)
    Path("data/interim/annotations.csv").write_text(annotation_text(range(1, 31), prefix="../raw/faces"))
    Path("persons.csv").write_text(TEN_PERSONS)
    Path("data/splits").mkdir()
    Path("data/splits/stale.csv").write_text("from an earlier run")
    params = write_params(tmp_path / "params.yaml", folds=4)

    argv = split_argv(params, Path("data/interim/annotations.csv"), Path("persons.csv"), Path("data/splits"))
    status = split.main(argv)

    assert status == 0
    expected = ["fold0", "fold1", "fold2", "fold3", "folds.csv"]
    assert sorted(entry.name for entry in Path("data/splits").iterdir()) == expected
    assert sorted(entry.name for entry in Path("data").iterdir()) == ["interim", "splits"]
    test_rows = parse_csv(Path("data/splits/fold2/test.csv").read_text())
    assert test_rows[0][0].startswith("../../raw/faces/image_")


def test_main_strips_byte_order_mark(tmp_path):
    annotations = tmp_path / "annotations.csv"
    annotations.write_text(annotation_text(range(1, 31)), encoding="utf-8-sig")
    persons = tmp_path / "persons.csv"
    persons.write_text(TEN_PERSONS, encoding="utf-8-sig")
    out = tmp_path / "splits"

    status = split.main(split_argv(write_params(tmp_path / "params.yaml", folds=3), annotations, persons, out))

    assert status == 0
    folds_text = (out / "folds.csv").read_text(encoding="utf-8")
    assert "\ufeff" not in folds_text
    for fold in range(3):
        assert "\ufeff" not in (out / f"fold{fold}" / "train.csv").read_text(encoding="utf-8")
        assert "\ufeff" not in (out / f"fold{fold}" / "test.csv").read_text(encoding="utf-8")


def test_main_fewer_persons_than_folds(tmp_path, capsys):
    annotations = tmp_path / "annotations.csv"
    annotations.write_text(annotation_text(range(1, 7)))
    persons = tmp_path / "persons.csv"
    persons.write_text(TEN_PERSONS)
    out = tmp_path / "splits"

    status = split.main(split_argv(write_params(tmp_path / "params.yaml", folds=3), annotations, persons, out))

    last_line = capsys.readouterr().err.strip().splitlines()[-1]
    assert status == 1
    assert last_line == (
        f"python -m stages.split: error: {annotations}: images of 2 persons, fewer than split.folds = 3; "
        "lower split.folds or add images of more persons"
    )
    assert not out.exists()


# --- real data ---------------------------------------------------------------------------


def test_real_data_five_folds(caltech_raw_dir, tmp_path):
    interim = tmp_path / "data" / "interim"
    interim.mkdir(parents=True)
    annotations = interim / "annotations.csv"
    text, _ = convert.convert_dataset(caltech_raw_dir, annotations, max_images=None)
    annotations.write_text(text)
    out = tmp_path / "data" / "splits"

    status = split.main(split_argv(PROJECT_ROOT / "params.yaml", annotations, PERSONS_CSV, out))

    assert status == 0
    table = parse_csv((out / "folds.csv").read_text())[1:]
    assert len(table) == len(text.splitlines())
    assert sorted({int(row[2]) for row in table}) == [0, 1, 2, 3, 4]
    person_of_image = {image: int(person) for image, person, _, _ in table}
    persons_by_fold: dict[int, set[int]] = {}
    for image, person, fold, path in table:
        persons_by_fold.setdefault(int(fold), set()).add(int(person))
        assert (out / path).is_file()
    all_persons = set().union(*persons_by_fold.values())
    assert len(all_persons) == len(set(person_of_image.values()))
    assert sum(len(persons) for persons in persons_by_fold.values()) == len(all_persons), "no person in two folds"
    for fold in range(5):
        train = parse_csv((out / f"fold{fold}/train.csv").read_text())
        test = parse_csv((out / f"fold{fold}/test.csv").read_text())
        train_persons = {person_of_image[Path(row[0]).name] for row in train}
        test_persons = {person_of_image[Path(row[0]).name] for row in test}
        assert len(train) + len(test) == len(table)
        assert {row[0] for row in train}.isdisjoint({row[0] for row in test})
        assert train_persons.isdisjoint(test_persons)
        assert test_persons == persons_by_fold[fold]
        for row in test:
            assert (out / f"fold{fold}" / row[0]).is_file()


# --- groups from the convert stage -------------------------------------------------------


def groups_text(paths: list[str], groups: list[object], header: str = "image,group") -> str:
    return header + "\n" + "".join(f"{path},{group}\n" for path, group in zip(paths, groups))


def test_caltech_groups_give_the_persons_folds():
    # groups.csv of the convert stage gives the same folds as the person ranges it came from.
    text = annotation_text(range(1, 31))
    rows_by_image = split.parse_annotations(text, "annotations.csv")
    paths = list(rows_by_image)
    ranges = split.parse_persons(PERSONS_CSV.read_text(), str(PERSONS_CSV))
    persons = split.assign_persons(paths, split.parse_persons(TEN_PERSONS, "persons.csv"), "persons.csv")
    groups = split.parse_groups(groups_text(paths, persons), "groups.csv")

    from_groups = split.assign_groups(paths, groups, "groups.csv")

    assert ranges, "the shipped person ranges parse"
    assert from_groups == persons
    assert split.assign_folds(from_groups, 4, 3) == split.assign_folds(persons, 4, 3)


def test_string_groups_stay_together():
    paths = [f"img/{name}.jpg" for name in "abcdefgh"]
    groups = split.parse_groups(groups_text(paths, ["ann", "ann", "bo", "bo", "cy", "cy", "dee", "dee"]), "groups.csv")

    persons = split.assign_groups(paths, groups, "groups.csv")
    folds = split.assign_folds(persons, 2, 5)

    assert persons[0] == "ann"
    for first in range(0, len(paths), 2):
        assert folds[first] == folds[first + 1], paths[first]


def test_predefined_folds_keep_the_dataset_folds():
    paths = [f"2002/{number}.jpg" for number in range(6)]
    groups = split.parse_groups(groups_text(paths, [10, 2, 1, 10, 2, 1], header="image,fold"), "groups.csv")

    assert groups.predefined_folds
    folds = split.predefined_folds(split.assign_groups(paths, groups, "groups.csv"), 3, "groups.csv")

    # Fold values sort as numbers: 1 -> fold 0, 2 -> fold 1, 10 -> fold 2.
    assert folds == [2, 1, 0, 2, 1, 0]


def test_predefined_folds_count_mismatch():
    with pytest.raises(DataError, match=r"groups\.csv: the dataset defines 2 folds \(1, 2\) but split\.folds = 5; "
                                        r"set split\.folds to 2"):
        split.predefined_folds([1, 2, 1], 5, "groups.csv")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("image,person\na.jpg,1\n", r"groups\.csv line 1: expected the header image,group or image,fold"),
        ("", r"groups\.csv line 1: expected the header .* found an empty file"),
        ("image,group\na.jpg,1,2\n", r"groups\.csv line 2: expected 2 fields image,group, found 3"),
        ("image,group\na.jpg, \n", r"groups\.csv line 2: missing image or group"),
        ("image,group\na.jpg,1\nb.jpg,2\na.jpg,3\n", r"groups\.csv line 4: image 'a\.jpg' already listed on line 2"),
        ("image,group\n", r"groups\.csv: no images listed"),
    ],
)
def test_parse_groups_rejects_bad_rows(text, message):
    with pytest.raises(DataError, match=message):
        split.parse_groups(text, "groups.csv")


def test_assign_groups_names_unlisted_images():
    groups = split.parse_groups("image,group\na.jpg,1\n", "groups.csv")
    message = r"groups\.csv: no group for 1 images of the annotations \(for example 'b\.jpg'\)"
    with pytest.raises(DataError, match=message):
        split.assign_groups(["a.jpg", "b.jpg"], groups, "groups.csv")


def test_image_names_are_file_names_when_unique():
    paths = ["images/image_0001.jpg", "images/image_0002.jpg"]
    assert split.image_names(paths) == ["image_0001.jpg", "image_0002.jpg"]


def test_image_names_are_paths_when_file_names_repeat():
    # FDDB has such pairs, for example img_393.jpg under several dates.
    paths = ["2002/08/11/big/img_393.jpg", "2002\\08\\12\\big\\img_1.jpg", "./2003/01/13/big/img_393.jpg"]
    names = split.image_names(paths)
    assert names == ["2002/08/11/big/img_393.jpg", "2002/08/12/big/img_1.jpg", "2003/01/13/big/img_393.jpg"]


def test_image_names_leave_out_the_common_folder():
    paths = ["../fddb/images/2002/08/11/big/img_591.jpg", "../fddb/images/2003/01/13/big/img_591.jpg"]
    assert split.image_names(paths) == ["2002/08/11/big/img_591.jpg", "2003/01/13/big/img_591.jpg"]


def test_image_names_reject_one_file_twice():
    message = r"annotations\.csv: images 'a/b\.jpg' and 'a/c/\.\./b\.jpg' are the same file a/b\.jpg"
    with pytest.raises(DataError, match=message):
        split.image_names(["a/b.jpg", "a/c/../b.jpg"], "annotations.csv")


def test_main_names_repeated_file_names_by_path(tmp_path):
    annotations = tmp_path / "annotations.csv"
    paths = ["d1/img_1.jpg", "d2/img_1.jpg", "d1/img_2.jpg", "d2/img_3.jpg"]
    annotations.write_text("".join(f"{path},1,2,30,40,face\n" for path in paths))
    groups = tmp_path / "groups.csv"
    groups.write_text(groups_text(paths, ["p1", "p2", "p1", "p2"]))
    out = tmp_path / "splits"

    argv = ["--params", str(write_params(tmp_path / "params.yaml", folds=2)), "--annotations", str(annotations),
            "--groups", str(groups), "--out", str(out)]
    assert split.main(argv) == 0

    folds_table = parse_csv((out / "folds.csv").read_text())[1:]
    assert [row[0] for row in folds_table] == paths
    assert [row[3] for row in folds_table] == [f"../{path}" for path in paths]


def test_main_with_groups_keeps_background_rows(tmp_path):
    annotations = tmp_path / "annotations.csv"
    paths = [f"images/{name}.jpg" for name in "abcdef"]
    annotations.write_text(
        "images/a.jpg,1,2,30,40,face\nimages/a.jpg,5,6,20,25,face\nimages/b.jpg,,,,,\n"
        + "".join(f"{path},1,2,30,40,face\n" for path in paths[2:])
    )
    groups = tmp_path / "groups.csv"
    groups.write_text(groups_text(paths, ["p1", "p1", "p2", "p2", "p3", "p3"]))
    out = tmp_path / "splits"

    argv = ["--params", str(write_params(tmp_path / "params.yaml", folds=3)), "--annotations", str(annotations),
            "--groups", str(groups), "--out", str(out)]
    assert split.main(argv) == 0

    folds_table = parse_csv((out / "folds.csv").read_text())[1:]
    fold_of_image = {image: int(fold) for image, _, fold, _ in folds_table}
    assert fold_of_image["a.jpg"] == fold_of_image["b.jpg"]
    test_rows = parse_csv((out / f"fold{fold_of_image['b.jpg']}" / "test.csv").read_text())
    assert ["../../images/b.jpg", "", "", "", "", ""] in test_rows
    assert sum(row[0] == "../../images/a.jpg" for row in test_rows) == 2
