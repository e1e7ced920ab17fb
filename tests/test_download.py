"""Tests of stages.download: checksums, safe extraction, downloads and the command line."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import tarfile
import threading
from pathlib import Path

import pytest
import requests
import yaml

from stages import download
from stages.errors import ChecksumError, DataError, DownloadError, UnsafeArchiveError
from stages.params import PROJECT_ROOT

TINY_FILES = {
    "ImageData.mat": b"not a real MATLAB file; the download stage does not parse it",
    "README": b"Frontal face dataset.\n",
    "image_0001.jpg": b"\xff\xd8 fake JPEG bytes",
}
# The mirror lacks images 399 to 403; an official download has all 450.
MIRROR_IMAGES = 445
OFFICIAL_IMAGES = 450


def add_member(
    tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = ""
) -> None:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def make_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w") as tar:
        for name, data in files.items():
            add_member(tar, name, data)
    return path


def make_mirror(root: Path, archive_files: dict[str, bytes], listed_digest: str | None = None) -> Path:
    """Create ``root/caltech-faces-1999/{faces.tar,SHA256SUMS}``; the listed digest defaults to the true one."""
    dataset_dir = root / download.DATASET_NAME
    dataset_dir.mkdir(parents=True)
    archive = make_tar(dataset_dir / download.ARCHIVE_NAME, archive_files)
    digest = listed_digest or hashlib.sha256(archive.read_bytes()).hexdigest()
    (dataset_dir / download.CHECKSUMS_NAME).write_text(f"{digest}  {download.ARCHIVE_NAME}\n")
    return root


def project_params() -> dict:
    return yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())


def write_params(path: Path, **download_overrides: object) -> Path:
    params = project_params()
    params["download"].update(download_overrides)
    path.write_text(yaml.safe_dump(params))
    return path


def leftovers(folder: Path) -> list[str]:
    """Return hidden staging or scratch entries that a stage left behind in ``folder``."""
    return sorted(entry.name for entry in folder.iterdir() if entry.name.startswith("."))


# --- checksums ---------------------------------------------------------------------------


def test_parse_sha256sums_text_and_binary_mode():
    text = f"{'a' * 64}  faces.tar\n{'B' * 64} *other.bin\n\n"

    digests = download.parse_sha256sums(text, "SHA256SUMS")

    assert digests == {"faces.tar": "a" * 64, "other.bin": "b" * 64}


def test_parse_sha256sums_malformed_line():
    with pytest.raises(DataError, match=r"SHA256SUMS line 2: expected '<sha256>  <file name>', got 'abc faces.tar'"):
        download.parse_sha256sums(f"{'a' * 64}  x\nabc faces.tar\n", "SHA256SUMS")


def test_resolve_mirror_root_order(tmp_path):
    assert download.resolve_mirror_root(tmp_path, {download.MIRROR_ENV: "/elsewhere"}) == tmp_path
    assert download.resolve_mirror_root(None, {download.MIRROR_ENV: "/elsewhere"}) == Path("/elsewhere")
    assert download.resolve_mirror_root(None, {download.MIRROR_ENV: ""}) is None
    assert download.resolve_mirror_root(None, {}) is None


# --- mirror ------------------------------------------------------------------------------


def test_mirror_archive_extracted(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES)
    out = tmp_path / "data" / "raw" / "caltech-faces-1999"

    names = download.fetch_and_extract(project_params()["download"], mirror, out)

    assert sorted(names) == sorted(TINY_FILES)
    for name, data in TINY_FILES.items():
        assert (out / name).read_bytes() == data
    assert leftovers(out.parent) == []


def test_mirror_checksum_mismatch_names_both_hashes(tmp_path):
    wrong = "0" * 64
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES, listed_digest=wrong)
    actual = hashlib.sha256((mirror / download.DATASET_NAME / download.ARCHIVE_NAME).read_bytes()).hexdigest()
    out = tmp_path / "out"

    with pytest.raises(ChecksumError, match=rf"faces\.tar: sha256 is {actual}, but .*SHA256SUMS expects {wrong}"):
        download.fetch_and_extract(project_params()["download"], mirror, out)
    assert not out.exists()
    assert leftovers(tmp_path) == []


def test_mirror_checksums_not_utf8(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES)
    (mirror / download.DATASET_NAME / "SHA256SUMS").write_bytes(b"\xff\xfe not text")

    with pytest.raises(ChecksumError, match=r"SHA256SUMS: not UTF-8 text"):
        download.fetch_and_extract(project_params()["download"], mirror, tmp_path / "out")


def test_mirror_archive_not_listed(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES)
    (mirror / download.DATASET_NAME / download.CHECKSUMS_NAME).write_text(f"{'a' * 64}  other.tar\n")

    with pytest.raises(ChecksumError, match=r"no checksum listed for faces\.tar \(it lists other\.tar\)"):
        download.fetch_and_extract(project_params()["download"], mirror, tmp_path / "out")


def test_mirror_without_archive(tmp_path):
    (tmp_path / "mirror").mkdir()

    with pytest.raises(DataError, match=r"caltech-faces-1999/faces\.tar: file not found in the mirror"):
        download.fetch_and_extract(project_params()["download"], tmp_path / "mirror", tmp_path / "out")


# --- safe extraction ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "link", "message"),
    [
        ("../evil", tarfile.REGTYPE, "", r"member '\.\./evil' contains '\.\.'"),
        ("images/../../evil", tarfile.REGTYPE, "", r"member 'images/\.\./\.\./evil' contains '\.\.'"),
        ("/tmp/evil", tarfile.REGTYPE, "", r"member '/tmp/evil' has an absolute path"),
        ("evil_link", tarfile.SYMTYPE, "/etc/passwd", r"member 'evil_link' is a symbolic link to '/etc/passwd'"),
        ("evil_hardlink", tarfile.LNKTYPE, "README", r"member 'evil_hardlink' is a hard link to 'README'"),
        ("evil_device", tarfile.CHRTYPE, "", r"member 'evil_device' is a device file"),
        ("evil_fifo", tarfile.FIFOTYPE, "", r"member 'evil_fifo' is a FIFO"),
    ],
)
def test_extract_rejects_unsafe_member(tmp_path, name, kind, link, message):
    archive = tmp_path / "evil.tar"
    with tarfile.open(archive, "w") as tar:
        add_member(tar, "README", b"harmless first member")
        add_member(tar, name, b"payload", kind=kind, link=link)
    target = tmp_path / "sandbox" / "target"
    target.mkdir(parents=True)

    with pytest.raises(UnsafeArchiveError, match=message):
        download.extract_archive(archive, target)
    assert list(target.iterdir()) == [], "nothing is extracted from an unsafe archive"
    assert sorted(path.name for path in (tmp_path / "sandbox").iterdir()) == ["target"]


def test_extract_rejects_non_tar_file(tmp_path):
    archive = tmp_path / "faces.tar"
    archive.write_bytes(b"this is not a tar archive" * 40)

    with pytest.raises(DataError, match=r"faces\.tar: not a readable tar archive"):
        download.extract_archive(archive, tmp_path)


def test_mirror_with_unsafe_member_keeps_existing_out(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", {**TINY_FILES, "../evil": b"payload"})
    out = tmp_path / "data" / "caltech-faces-1999"
    out.mkdir(parents=True)
    (out / "ImageData.mat").write_bytes(b"previous good output")

    with pytest.raises(UnsafeArchiveError, match=r"member '\.\./evil' contains '\.\.'; nothing was extracted"):
        download.fetch_and_extract(project_params()["download"], mirror, out)
    assert (out / "ImageData.mat").read_bytes() == b"previous good output"
    assert not (tmp_path / "data" / "evil").exists()
    assert leftovers(out.parent) == []


def test_archive_without_annotation_file(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", {"README": b"x", "image_0001.jpg": b"y"})

    with pytest.raises(DataError, match=r"ImageData\.mat not found at the archive root"):
        download.fetch_and_extract(project_params()["download"], mirror, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_existing_out_replaced(tmp_path):
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES)
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("from an earlier run")

    download.fetch_and_extract(project_params()["download"], mirror, out)

    assert sorted(path.name for path in out.iterdir()) == sorted(TINY_FILES)
    assert leftovers(tmp_path) == []


# --- download from a local HTTP server ---------------------------------------------------


class ArchiveServer:
    """A local HTTP server that returns ``failures`` error statuses, then the archive bytes."""

    def __init__(self, body: bytes, failures: int = 0, failure_status: int = 503):
        self.body = body
        self.failures = failures
        self.failure_status = failure_status
        self.requests = 0
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                server.requests += 1
                if server.requests <= server.failures:
                    self.send_error(server.failure_status)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(server.body)))
                self.end_headers()
                self.wfile.write(server.body)

            def log_message(self, *args):
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/faces.tar?download=1"

    def __enter__(self) -> ArchiveServer:
        self.thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join()


@pytest.fixture
def tiny_tar_bytes(tmp_path) -> bytes:
    return make_tar(tmp_path / "source.tar", TINY_FILES).read_bytes()


def test_download_retries_transient_status(tmp_path, tiny_tar_bytes):
    delays = []
    destination = tmp_path / "faces.tar"

    with ArchiveServer(tiny_tar_bytes, failures=2) as server:
        download.download_file(server.url, destination, retries=3, timeout_s=5, sleep=delays.append)

    assert server.requests == 3
    assert delays == [download.BACKOFF_BASE_S, 2 * download.BACKOFF_BASE_S]
    assert destination.read_bytes() == tiny_tar_bytes


def test_download_gives_up_after_retries(tmp_path, tiny_tar_bytes):
    delays = []

    with ArchiveServer(tiny_tar_bytes, failures=5) as server:
        with pytest.raises(DownloadError, match=r"download failed after 2 attempts; last error: 503"):
            download.download_file(server.url, tmp_path / "faces.tar", retries=2, timeout_s=5, sleep=delays.append)

    assert server.requests == 2
    assert delays == [download.BACKOFF_BASE_S]


def test_download_not_found_fails_at_once(tmp_path, tiny_tar_bytes):
    with ArchiveServer(tiny_tar_bytes, failures=5, failure_status=404) as server:
        with pytest.raises(DownloadError, match=r"download failed with HTTP status 404"):
            download.download_file(server.url, tmp_path / "faces.tar", retries=3, timeout_s=5, sleep=lambda _: None)

    assert server.requests == 1


def test_download_connection_refused(tmp_path):
    with ArchiveServer(b"") as server:
        url = server.url
    # The server is shut down, so nothing listens on the port any more.
    with pytest.raises(DownloadError, match=r"download failed after 2 attempts"):
        download.download_file(url, tmp_path / "faces.tar", retries=2, timeout_s=5, sleep=lambda _: None)


def test_download_verifies_md5(tmp_path, tiny_tar_bytes):
    md5 = hashlib.md5(tiny_tar_bytes).hexdigest()
    out = tmp_path / "out"

    with ArchiveServer(tiny_tar_bytes) as server:
        params = {**project_params()["download"], "url": server.url, "md5": md5}
        names = download.fetch_and_extract(params, None, out)

    assert sorted(names) == sorted(TINY_FILES)
    assert leftovers(tmp_path) == []


def test_download_md5_mismatch(tmp_path, tiny_tar_bytes):
    wrong = "0" * 32
    actual = hashlib.md5(tiny_tar_bytes).hexdigest()

    with ArchiveServer(tiny_tar_bytes) as server:
        params = {**project_params()["download"], "url": server.url, "md5": wrong}
        with pytest.raises(ChecksumError, match=rf"md5 is {actual}, but download\.md5 in the parameter file expects {wrong}"):
            download.fetch_and_extract(params, None, tmp_path / "out")

    assert not (tmp_path / "out").exists()
    assert leftovers(tmp_path) == []


# --- command line ------------------------------------------------------------------------


def test_main_with_mirror_option(tmp_path, monkeypatch):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES)
    out = tmp_path / "data" / "raw" / "caltech-faces-1999"

    status = download.main(["--params", str(PROJECT_ROOT / "params.yaml"), "--out", str(out), "--mirror", str(mirror)])

    assert status == 0
    assert (out / "ImageData.mat").is_file()


def test_main_downloads_without_mirror(tmp_path, monkeypatch, tiny_tar_bytes):
    monkeypatch.delenv(download.MIRROR_ENV, raising=False)
    out = tmp_path / "out"

    with ArchiveServer(tiny_tar_bytes) as server:
        params = write_params(tmp_path / "params.yaml", url=server.url, md5=hashlib.md5(tiny_tar_bytes).hexdigest())
        status = download.main(["--params", str(params), "--out", str(out)])

    assert status == 0
    assert server.requests == 1
    assert (out / "README").read_bytes() == TINY_FILES["README"]


def test_main_reports_known_error_on_one_line(tmp_path, monkeypatch, capsys):
    mirror = make_mirror(tmp_path / "mirror", TINY_FILES, listed_digest="f" * 64)
    monkeypatch.setenv(download.MIRROR_ENV, str(mirror))

    status = download.main(["--params", str(PROJECT_ROOT / "params.yaml"), "--out", str(tmp_path / "out")])

    stderr_lines = capsys.readouterr().err.strip().splitlines()
    assert status == 1
    assert stderr_lines[-1].startswith("python -m stages.download: error: ")
    assert "expects " + "f" * 64 in stderr_lines[-1]


# --- real data ---------------------------------------------------------------------------


def test_real_archive_extracted(caltech_raw_dir):
    images = sorted(path.name for path in caltech_raw_dir.glob("image_*.jpg"))
    expected = MIRROR_IMAGES if os.environ.get(download.MIRROR_ENV) else OFFICIAL_IMAGES

    assert len(images) == expected
    assert (caltech_raw_dir / "ImageData.mat").stat().st_size > 0
    assert (caltech_raw_dir / "README").is_file()
    assert images[0] == "image_0001.jpg"
    assert images[-1] == "image_0450.jpg"
