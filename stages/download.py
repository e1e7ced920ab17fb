"""Stage download: fetch the Caltech Faces 1999 archive, verify its checksum and extract it.

The archive comes from one of two places:

- a mirror, given by ``--mirror DIR`` or the environment variable ``EMOTIVELENS_MIRROR``:
  ``DIR/caltech-faces-1999/faces.tar``, checked against the SHA-256 that
  ``DIR/caltech-faces-1999/SHA256SUMS`` (``sha256sum`` format) lists for it;
- otherwise ``download.url``, fetched into a temporary file and checked against ``download.md5``.

Each archive member is checked before anything is extracted, and the whole archive is
rejected if one member is unsafe. The members are extracted into a staging folder next to
``--out``, which then replaces ``--out``. The stage always verifies and extracts again, even
when ``--out`` already contains the data, because DVC removes the outputs before it runs a stage.
For a ``dataset.format`` other than caltech it only leaves ``--out`` as an empty folder.

Command line::

    python -m stages.download --params params.yaml [--profile P] \\
        --out data/raw/caltech-faces-1999 [--mirror DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import os
import re
import sys
import tarfile
import tempfile
import time
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Mapping

import requests
from tqdm import tqdm

from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.errors import ChecksumError, DataError, DownloadError, UnsafeArchiveError
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

DATASET_NAME = "caltech-faces-1999"
# The dataset.format value whose images this stage downloads.
DATASET_FORMAT = "caltech"
ARCHIVE_NAME = "faces.tar"
CHECKSUMS_NAME = "SHA256SUMS"
MIRROR_ENV = "EMOTIVELENS_MIRROR"
ANNOTATION_FILE = "ImageData.mat"

CHUNK_BYTES = 1 << 20
# Waits between download attempts grow as 2 s, 4 s, 8 s, ...
BACKOFF_BASE_S = 2.0
# HTTP statuses worth another attempt: request timeout, rate limit and server-side errors.
TRANSIENT_HTTP_STATUSES = frozenset({408, 429, 500, 502, 503, 504})

# One line of `sha256sum` output: the digest, a space, then ' ' (text mode) or '*' (binary mode)
# and the file name.
SHA256SUMS_LINE = re.compile(r"(?P<digest>[0-9a-fA-F]{64}) [ *](?P<name>.+)")
WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


def resolve_mirror_root(option: Path | None, environ: Mapping[str, str]) -> Path | None:
    """Return the mirror root from ``--mirror``, else from ``EMOTIVELENS_MIRROR``, else None.

    An empty environment variable counts as unset.
    """
    if option is not None:
        return Path(option)
    value = environ.get(MIRROR_ENV, "")
    return Path(value) if value else None


def file_digest(path: Path, algorithm: str) -> str:
    """Return the hex digest of the file at ``path`` for a ``hashlib`` algorithm name."""
    digest = hashlib.new(algorithm)
    size = path.stat().st_size
    with path.open("rb") as handle, tqdm(
        total=size, unit="B", unit_scale=True, unit_divisor=1024, desc=f"{algorithm} {path.name}", leave=False
    ) as bar:
        for chunk in iter(lambda: handle.read(CHUNK_BYTES), b""):
            digest.update(chunk)
            bar.update(len(chunk))
    return digest.hexdigest()


def verify_checksum(path: Path, algorithm: str, expected: str, expected_source: str) -> None:
    """Raise ChecksumError unless the ``algorithm`` digest of ``path`` equals ``expected``.

    ``expected_source`` names where the expected digest comes from, for the error message.
    """
    actual = file_digest(path, algorithm)
    if actual != expected.lower():
        raise ChecksumError(
            f"{path}: {algorithm} is {actual}, but {expected_source} expects {expected}; "
            "the file is corrupt or a different version of the archive"
        )
    logger.info("%s: %s %s matches %s", path, algorithm, actual, expected_source)


def parse_sha256sums(text: str, source: str) -> dict[str, str]:
    """Parse ``sha256sum`` output into a mapping of file name to lowercase hex digest.

    Blank lines are skipped. A malformed line raises DataError naming ``source`` and the line.
    """
    digests = {}
    for line_number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        match = SHA256SUMS_LINE.fullmatch(line)
        if match is None:
            raise DataError(f"{source} line {line_number}: expected '<sha256>  <file name>', got {line!r}")
        digests[match["name"]] = match["digest"].lower()
    return digests


def locate_mirror_archive(
    mirror_root: Path, dataset_name: str = DATASET_NAME, archive_name: str = ARCHIVE_NAME
) -> tuple[Path, str, Path]:
    """Find ``dataset_name/archive_name`` in the mirror and read its expected SHA-256.

    Returns the archive path, its expected digest and the SHA256SUMS path.
    """
    dataset_dir = mirror_root / dataset_name
    archive = dataset_dir / archive_name
    checksums = dataset_dir / CHECKSUMS_NAME
    for path in (archive, checksums):
        if not path.is_file():
            raise DataError(f"{path}: file not found in the mirror set by --mirror or {MIRROR_ENV}")
    try:
        text = checksums.read_text(encoding="utf-8")
    except UnicodeDecodeError as error:
        raise ChecksumError(f"{checksums}: not UTF-8 text ({error}); expected sha256sum output") from None
    digests = parse_sha256sums(text, str(checksums))
    if archive_name not in digests:
        listed = ", ".join(sorted(digests)) or "nothing"
        raise ChecksumError(f"{checksums}: no checksum listed for {archive_name} (it lists {listed})")
    return archive, digests[archive_name], checksums


def _stream_to_file(session: requests.Session, url: str, destination: Path, timeout_s: float) -> None:
    # `timeout` bounds the connection set-up and every wait for the next bytes, not the whole download.
    with session.get(url, stream=True, timeout=timeout_s) as response:
        response.raise_for_status()
        total = int(response.headers.get("Content-Length", 0)) or None
        with destination.open("wb") as handle, tqdm(
            total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=f"download {destination.name}"
        ) as bar:
            for chunk in response.iter_content(chunk_size=CHUNK_BYTES):
                handle.write(chunk)
                bar.update(len(chunk))


def download_file(
    url: str,
    destination: Path,
    retries: int,
    timeout_s: float,
    session: requests.Session | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> None:
    """Download ``url`` to ``destination``, making up to ``retries`` attempts.

    Connection errors, timeouts and the HTTP statuses in TRANSIENT_HTTP_STATUSES are retried
    after BACKOFF_BASE_S * 2**(attempt - 1) seconds. Any other HTTP error status fails at once.
    Raises DownloadError naming the URL and the last error.
    """
    session = session if session is not None else requests.Session()
    last_error: requests.RequestException | None = None
    for attempt in range(1, retries + 1):
        try:
            _stream_to_file(session, url, destination, timeout_s)
            return
        except requests.HTTPError as error:
            status = error.response.status_code if error.response is not None else None
            if status not in TRANSIENT_HTTP_STATUSES:
                raise DownloadError(f"{url}: download failed with HTTP status {status}: {error}") from error
            last_error = error
        except requests.RequestException as error:
            last_error = error
        if attempt < retries:
            delay_s = BACKOFF_BASE_S * 2 ** (attempt - 1)
            logger.warning(
                "download attempt %d of %d from %s failed: %s; retrying in %.0f s",
                attempt,
                retries,
                url,
                last_error,
                delay_s,
            )
            sleep(delay_s)
    raise DownloadError(f"{url}: download failed after {retries} attempts; last error: {last_error}")


def _member_kind(member: tarfile.TarInfo) -> str:
    if member.issym():
        return f"symbolic link to {member.linkname!r}"
    if member.islnk():
        return f"hard link to {member.linkname!r}"
    if member.ischr() or member.isblk():
        return "device file"
    if member.isfifo():
        return "FIFO"
    return f"member of tar type {member.type!r}"


def member_problem(member: tarfile.TarInfo, target: Path) -> str | None:
    """Return why ``member`` must not be extracted into ``target``, or None if it is safe.

    Only regular files and folders with relative paths inside ``target`` are safe.
    """
    if not (member.isfile() or member.isdir()):
        return f"is a {_member_kind(member)}; only regular files and folders are extracted"
    name = member.name
    if name.startswith(("/", "\\")) or WINDOWS_DRIVE.match(name):
        return "has an absolute path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "contains '..'"
    resolved_target = target.resolve()
    if not (resolved_target / name).resolve().is_relative_to(resolved_target):
        return f"would be extracted outside {target}"
    return None


def extract_archive(archive: Path, target: Path) -> list[str]:
    """Extract the tar ``archive`` into the existing folder ``target``, paths unchanged.

    Every member is checked with ``member_problem`` first, so an unsafe archive raises
    UnsafeArchiveError naming the member before any file is written. Extraction also uses
    tarfile's ``data`` filter (Python 3.12, backported to 3.11.4) as a second check.
    Returns the names of the extracted regular files, in archive order.
    """
    try:
        with tarfile.open(archive) as tar:
            members = tar.getmembers()
            for member in members:
                problem = member_problem(member, target)
                if problem is not None:
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} {problem}; nothing was extracted")
            with tqdm(members, desc=f"extract {archive.name}", unit="member") as bar:
                for member in bar:
                    tar.extract(member, target, filter="data")
    except tarfile.FilterError as error:
        raise UnsafeArchiveError(
            f"{archive}: member {error.tarinfo.name!r} rejected by tarfile's data filter: {error}"
        ) from error
    except tarfile.TarError as error:
        raise DataError(f"{archive}: not a readable tar archive: {error}") from error
    return [member.name for member in members if member.isfile()]


def fetch_archive(download_params: Mapping[str, Any], mirror_root: Path | None, scratch: Path) -> Path:
    """Return the path of a verified archive: the mirror's copy, or a download into ``scratch``."""
    if mirror_root is not None:
        archive, expected, checksums = locate_mirror_archive(mirror_root)
        logger.info("reading %s from the mirror", archive)
        verify_checksum(archive, "sha256", expected, str(checksums))
        return archive

    # NOTE: this path is tested against a local HTTP server only. The official archive's MD5
    # and its layout (files at the archive root) come from third-party records.
    archive = scratch / ARCHIVE_NAME
    url = download_params["url"]
    logger.info("downloading %s (no mirror set by --mirror or %s)", url, MIRROR_ENV)
    download_file(url, archive, download_params["retries"], download_params["timeout_s"])
    # MD5 is the only published checksum of the official archive. It detects a corrupt or
    # changed file, not deliberate tampering.
    verify_checksum(archive, "md5", download_params["md5"], "download.md5 in the parameter file")
    return archive


def fetch_and_extract(download_params: Mapping[str, Any], mirror_root: Path | None, out: Path) -> list[str]:
    """Fetch and verify the archive, then extract it so that it replaces the folder ``out``.

    Returns the names of the extracted files. Raises DataError if the archive lacks
    ImageData.mat at its root, the layout of the official faces.tar.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.download-") as scratch:
        archive = fetch_archive(download_params, mirror_root, Path(scratch))
        with atomic_directory(out) as staging:
            names = extract_archive(archive, staging)
            if ANNOTATION_FILE not in names:
                raise DataError(
                    f"{archive}: {ANNOTATION_FILE} not found at the archive root; expected the layout of the "
                    "official faces.tar with ImageData.mat, README and image_XXXX.jpg at the root"
                )
    return names


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the download stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.download",
        description="Fetch faces.tar from a mirror or download.url, verify its checksum and extract it.",
    )
    add_params_arguments(parser)
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to extract the archive into; an existing one is replaced"
    )
    parser.add_argument(
        "--mirror",
        type=Path,
        default=None,
        help=(
            f"mirror root folder that contains {DATASET_NAME}/{ARCHIVE_NAME} and {DATASET_NAME}/{CHECKSUMS_NAME} "
            f"(default: the environment variable {MIRROR_ENV}; when neither is set, download.url is downloaded)"
        ),
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the download stage with parsed command-line arguments.

    With a ``dataset.format`` other than caltech the stage downloads nothing and leaves ``--out``
    as an empty folder, so a pipeline on a user's own dataset needs no network.
    """
    all_params = load_params(args.params, args.profile)
    data_format = all_params["dataset"]["format"]
    if data_format != DATASET_FORMAT:
        with atomic_directory(args.out):
            pass
        logger.info(
            "dataset.format is %s, not %s: nothing to download, %s left empty", data_format, DATASET_FORMAT, args.out
        )
        return
    params = all_params["download"]
    mirror_root = resolve_mirror_root(args.mirror, os.environ)
    names = fetch_and_extract(params, mirror_root, args.out)
    images = sum(1 for name in names if name.lower().endswith(".jpg"))
    others = len(names) - images
    logger.info("extracted %d files into %s: %d JPEG images and %d other files", len(names), args.out, images, others)


def main(argv: list[str] | None = None) -> int:
    """Run the download stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
