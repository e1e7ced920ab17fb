"""Tests of stages.smiles_split: pixel digests, deduplication, stratified folds, subsampling and the command line.

The SMILEsmileD tests use the real dataset from the mirror named by EMOTIVELENS_MIRROR (or the
download in params.yaml), which has known duplicates and images filed under both labels.
"""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from stages import smiles_download, smiles_split
from stages.download import resolve_mirror_root
from stages.errors import DataError
from stages.params import PROJECT_ROOT, ParamsError, load_params

# Byte-identical images filed as both smiling and not smiling in SMILEsmileD.
CONFLICTING_NAMES = ("3308", "5", "10249", "2422", "29")
# Byte-identical pairs inside SMILEsmileD's negatives.
DUPLICATE_PAIRS = (("negatives7/334", "negatives7/7798"), ("negatives7/1637", "negatives7/3535"))
SPLIT_PARAMS = {"max_samples": None, "folds": 5, "seed": 20190102}


@pytest.fixture(scope="module")
def smiles_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smiles") / "smilesmiled"
    params = load_params(PROJECT_ROOT / "params.yaml", "default")["smiles_download"]
    spec = smiles_download.DATASETS["smilesmiled"]
    smiles_download.fetch_dataset(spec, params, resolve_mirror_root(None, os.environ), out)
    return out


@pytest.fixture(scope="module")
def smiles_samples(smiles_raw) -> list[smiles_split.Sample]:
    return smiles_split.add_digests(smiles_split.read_smilesmiled(smiles_raw), "smilesmiled")


@pytest.fixture(scope="module")
def smiles_folds(smiles_samples):
    return smiles_split.split_dataset(smiles_samples, SPLIT_PARAMS, "smilesmiled", "smilesmiled")


def random_image(seed: int, shape=(24, 20, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=shape, dtype=np.uint8)


def write_crops_csv(folder: Path, entries: list[tuple[str, int, str]]) -> Path:
    """Write crops.csv rows (sample, label, source file name) with a crop that is a copy of the source."""
    csv_path = folder / "crops.csv"
    with csv_path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sample", "path", "label", "face_found", "face_score", "source"])
        for sample, label, source in entries:
            writer.writerow([sample, f"raw/{source}", label, 1, 0.99, f"raw/{source}"])
    return csv_path


# --- real SMILEsmileD --------------------------------------------------------------------


def test_smilesmiled_keys_repeated_names_by_class(smiles_samples):
    ids = [sample.sample for sample in smiles_samples]

    assert len(ids) == 3690 + 9475
    assert len(set(ids)) == len(ids)
    for name in ("12525", "5837"):
        assert f"positives7/{name}" in ids
        assert f"negatives7/{name}" in ids


def test_smilesmiled_conflicting_labels_dropped(smiles_folds):
    kept, _, summary = smiles_folds
    kept_ids = {sample.sample for sample in kept}
    expected = {f"{folder}/{name}" for name in CONFLICTING_NAMES for folder in ("positives7", "negatives7")}
    dropped = {sample for group in summary["conflicting_label_groups"] for sample in group["samples"]}

    assert dropped == expected
    assert summary["conflicting_label_samples_dropped"] == 10
    assert not expected & kept_ids
    assert {"positives7/12525", "negatives7/12525", "positives7/5837", "negatives7/5837"} <= kept_ids


def test_smilesmiled_duplicates_removed(smiles_folds):
    kept, _, summary = smiles_folds
    kept_ids = {sample.sample for sample in kept}
    groups = {(group["kept"], *group["removed"]) for group in summary["duplicate_groups"]}

    assert groups == set(DUPLICATE_PAIRS)
    assert summary["duplicates_removed"] == 2
    assert summary["samples"] == 13165 - 10 - 2
    for first, second in DUPLICATE_PAIRS:
        assert first in kept_ids
        assert second not in kept_ids


def test_smilesmiled_no_image_in_train_and_test(smiles_samples, smiles_folds):
    kept, folds, _ = smiles_folds
    # The raw data does repeat images, so this test would fail without deduplication.
    assert len({sample.digest for sample in smiles_samples}) < len(smiles_samples)

    for fold in range(SPLIT_PARAMS["folds"]):
        test = {sample.digest for sample, sample_fold in zip(kept, folds) if sample_fold == fold}
        train = {sample.digest for sample, sample_fold in zip(kept, folds) if sample_fold != fold}
        assert not test & train, f"fold {fold}"


def test_smilesmiled_folds_stratified(smiles_folds):
    kept, folds, summary = smiles_folds
    positives = sum(sample.label for sample in kept)

    assert sorted(set(folds)) == [0, 1, 2, 3, 4]
    for fold, counts in summary["test_class_counts_per_fold"].items():
        test_size = counts["0"] + counts["1"]
        assert abs(counts["1"] - test_size * positives / len(kept)) <= 1, f"fold {fold}"


# --- digests and deduplication -----------------------------------------------------------


def test_reencoded_copy_has_same_digest(tmp_path):
    image = random_image(1)
    cv2.imwrite(str(tmp_path / "fast.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 0])
    cv2.imwrite(str(tmp_path / "small.png"), image, [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(str(tmp_path / "other.png"), random_image(2))

    assert (tmp_path / "fast.png").read_bytes() != (tmp_path / "small.png").read_bytes()
    assert smiles_split.image_digest(tmp_path / "fast.png") == smiles_split.image_digest(tmp_path / "small.png")
    assert smiles_split.image_digest(tmp_path / "fast.png") != smiles_split.image_digest(tmp_path / "other.png")


def test_digest_depends_on_shape():
    pixels = np.arange(24, dtype=np.uint8)

    assert smiles_split.pixel_digest(pixels.reshape(4, 6)) != smiles_split.pixel_digest(pixels.reshape(6, 4))


def test_unreadable_image_named(tmp_path):
    (tmp_path / "broken.jpg").write_bytes(b"not an image")

    with pytest.raises(DataError, match=r"broken\.jpg: cannot decode image"):
        smiles_split.image_digest(tmp_path / "broken.jpg")


def test_genki_crops_deduplicated_by_source(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    cv2.imwrite(str(raw / "a.png"), random_image(1), [cv2.IMWRITE_PNG_COMPRESSION, 0])
    cv2.imwrite(str(raw / "a-copy.png"), random_image(1), [cv2.IMWRITE_PNG_COMPRESSION, 9])
    cv2.imwrite(str(raw / "b.png"), random_image(2))
    cv2.imwrite(str(raw / "b-relabelled.png"), random_image(2))
    cv2.imwrite(str(raw / "c.png"), random_image(3))
    csv_path = write_crops_csv(
        tmp_path,
        [("a", 1, "a.png"), ("a2", 1, "a-copy.png"), ("b", 0, "b.png"), ("b2", 1, "b-relabelled.png"), ("c", 0, "c.png")],
    )

    samples, faces = smiles_split.read_genki_crops(csv_path)
    dedup = smiles_split.deduplicate(smiles_split.add_digests(samples, "genki4k"))

    assert [sample.sample for sample in dedup.kept] == ["a", "c"]
    assert dedup.duplicates_removed == 1
    assert dedup.conflicting_samples_dropped == ["b", "b2"]
    assert faces == {"face_found": 5, "face_not_found": 0, "face_found_rate": 1.0}


@pytest.mark.parametrize(
    ("header", "row", "message"),
    [
        ("sample,path,label,face_found,face_score,source", "s,p.png,yes,1,0.9,p.png", r"crops\.csv line 2: label is 'yes', expected 0 or 1"),
        ("sample,path,label,face_found,face_score,source", "s,p.png,1,2,0.9,p.png", r"crops\.csv line 2: face_found is '2'"),
        ("sample,path,label,face_found,face_score", "s,p.png,1,1,0.9", r"crops\.csv line 1: missing columns source"),
    ],
)
def test_read_genki_crops_rejects_bad_rows(tmp_path, header, row, message):
    (tmp_path / "crops.csv").write_text(f"{header}\n{row}\n")

    with pytest.raises(DataError, match=message):
        smiles_split.read_genki_crops(tmp_path / "crops.csv")


CROPS_COLUMNS = "sample,path,label,face_found,face_score,source"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (f"{CROPS_COLUMNS}\ns,p.png,1,1\n", r"crops\.csv line 2: the row has 4 fields but the header 6; "
                                             r"no value for face_score, source"),
        (f"{CROPS_COLUMNS}\n,p.png,1,1,0.9,p.png\n", r"crops\.csv line 2: sample is '', expected a non-empty"),
        (f"{CROPS_COLUMNS}\ns,,1,1,0.9,p.png\n", r"crops\.csv line 2: path is '', expected a non-empty"),
        (f"{CROPS_COLUMNS}\ns,p.png,1,1,0.9,p\0.png\n", r"crops\.csv line 2: source is 'p\\x00\.png'"),
        (f"{CROPS_COLUMNS}\n\ns,p.png,1,1,0.9,p.png\n\nt,q.png,7,1,0.9,q.png\n",
         r"crops\.csv line 5: label is '7'"),
        (f"{CROPS_COLUMNS}\r\ns,p.png,1,1,0.9,p.png\r\nt,q.png,7,1,0.9,q.png\r\n", r"crops\.csv line 3: label is '7'"),
    ],
)
def test_read_genki_crops_rejects_malformed_rows(tmp_path, content, message):
    (tmp_path / "crops.csv").write_bytes(content.encode("utf-8"))

    with pytest.raises(DataError, match=message):
        smiles_split.read_genki_crops(tmp_path / "crops.csv")


def test_read_genki_crops_rejects_non_utf8(tmp_path):
    (tmp_path / "crops.csv").write_bytes(f"{CROPS_COLUMNS}\n\xe9,p.png,1,1,0.9,p.png\n".encode("latin-1"))

    with pytest.raises(DataError, match=r"crops\.csv: not UTF-8 text"):
        smiles_split.read_genki_crops(tmp_path / "crops.csv")


def test_read_genki_crops_rejects_repeated_sample(tmp_path):
    (tmp_path / "crops.csv").write_text(
        "sample,path,label,face_found,face_score,source\ns,p.png,1,1,0.9,p.png\ns,q.png,0,1,0.9,q.png\n"
    )

    with pytest.raises(DataError, match=r"crops\.csv line 3: sample 's' already on line 2"):
        smiles_split.read_genki_crops(tmp_path / "crops.csv")


# --- subsampling and folds ---------------------------------------------------------------


def test_select_spread_keeps_both_classes():
    labels = [0] * 90 + [1] * 10

    chosen = smiles_split.select_spread(labels, 20, min_per_class=5)
    chosen_labels = [labels[index] for index in chosen]

    assert len(chosen) == 20
    assert chosen == sorted(set(chosen))
    assert chosen_labels.count(1) == 5
    assert chosen[0] == 0
    assert chosen[-1] == 99


def test_select_spread_proportional_and_all():
    labels = [0, 1] * 50

    assert [labels[i] for i in smiles_split.select_spread(labels, 40, min_per_class=2)].count(1) == 20
    assert smiles_split.select_spread(labels, None, min_per_class=2) == list(range(100))
    assert smiles_split.select_spread(labels, 500, min_per_class=2) == list(range(100))


def test_select_spread_too_few_for_folds():
    with pytest.raises(ParamsError, match=r"smiles\.max_samples is 10, but 2 classes need at least 6 samples each"):
        smiles_split.select_spread([0] * 50 + [1] * 50, 10, min_per_class=6)


def test_assign_folds_needs_samples_per_class():
    with pytest.raises(DataError, match=r"crops\.csv: class counts \{0: 8, 1: 2\} after deduplication"):
        smiles_split.assign_folds([0] * 8 + [1] * 2, 3, 0, "crops.csv")


def test_assign_folds_stratified_and_seeded():
    labels = [0] * 60 + [1] * 30

    folds = smiles_split.assign_folds(labels, 3, 7, "x")

    assert folds == smiles_split.assign_folds(labels, 3, 7, "x")
    for fold in range(3):
        assert [label for label, f in zip(labels, folds) if f == fold].count(1) == 10


def test_split_dataset_max_samples(smiles_samples):
    params = dict(SPLIT_PARAMS, max_samples=40, folds=2)

    kept, folds, summary = smiles_split.split_dataset(smiles_samples, params, "smilesmiled", "smilesmiled")

    assert len(kept) == 40
    assert summary["class_counts"]["1"] >= 2
    assert summary["class_counts"]["0"] >= 2
    assert sorted(set(folds)) == [0, 1]


# --- command line ------------------------------------------------------------------------


def test_main_writes_splits_and_summary(tmp_path):
    crops = tmp_path / "smiles" / "genki4k-crops"
    (crops / "raw").mkdir(parents=True)
    entries = []
    for index in range(12):
        cv2.imwrite(str(crops / "raw" / f"file{index:04d}.png"), random_image(index))
        entries.append((f"file{index:04d}", index % 2, f"file{index:04d}.png"))
    cv2.imwrite(str(crops / "raw" / "copy.png"), random_image(0))
    entries.append(("copy", 0, "copy.png"))
    csv_path = write_crops_csv(crops, entries)
    smiles_raw = tmp_path / "raw" / "smilesmiled"
    for folder, offset in (("positives7", 100), ("negatives7", 200)):
        (smiles_raw / folder).mkdir(parents=True)
        for index in range(6):
            cv2.imwrite(str(smiles_raw / folder / f"{index}.jpg"), random_image(offset + index, (64, 64)))
    out = tmp_path / "smiles" / "splits"
    summary_path = tmp_path / "reports" / "smiles_data.json"

    status = smiles_split.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "smoke", "--genki4k", str(csv_path),
         "--smilesmiled", str(smiles_raw), "--out", str(out), "--summary", str(summary_path)]
    )
    summary = json.loads(summary_path.read_text())
    genki_rows = list(csv.DictReader((out / "genki4k" / "samples.csv").open()))
    smiles_rows = list(csv.DictReader((out / "smilesmiled" / "samples.csv").open()))

    assert status == 0
    assert sorted(entry.name for entry in out.iterdir()) == ["genki4k", "smilesmiled"]
    assert list(genki_rows[0]) == [*smiles_split.SAMPLES_HEADER, "face_found", "face_score"]
    assert list(smiles_rows[0]) == smiles_split.SAMPLES_HEADER
    assert len(genki_rows) == 12
    assert len(smiles_rows) == 12
    assert all((out / "genki4k" / row["path"]).is_file() for row in genki_rows)
    assert all((out / "smilesmiled" / row["path"]).is_file() for row in smiles_rows)
    assert summary["genki4k"]["duplicates_removed"] == 1
    assert summary["genki4k"]["face_found_rate"] == 1.0
    assert "no identity labels" in summary["smilesmiled"]["note"]
