"""Tests of stages.smiles_download: content digests, layout normalization, labels.txt checks and the command line.

The real datasets come from the mirror named by EMOTIVELENS_MIRROR when it is set, and
otherwise from the GitHub archives in params.yaml, through the stage's own code. Tampered and
GitHub-style archives are rebuilt from those real files.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest

from stages import smiles_download
from stages.download import CHECKSUMS_NAME, resolve_mirror_root
from stages.errors import ChecksumError, DataError, UnsafeArchiveError
from stages.params import PROJECT_ROOT, load_params

GENKI = smiles_download.DATASETS["genki4k"]
SMILES = smiles_download.DATASETS["smilesmiled"]
GENKI_TOP = "expression_detect-be7c71721ad891b743aa7cd61378fcf572589166"
SMILES_TOP = "SMILEsmileD-6afac66f50061948eed7da5a351cecd9c4a99fe3"


def download_params() -> dict:
    return load_params(PROJECT_ROOT / "params.yaml", "default")["smiles_download"]


@pytest.fixture(scope="module")
def genki_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("genki") / "genki4k"
    smiles_download.fetch_dataset(GENKI, download_params(), resolve_mirror_root(None, os.environ), out)
    return out


@pytest.fixture(scope="module")
def smiles_raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smiles") / "smilesmiled"
    smiles_download.fetch_dataset(SMILES, download_params(), resolve_mirror_root(None, os.environ), out)
    return out


def add_bytes(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data))


def add_link(tar: tarfile.TarFile, name: str, target: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.SYMTYPE
    info.linkname = target
    tar.addfile(info)


def pack(path: Path, members: dict[str, Path | bytes], mode: str = "w") -> Path:
    """Write a tar with each member taken from a file or given as bytes; ``mode`` "w:gz" compresses it."""
    options = {"compresslevel": 1} if mode == "w:gz" else {}
    with tarfile.open(path, mode, **options) as tar:
        for name, source in members.items():
            if isinstance(source, Path):
                tar.add(source, arcname=name)
            else:
                add_bytes(tar, name, source)
    return path


def genki_members(raw: Path, prefix: str) -> dict[str, Path | bytes]:
    members: dict[str, Path | bytes] = {f"{prefix}genki4k/labels.txt": raw / "labels.txt"}
    for image in sorted((raw / "files").iterdir()):
        members[f"{prefix}genki4k/files/{image.name}"] = image
    return members


def smiles_members(raw: Path, prefix: str) -> dict[str, Path | bytes]:
    members: dict[str, Path | bytes] = {}
    for folder, parent in (("positives7", "positives"), ("negatives7", "negatives")):
        for image in sorted((raw / folder).iterdir()):
            members[f"{prefix}SMILEs/{parent}/{folder}/{image.name}"] = image
    return members


def make_mirror(root: Path, spec: smiles_download.DatasetSpec, members: dict[str, Path | bytes]) -> Path:
    """Create ``root/<mirror folder>/<archive>`` and a SHA256SUMS that matches it."""
    folder = root / spec.mirror_folder
    folder.mkdir(parents=True)
    archive = pack(folder / spec.mirror_archive, members)
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    (folder / CHECKSUMS_NAME).write_text(f"{digest}  {spec.mirror_archive}\n")
    return root


class FileServer:
    """A local HTTP server for the files of one folder."""

    def __init__(self, folder: Path):
        handler = functools.partial(QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/{name}"

    def __enter__(self) -> FileServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


# --- real data ---------------------------------------------------------------------------


def test_genki_layout_and_digest(genki_raw):
    images = sorted(path.name for path in (genki_raw / "files").iterdir())
    listing = (genki_raw / CHECKSUMS_NAME).read_text()

    assert sorted(path.name for path in genki_raw.iterdir()) == [CHECKSUMS_NAME, "files", "labels.txt"]
    assert images == [f"file{number:04d}.jpg" for number in range(1, 4001)]
    assert len(smiles_download.parse_genki_labels((genki_raw / "labels.txt").read_text(), "labels.txt")) == 4000
    assert hashlib.sha256(listing.encode()).hexdigest() == smiles_download.GENKI4K_CONTENT_SHA256


def test_genki_labels_end_with_newline(genki_raw):
    text = (genki_raw / "labels.txt").read_text()

    assert text.endswith("\n")
    assert not text.endswith("\n\n")


def test_smilesmiled_layout_and_digest(smiles_raw):
    listing = (smiles_raw / CHECKSUMS_NAME).read_text()

    assert sorted(path.name for path in smiles_raw.iterdir()) == [CHECKSUMS_NAME, "negatives7", "positives7"]
    assert len(list((smiles_raw / "positives7").glob("*.jpg"))) == 3690
    assert len(list((smiles_raw / "negatives7").glob("*.jpg"))) == 9475
    assert hashlib.sha256(listing.encode()).hexdigest() == smiles_download.SMILESMILED_CONTENT_SHA256


def test_tampered_mirror_fails_content_digest(tmp_path, genki_raw):
    members = genki_members(genki_raw, "")
    members["genki4k/files/file0001.jpg"] = (genki_raw / "files" / "file0002.jpg").read_bytes()
    mirror = make_mirror(tmp_path / "mirror", GENKI, members)
    out = tmp_path / "genki4k"

    with pytest.raises(ChecksumError, match=r"GENKI-4K\.tar: content digest of the genki4k files is [0-9a-f]{64}"):
        smiles_download.fetch_dataset(GENKI, download_params(), mirror, out)
    assert not out.exists()


def test_mirror_with_missing_image_fails_count(tmp_path, genki_raw):
    members = genki_members(genki_raw, "")
    del members["genki4k/files/file4000.jpg"]
    mirror = make_mirror(tmp_path / "mirror", GENKI, members)

    with pytest.raises(DataError, match=r"wrong genki4k file counts \(files: 3999 files, expected 4000\)"):
        smiles_download.fetch_dataset(GENKI, download_params(), mirror, tmp_path / "genki4k")


def test_renamed_image_fails_name_check(tmp_path, genki_raw):
    members = genki_members(genki_raw, "")
    members["genki4k/files/file4001.jpg"] = members.pop("genki4k/files/file4000.jpg")

    digests = smiles_download.extract_dataset(pack(tmp_path / "renamed.tar", members), GENKI, tmp_path)
    with pytest.raises(DataError, match=r"1 images missing, the first is files/file4000\.jpg"):
        smiles_download.verify_content(digests, GENKI, "renamed.tar")


def test_github_archive_downloaded_and_normalized(tmp_path, genki_raw):
    members = genki_members(genki_raw, f"{GENKI_TOP}/")
    # The repository's last commit dropped the final newline of labels.txt.
    members[f"{GENKI_TOP}/genki4k/labels.txt"] = (genki_raw / "labels.txt").read_bytes().rstrip(b"\n")
    members[f"{GENKI_TOP}/README.md"] = b"# expression_detect\n"
    members[f"{GENKI_TOP}/genki4k/README"] = b"GENKI 4K\n"
    served = tmp_path / "served"
    served.mkdir()
    pack(served / "genki.tar.gz", members, "w:gz")
    out = tmp_path / "genki4k"

    with FileServer(served) as server:
        params = dict(download_params(), genki4k_url=server.url("genki.tar.gz"))
        smiles_download.fetch_dataset(GENKI, params, None, out)

    assert sorted(path.name for path in out.iterdir()) == [CHECKSUMS_NAME, "files", "labels.txt"]
    assert (out / "labels.txt").read_bytes() == (genki_raw / "labels.txt").read_bytes()
    assert (out / CHECKSUMS_NAME).read_text() == (genki_raw / CHECKSUMS_NAME).read_text()


def test_github_archive_smilesmiled_normalized(tmp_path, smiles_raw):
    members = smiles_members(smiles_raw, f"{SMILES_TOP}/")
    members[f"{SMILES_TOP}/README"] = b"SMILEsmileD - smile detector open source project v0.5\n"
    members[f"{SMILES_TOP}/SMILEs/positives/smiles_01_pos.idx"] = b"positives7/1.jpg 1 0 0 64 64\n"
    members[f"{SMILES_TOP}/smileD/smiled_01.xml"] = b"<opencv_storage/>\n"
    archive = pack(tmp_path / "smiles.tar.gz", members, "w:gz")
    out = tmp_path / "smilesmiled"
    out.mkdir()

    digests = smiles_download.extract_dataset(archive, SMILES, out)

    assert sorted(path.name for path in out.iterdir()) == ["negatives7", "positives7"]
    assert smiles_download.verify_content(digests, SMILES, str(archive)) == smiles_download.SMILESMILED_CONTENT_SHA256


# --- archive members ---------------------------------------------------------------------


def test_output_path_of_members():
    assert smiles_download.output_path("genki4k/files/file0001.jpg", GENKI) == "files/file0001.jpg"
    assert smiles_download.output_path(f"{GENKI_TOP}/genki4k/labels.txt", GENKI) == "labels.txt"
    assert smiles_download.output_path("a/b/genki4k/labels.txt", GENKI) is None
    assert smiles_download.output_path("genki4k/README", GENKI) is None
    assert smiles_download.output_path("SMILEs/positives/positives7/5.jpg", SMILES) == "positives7/5.jpg"
    assert smiles_download.output_path("SMILEs/positives/negatives7/5.jpg", SMILES) is None
    assert smiles_download.output_path("SMILEs/negatives/negatives7/negatives.zip", SMILES) is None


def test_kept_symlink_member_rejected(tmp_path):
    archive = tmp_path / "links.tar"
    with tarfile.open(archive, "w") as tar:
        add_link(tar, "top/SMILEs/positives/positives7/1.jpg", "/etc/passwd")
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(UnsafeArchiveError, match=r"member 'top/SMILEs/positives/positives7/1\.jpg' is a symbolic link"):
        smiles_download.extract_dataset(archive, SMILES, out)
    assert list(out.iterdir()) == []


def test_kept_folder_member_rejected(tmp_path):
    archive = tmp_path / "folder.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("genki4k/labels.txt")
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(UnsafeArchiveError, match=r"member 'genki4k/labels\.txt' is a folder where a data file"):
        smiles_download.extract_dataset(archive, GENKI, out)


def test_members_not_kept_are_not_extracted(tmp_path):
    archive = tmp_path / "mixed.tar"
    with tarfile.open(archive, "w") as tar:
        add_link(tar, "top/docs/link", "/etc/passwd")
        add_bytes(tar, "../outside.txt", b"never written")
        add_bytes(tar, "top/SMILEs/negatives/negatives7/7.jpg", b"jpeg bytes")
    out = tmp_path / "out"
    out.mkdir()

    digests = smiles_download.extract_dataset(archive, SMILES, out)

    assert digests == {"negatives7/7.jpg": hashlib.sha256(b"jpeg bytes").hexdigest()}
    assert not (tmp_path / "outside.txt").exists()


def test_two_members_with_one_output_rejected(tmp_path):
    archive = pack(
        tmp_path / "twice.tar",
        {"SMILEs/positives/positives7/1.jpg": b"a", "top/SMILEs/positives/positives7/1.jpg": b"b"},
    )
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(DataError, match=r"both map to positives7/1\.jpg"):
        smiles_download.extract_dataset(archive, SMILES, out)


def test_content_digest_is_digest_of_listing():
    digests = {"b.jpg": "1" * 64, "a/c.jpg": "2" * 64}
    listing = f"{'2' * 64}  a/c.jpg\n{'1' * 64}  b.jpg\n"

    assert smiles_download.sha256sums_text(digests) == listing
    assert smiles_download.content_digest(digests) == hashlib.sha256(listing.encode()).hexdigest()


# --- labels.txt --------------------------------------------------------------------------


def test_parse_genki_labels_fields():
    labels = smiles_download.parse_genki_labels("1 -0.02 0.05 -0.04\n0 0.1 0.2 0.3\n\n", "labels.txt", 2)

    assert [label.smile for label in labels] == [1, 0]
    assert labels[0].yaw == pytest.approx(-0.02)
    assert labels[1].roll == pytest.approx(0.3)
    assert labels[1].image_name == "file0002.jpg"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 0 0 0\n", r"labels\.txt: 1 label rows, expected 2 \(row N labels file0001\.jpg \.\. file0002\.jpg\)"),
        ("1 0 0 0\n1 0 0 0\n1 0 0 0\n", r"labels\.txt: 3 label rows, expected 2"),
        ("1 0 0 0\nx 0 0 0\n", r"labels\.txt line 2: smile label is 'x', expected 0 \(not smiling\) or 1"),
        ("2 0 0 0\n1 0 0 0\n", r"labels\.txt line 1: smile label is '2', expected 0"),
        ("1 0 0 0\n0 0 abc 0\n", r"labels\.txt line 2: pitch is 'abc', expected a number in radians"),
        ("1 0 0 nan\n0 0 0 0\n", r"labels\.txt line 1: roll is 'nan', expected a finite number"),
        ("1 0 0\n0 0 0 0\n", r"labels\.txt line 1: expected 4 fields smile yaw pitch roll, found 3"),
        ("1 0 0 0\n\n0 0 0 0\n", r"labels\.txt line 2: expected 4 fields smile yaw pitch roll, found 0"),
    ],
)
def test_parse_genki_labels_rejects_bad_rows(text, message):
    with pytest.raises(DataError, match=message):
        smiles_download.parse_genki_labels(text, "labels.txt", expected_rows=2)


def test_archive_with_bad_label_names_member_and_line(tmp_path, genki_raw):
    rows = (genki_raw / "labels.txt").read_text().splitlines()
    rows[9] = "yes " + rows[9].split(" ", 1)[1]
    archive = pack(tmp_path / "bad.tar", {"genki4k/labels.txt": ("\n".join(rows) + "\n").encode()})
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(DataError, match=r"member genki4k/labels\.txt line 10: smile label is 'yes'"):
        smiles_download.extract_dataset(archive, GENKI, out)


# --- command line ------------------------------------------------------------------------


def test_main_reports_missing_mirror_archive(tmp_path, capsys):
    (tmp_path / "mirror").mkdir()

    status = smiles_download.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "smoke", "--dataset", "smilesmiled",
         "--out", str(tmp_path / "out"), "--mirror", str(tmp_path / "mirror")]
    )

    assert status == 1
    assert "smilesmiled/SMILEsmileD.tar: file not found in the mirror" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_main_writes_dataset(tmp_path, genki_raw):
    mirror = make_mirror(tmp_path / "mirror", GENKI, genki_members(genki_raw, ""))
    out = tmp_path / "data" / "raw" / "genki4k"

    status = smiles_download.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--profile", "smoke", "--dataset", "genki4k",
         "--out", str(out), "--mirror", str(mirror)]
    )

    assert status == 0
    assert (out / CHECKSUMS_NAME).read_text() == (genki_raw / CHECKSUMS_NAME).read_text()
    assert [entry.name for entry in out.parent.iterdir()] == ["genki4k"]


def test_main_reports_non_utf8_checksums(tmp_path, capsys):
    dataset = tmp_path / "mirror" / "genki-4k"
    dataset.mkdir(parents=True)
    (dataset / "GENKI-4K.tar").write_bytes(b"x")
    (dataset / "SHA256SUMS").write_bytes(b"\xe9\xff  GENKI-4K.tar\n")

    status = smiles_download.main(
        ["--params", str(PROJECT_ROOT / "params.yaml"), "--dataset", "genki4k", "--out", str(tmp_path / "out"),
         "--mirror", str(tmp_path / "mirror")]
    )

    error = capsys.readouterr().err
    assert status == 1
    assert f"{dataset / 'SHA256SUMS'}: not UTF-8 text" in error
    assert "Traceback" not in error


def test_unreadable_archive_error_is_one_line(tmp_path):
    archive = tmp_path / "garbage.tar"
    archive.write_bytes(b"garbage" * 100)
    out = tmp_path / "out"
    out.mkdir()

    with pytest.raises(DataError, match=r"garbage\.tar: not a readable tar archive: .*method gz") as raised:
        smiles_download.extract_dataset(archive, GENKI, out)
    assert "\n" not in str(raised.value)
