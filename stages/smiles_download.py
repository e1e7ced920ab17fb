"""Stage smiles_download: fetch GENKI-4K or SMILEsmileD, verify its content and normalize its layout.

The archive of ``--dataset`` comes from one of two places:

- a mirror, given by ``--mirror DIR`` or the environment variable ``EMOTIVELENS_MIRROR``:
  ``DIR/genki-4k/GENKI-4K.tar`` or ``DIR/smilesmiled/SMILEsmileD.tar``, first checked against
  the SHA-256 that the folder's ``SHA256SUMS`` lists for it;
- otherwise ``smiles_download.<dataset>_url``, a GitHub archive of the source repository at a
  pinned commit, downloaded with retries.

GitHub builds its archives on request, so their bytes (compression, timestamps, the commit
comment in the pax header) are not stable, and a checksum of the archive cannot be pinned.
Both sources are therefore checked by content. The stage keeps only the data files and
writes them under fixed names. It lists each kept file's SHA-256 in ``SHA256SUMS``
(``sha256sum`` format, sorted by path) and compares the SHA-256 of that listing with a
constant below. It checks the file counts first, so a missing file gets a clearer error
than a digest mismatch.

Output layout, whatever the source (a GitHub archive adds a top folder, and SMILEsmileD's
files sit under ``SMILEs/positives/`` and ``SMILEs/negatives/``):

- genki4k: ``files/file0001.jpg`` .. ``files/file4000.jpg``, ``labels.txt`` (row N, ``smile yaw
  pitch roll``, belongs to ``fileNNNN.jpg``; 1 = smiling), ``SHA256SUMS``;
- smilesmiled: ``positives7/*.jpg`` (smiling), ``negatives7/*.jpg`` (not smiling), ``SHA256SUMS``.

``labels.txt`` is rewritten with one ``\\n``-terminated line per row and single spaces, because
the repository's last commit dropped the final newline that the first commit had. Every
other kept file is copied byte for byte. Archive members outside the kept data files (code,
READMEs, index files) are never extracted, and a kept member that is not a regular file, or
whose path would leave the output folder, rejects the whole archive. The output folder is
written to a staging folder that replaces ``--out`` only after every check passed.

Command line::

    python -m stages.smiles_download --params params.yaml [--profile P] \\
        --dataset {genki4k,smilesmiled} --out data/raw/<dataset> [--mirror DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import math
import os
import re
import sys
import tarfile
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from tqdm import tqdm

from stages.atomic import atomic_directory
from stages.cli import run_stage
from stages.download import (
    CHECKSUMS_NAME,
    MIRROR_ENV,
    download_file,
    locate_mirror_archive,
    member_problem,
    resolve_mirror_root,
    verify_checksum,
)
from stages.errors import ChecksumError, DataError, UnsafeArchiveError
from stages.params import add_params_arguments, load_params

logger = logging.getLogger(__name__)

GENKI_LABELS_FILE = "labels.txt"
GENKI_IMAGES_FOLDER = "files"
GENKI_IMAGE_COUNT = 4000
# A labels.txt row: the smile label (1 = smiling, 0 = not) and the head pose in radians.
GENKI_LABEL_FIELDS = ("smile", "yaw", "pitch", "roll")

SMILES_POSITIVES = "positives7"
SMILES_NEGATIVES = "negatives7"

# Content digests: the SHA-256 of the SHA256SUMS listing that this stage writes, computed once
# from the mirror archives GENKI-4K.tar (sha256 deacb9a5...) and SMILEsmileD.tar (sha256
# 686b7c41...). Their files are byte copies of the files at the pinned commits, except GENKI's
# labels.txt, which keeps the final newline of an earlier commit and so equals the
# normalized labels.txt of either source.
GENKI4K_CONTENT_SHA256 = "3c89fe122d684301c5448a91b9f06d32bcc9b27c59ca9b7896678733d537b1f8"
SMILESMILED_CONTENT_SHA256 = "e5e9b717f2806490c00de310590fe71140b63fd02dfe1636f54c79c7bd7f14d6"


@dataclass(frozen=True)
class DatasetSpec:
    """Source, kept archive members and expected content of one dataset.

    Each pattern in ``keep`` matches a whole member name, allowing one leading folder (the top
    folder of a GitHub archive). Its groups joined by ``/`` give the output path.
    ``expected_counts`` maps an output folder to its number of files.
    """

    name: str
    mirror_folder: str
    mirror_archive: str
    url_key: str
    keep: tuple[re.Pattern[str], ...]
    expected_counts: Mapping[str, int]
    content_sha256: str


DATASETS = {
    "genki4k": DatasetSpec(
        name="genki4k",
        mirror_folder="genki-4k",
        mirror_archive="GENKI-4K.tar",
        url_key="genki4k_url",
        keep=(
            re.compile(r"(?:[^/]+/)?genki4k/(files)/(file\d{4}\.jpg)"),
            re.compile(r"(?:[^/]+/)?genki4k/(labels\.txt)"),
        ),
        expected_counts={GENKI_IMAGES_FOLDER: GENKI_IMAGE_COUNT, ".": 1},
        content_sha256=GENKI4K_CONTENT_SHA256,
    ),
    "smilesmiled": DatasetSpec(
        name="smilesmiled",
        mirror_folder="smilesmiled",
        mirror_archive="SMILEsmileD.tar",
        url_key="smilesmiled_url",
        keep=(
            re.compile(r"(?:[^/]+/)?SMILEs/positives/(positives7)/([^/]+\.jpg)"),
            re.compile(r"(?:[^/]+/)?SMILEs/negatives/(negatives7)/([^/]+\.jpg)"),
        ),
        expected_counts={SMILES_POSITIVES: 3690, SMILES_NEGATIVES: 9475},
        content_sha256=SMILESMILED_CONTENT_SHA256,
    ),
}


@dataclass(frozen=True)
class GenkiLabel:
    """One row of GENKI-4K's labels.txt: smile (1 = smiling) and head pose in radians."""

    line: int
    smile: int
    yaw: float
    pitch: float
    roll: float

    @property
    def image_name(self) -> str:
        """File name of the image that row N describes, ``fileNNNN.jpg``."""
        return f"file{self.line:04d}.jpg"


def _parse_angle(value: str, where: str, field: str) -> float:
    try:
        angle = float(value)
    except ValueError:
        raise DataError(f"{where}: {field} is {value!r}, expected a number in radians") from None
    if not math.isfinite(angle):
        raise DataError(f"{where}: {field} is {value!r}, expected a finite number in radians")
    return angle


def parse_genki_labels(text: str, source: str, expected_rows: int | None = GENKI_IMAGE_COUNT) -> list[GenkiLabel]:
    """Parse GENKI-4K's labels.txt, one ``smile yaw pitch roll`` row per image, in image order.

    Blank lines at the end are ignored. Raises DataError naming ``source``, the line and the
    value for a blank line between rows, a row without 4 fields, a smile label other than 0
    or 1, or a pose angle that is not a finite number. A row count other than
    ``expected_rows`` also raises DataError, and None accepts any count.
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    labels = []
    for line_number, line in enumerate(lines, start=1):
        where = f"{source} line {line_number}"
        fields = line.split()
        if len(fields) != len(GENKI_LABEL_FIELDS):
            raise DataError(
                f"{where}: expected {len(GENKI_LABEL_FIELDS)} fields {' '.join(GENKI_LABEL_FIELDS)}, "
                f"found {len(fields)}: {line!r}"
            )
        if fields[0] not in ("0", "1"):
            raise DataError(f"{where}: smile label is {fields[0]!r}, expected 0 (not smiling) or 1 (smiling)")
        yaw, pitch, roll = (
            _parse_angle(value, where, field) for value, field in zip(fields[1:], GENKI_LABEL_FIELDS[1:])
        )
        labels.append(GenkiLabel(line_number, int(fields[0]), yaw, pitch, roll))
    if expected_rows is not None and len(labels) != expected_rows:
        raise DataError(
            f"{source}: {len(labels)} label rows, expected {expected_rows} "
            f"(row N labels file{1:04d}.jpg .. file{expected_rows:04d}.jpg)"
        )
    return labels


def normalize_genki_labels(data: bytes, source: str) -> bytes:
    """Return labels.txt with single spaces and one ``\\n`` after every row, after checking it.

    Raises DataError for text that is not ASCII or rows that ``parse_genki_labels`` rejects.
    """
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as error:
        raise DataError(f"{source}: not ASCII text ({error})") from None
    parse_genki_labels(text, source)
    rows = [" ".join(line.split()) for line in text.splitlines()]
    while rows and not rows[-1]:
        rows.pop()
    return "".join(f"{row}\n" for row in rows).encode("ascii")


def output_path(member_name: str, spec: DatasetSpec) -> str | None:
    """Return the output path of a kept archive member, or None for a member that is not kept."""
    for pattern in spec.keep:
        match = pattern.fullmatch(member_name)
        if match is not None:
            return "/".join(match.groups())
    return None


def extract_dataset(archive: Path, spec: DatasetSpec, target: Path) -> dict[str, str]:
    """Copy the kept members of a tar archive (any compression) into ``target`` under their output paths.

    Returns the SHA-256 of every written file, keyed by its path relative to ``target``.
    Raises UnsafeArchiveError for a kept member that ``member_problem`` rejects (such as a
    link) or that is a folder. Raises DataError for an unreadable archive or for two members
    with the same output path.
    """
    digests: dict[str, str] = {}
    sources: dict[str, str] = {}
    try:
        with tarfile.open(archive, "r:*") as tar, tqdm(desc=f"extract {archive.name}", unit="member") as bar:
            for member in tar:
                bar.update()
                relative = output_path(member.name, spec)
                if relative is None:
                    continue
                problem = member_problem(member, target)
                if problem is None and not member.isfile():
                    problem = "is a folder where a data file is expected"
                if problem is not None:
                    raise UnsafeArchiveError(f"{archive}: member {member.name!r} {problem}")
                if relative in sources:
                    raise DataError(
                        f"{archive}: members {sources[relative]!r} and {member.name!r} both map to {relative}"
                    )
                sources[relative] = member.name
                data = tar.extractfile(member).read()
                if relative == GENKI_LABELS_FILE:
                    data = normalize_genki_labels(data, f"{archive}: member {member.name}")
                destination = target / relative
                destination.parent.mkdir(parents=True, exist_ok=True)
                destination.write_bytes(data)
                digests[relative] = hashlib.sha256(data).hexdigest()
    except tarfile.TarError as error:
        # tarfile lists one line per compression it tried, and these are joined into one line.
        lines = [line.strip("- ") for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
        reason = lines[0].rstrip(":") + (f" ({'; '.join(lines[1:])})" if len(lines) > 1 else "")
        raise DataError(f"{archive}: not a readable tar archive: {reason}") from error
    return digests


def sha256sums_text(digests: Mapping[str, str]) -> str:
    """Format ``digests`` (path to SHA-256) as ``sha256sum`` output, sorted by path."""
    return "".join(f"{digests[path]}  {path}\n" for path in sorted(digests))


def content_digest(digests: Mapping[str, str]) -> str:
    """Return the SHA-256 of ``sha256sums_text(digests)``: one digest for a set of files and their names."""
    return hashlib.sha256(sha256sums_text(digests).encode("utf-8")).hexdigest()


def check_counts(digests: Mapping[str, str], spec: DatasetSpec, source: str) -> None:
    """Raise DataError unless every output folder of ``spec`` contains its expected number of files."""
    counts: dict[str, int] = {}
    for path in digests:
        folder = os.path.dirname(path) or "."
        counts[folder] = counts.get(folder, 0) + 1
    problems = [
        f"{folder}: {counts.get(folder, 0)} files, expected {expected}"
        for folder, expected in spec.expected_counts.items()
        if counts.get(folder, 0) != expected
    ]
    if problems:
        raise DataError(f"{source}: wrong {spec.name} file counts ({'; '.join(problems)})")


def check_genki_images(digests: Mapping[str, str], source: str) -> None:
    """Raise DataError unless the images are exactly file0001.jpg .. file4000.jpg, one per labels.txt row."""
    expected = {f"{GENKI_IMAGES_FOLDER}/file{number:04d}.jpg" for number in range(1, GENKI_IMAGE_COUNT + 1)}
    found = {path for path in digests if path.startswith(f"{GENKI_IMAGES_FOLDER}/")}
    missing = sorted(expected - found)
    if missing:
        raise DataError(f"{source}: {len(missing)} images missing, the first is {missing[0]}")


def verify_content(digests: Mapping[str, str], spec: DatasetSpec, source: str) -> str:
    """Check file counts and the content digest of the kept files; return the digest.

    Raises DataError for wrong counts and ChecksumError for a content digest other than
    ``spec.content_sha256``.
    """
    check_counts(digests, spec, source)
    if spec.name == "genki4k":
        check_genki_images(digests, source)
    actual = content_digest(digests)
    if actual != spec.content_sha256:
        raise ChecksumError(
            f"{source}: content digest of the {spec.name} files is {actual}, expected {spec.content_sha256}; "
            "a file differs from the pinned version (compare the SHA256SUMS listing of a good copy)"
        )
    logger.info("%s: content digest %s of %d files matches", source, actual, len(digests))
    return actual


def fetch_source_archive(
    spec: DatasetSpec,
    download_params: Mapping[str, Any],
    mirror_root: Path | None,
    scratch: Path,
    download: Callable[..., None] = download_file,
) -> Path:
    """Return the archive to read: the mirror's copy after its SHA-256 check, or a download into ``scratch``."""
    if mirror_root is not None:
        archive, expected, checksums = locate_mirror_archive(mirror_root, spec.mirror_folder, spec.mirror_archive)
        logger.info("reading %s from the mirror", archive)
        verify_checksum(archive, "sha256", expected, str(checksums))
        return archive

    # NOTE: this path is tested against a local HTTP server that serves an archive in GitHub's
    # layout, not against GitHub itself.
    url = download_params[spec.url_key]
    archive = scratch / f"{spec.name}.tar.gz"
    logger.info("downloading %s (no mirror set by --mirror or %s)", url, MIRROR_ENV)
    download(url, archive, download_params["retries"], download_params["timeout_s"])
    return archive


def fetch_dataset(
    spec: DatasetSpec, download_params: Mapping[str, Any], mirror_root: Path | None, out: Path
) -> dict[str, str]:
    """Fetch, extract and verify one dataset so that it replaces the folder ``out``.

    Returns the SHA-256 of every kept file, keyed by its path relative to ``out``.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.name}.download-") as scratch:
        archive = fetch_source_archive(spec, download_params, mirror_root, Path(scratch))
        with atomic_directory(out) as staging:
            digests = extract_dataset(archive, spec, staging)
            verify_content(digests, spec, str(archive))
            (staging / CHECKSUMS_NAME).write_text(sha256sums_text(digests), encoding="utf-8")
    return digests


def build_parser() -> argparse.ArgumentParser:
    """Build the command-line parser of the smiles_download stage."""
    parser = argparse.ArgumentParser(
        prog="python -m stages.smiles_download",
        description="Fetch GENKI-4K or SMILEsmileD, verify its content digest and write a normalized layout.",
    )
    add_params_arguments(parser)
    parser.add_argument("--dataset", required=True, choices=sorted(DATASETS), help="dataset to fetch")
    parser.add_argument(
        "--out", type=Path, required=True, help="folder to write the dataset into; an existing one is replaced"
    )
    parser.add_argument(
        "--mirror",
        type=Path,
        default=None,
        help=(
            "mirror root folder that contains genki-4k/GENKI-4K.tar or smilesmiled/SMILEsmileD.tar with "
            f"{CHECKSUMS_NAME} (default: the environment variable {MIRROR_ENV}; when neither is set, "
            "smiles_download.<dataset>_url is downloaded)"
        ),
    )
    return parser


def run(args: argparse.Namespace) -> None:
    """Run the smiles_download stage with parsed command-line arguments."""
    params = load_params(args.params, args.profile)["smiles_download"]
    spec = DATASETS[args.dataset]
    digests = fetch_dataset(spec, params, resolve_mirror_root(args.mirror, os.environ), args.out)
    counts = ", ".join(
        f"{'top folder' if folder == '.' else folder}: {count}" for folder, count in spec.expected_counts.items()
    )
    logger.info("wrote %d %s files into %s (%s)", len(digests), spec.name, args.out, counts)


def main(argv: list[str] | None = None) -> int:
    """Run the smiles_download stage; return 0 on success and 1 on a known error."""
    parser = build_parser()
    args = parser.parse_args(argv)
    return run_stage(run, args, parser.prog)


if __name__ == "__main__":
    sys.exit(main())
