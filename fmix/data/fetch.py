"""Download the data the pipeline runs on: LFW deep-funneled and its View 2 pairs (``fmix data lfw``).

``fetch_lfw(dest)`` writes the layout of the default data root (:mod:`fmix.data.root`)::

    DEST/lfw/lfw-deepfunneled.tgz     the archive, as downloaded
    DEST/lfw/pairs.txt                View 2 verification pairs
    DEST/lfw/SHA256SUMS               the SHA-256 of both (``sha256sum -c`` reads it)
    DEST/lfw/images_deepfunneled/     <Person_Name>/<Person_Name>_NNNN.jpg, from the archive

so ``FMIX_DATA=DEST`` points the pipeline at it. Downloads go to a temporary file that is renamed
into place only when complete (and verified, when a checksum is known); a second run skips every
file whose checksum still matches, and an extraction that already finished. The archive is
extracted with tarfile's ``data`` filter into a temporary folder: absolute paths, ``..`` members,
links leading out of the folder and device files are refused, and a refused archive leaves nothing.

Checksums: no SHA-256 of these files is published with LFW and none is invented here
(:data:`LFW_SHA256` is empty). Pass ``--sha256 NAME=HEX`` (``sha256=`` here) to enforce one;
without it, a download prints the SHA-256 it computed with a warning and records it in SHA256SUMS,
so later runs verify the files against their first download (trust on first use).
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tarfile
import tempfile
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

# The public LFW site. Every URL of `fmix data lfw` is this base (or --base-url) joined with a file name.
LFW_BASE_URL = "https://vis-www.cs.umass.edu/lfw/"
LFW_ARCHIVE = "lfw-deepfunneled.tgz"
LFW_PAIRS = "pairs.txt"
LFW_FILES = (LFW_ARCHIVE, LFW_PAIRS)
LFW_DIR = "lfw"  # DEST/lfw, as in the default data root ../shared/data/lfw
LFW_IMAGES = "images_deepfunneled"
SUMS_FILE = "SHA256SUMS"
# Expected SHA-256 per file name. Empty on purpose: LFW publishes none, and a checksum that was not
# computed from the real file must not be written here (see the module docstring).
LFW_SHA256: dict[str, str] = {}

CHUNK = 1 << 20
TIMEOUT_S = 60
_HEX = re.compile(r"[0-9a-f]{64}")


def _umask_mode(mode: int) -> int:
    """``mode`` under the process umask (temporary files are created 0600/0700; the data should not stay so)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


@dataclass
class FetchedFile:
    """One downloaded (or skipped) file."""

    name: str
    path: Path
    sha256: str
    checked_against: str  # "given" (--sha256 or LFW_SHA256), "recorded" (SHA256SUMS of a first download) or "none"
    downloaded: bool  # False: an existing file that matched was kept


@dataclass
class FetchSummary:
    """What ``fetch_lfw`` did."""

    root: Path  # DEST/lfw
    files: list[FetchedFile] = field(default_factory=list)
    images: Path | None = None
    extracted: bool = False  # False: the folder was extracted by an earlier run from the same archive
    identities: int = 0
    photos: int = 0

    @property
    def unverified(self) -> list[FetchedFile]:
        """Files downloaded now with no checksum to compare against (their SHA-256 was only printed and recorded)."""
        return [item for item in self.files if item.checked_against == "none"]


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file, as lower-case hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def parse_sha256_options(values: list[str] | tuple[str, ...]) -> dict[str, str]:
    """``NAME=HEX`` options as a mapping; a bad option is a ValueError."""
    sums: dict[str, str] = {}
    for value in values:
        name, sep, digest = value.partition("=")
        digest = digest.strip().lower()
        if not sep or not name.strip() or not _HEX.fullmatch(digest):
            raise ValueError(f"--sha256 takes NAME=HEX with 64 hex digits, got {value!r}")
        sums[name.strip()] = digest
    return sums


def read_sums(path: str | Path) -> dict[str, str]:
    """A ``sha256sum`` file (``HEX  NAME`` lines) as name -> hex; a missing file is empty."""
    path = Path(path)
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        parts = line.split(maxsplit=1)
        if len(parts) == 2 and _HEX.fullmatch(parts[0].lower()):
            sums[parts[1].lstrip("*").strip()] = parts[0].lower()
    return sums


def _write_text_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temporary file beside ``path``, then rename it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as out:
            out.write(text)
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_sums(path: str | Path, sums: dict[str, str]) -> None:
    """Write name -> hex as a ``sha256sum`` file, sorted, atomically."""
    _write_text_atomic(Path(path), "".join(f"{digest}  {name}\n" for name, digest in sorted(sums.items())))


def file_url(base_url: str, name: str) -> str:
    """``name`` under ``base_url`` (a trailing slash is added to the base when it has none)."""
    base = base_url if base_url.endswith("/") else base_url + "/"
    return urllib.parse.urljoin(base, urllib.parse.quote(name))


def download(
    url: str,
    path: str | Path,
    expected: str | None = None,
    recorded: str | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    timeout: float = TIMEOUT_S,
) -> FetchedFile:
    """Download ``url`` to ``path`` atomically, unless ``path`` already holds the expected file.

    Args:
        url: http(s) or file URL.
        path: the destination file.
        expected: the SHA-256 the file must have (a mismatch is an error and keeps no file).
        recorded: the SHA-256 an earlier download recorded (SHA256SUMS); when ``expected`` is None,
            the file must have this one instead (an existing file with it is kept).
        progress: called as ``progress(name, bytes_so_far, total_or_None)``.
        timeout: seconds to wait for the server.

    Returns:
        The file's record.

    Raises:
        ValueError: the downloaded file does not have the expected (or recorded) checksum.
        OSError: the download failed (``urllib.error.URLError`` is one).
    """
    import urllib.request  # here, not at the top: `fmix --help` imports this module for its help texts

    path = Path(path)
    reference, source = (expected, "given") if expected else (recorded, "recorded") if recorded else (None, "none")
    if path.is_file() and reference is not None:
        digest = sha256_file(path)
        if digest == reference:
            return FetchedFile(path.name, path, digest, source, downloaded=False)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    tmp = Path(tmp_name)
    try:
        digest = hashlib.sha256()
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            done = 0
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(path.name, done, total)
            out.flush()
            os.fsync(out.fileno())
        if total is not None and done != total:
            raise OSError(f"{url}: the download stopped after {done} of {total} bytes")
        hexdigest = digest.hexdigest()
        if reference is not None and hexdigest != reference:
            where = "the expected" if source == "given" else f"the one recorded by an earlier download in {SUMS_FILE}"
            raise ValueError(f"{url}: SHA-256 {hexdigest} does not match {where} {reference} (nothing kept)")
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return FetchedFile(path.name, path, hexdigest, source, downloaded=True)


def _strict_data_filter(member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """tarfile's ``data`` filter, which also refuses what it would only rewrite: absolute names and ``..`` anywhere."""
    name = member.name.replace("\\", "/")
    if name.startswith("/") or os.path.isabs(member.name):
        raise tarfile.AbsolutePathError(member)
    if ".." in name.split("/"):
        raise tarfile.OutsideDestinationError(member, os.path.join(dest, member.name))
    return tarfile.data_filter(member, dest)


def safe_extract(archive: str | Path, dest: str | Path) -> Path:
    """Extract a tar archive into the new folder ``dest``, atomically, refusing unsafe members.

    Members go through tarfile's ``data`` filter (links out of the folder, device files, unsafe modes)
    and, stricter than it, absolute names and ``..`` components are refused rather than rewritten.
    The archive's single top-level folder (``lfw-deepfunneled/``), if it has one, becomes ``dest``;
    otherwise its whole content does.

    Args:
        archive: the tar file (any compression tarfile reads).
        dest: the folder to create; it must not exist.

    Returns:
        ``dest``.

    Raises:
        ValueError: a member is unsafe (absolute path, ``..``, a link out of the folder, a device file)
            or the archive is not a tar file; nothing is left behind.
        FileExistsError: ``dest`` exists.
    """
    if not hasattr(tarfile, "data_filter"):  # Python 3.11.4 and later have it (pyproject's requires-python)
        raise RuntimeError("safe extraction needs tarfile's extraction filters: Python 3.11.4 or newer")
    archive, dest = Path(archive), Path(dest)
    if dest.exists():
        raise FileExistsError(f"{dest} exists: remove it to extract again")
    dest.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part"))
    try:
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(staging, filter=_strict_data_filter)
        except tarfile.FilterError as err:
            raise ValueError(f"{archive}: refused to extract an unsafe member: {err}") from None
        except tarfile.ReadError as err:
            raise ValueError(f"{archive}: not a readable tar archive ({err})") from None
        entries = list(staging.iterdir())
        top = entries[0] if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink() else staging
        if top == staging:
            os.chmod(staging, _umask_mode(0o777))
        os.replace(top, dest)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return dest


def _count_photos(images: Path) -> tuple[int, int]:
    folders = [path for path in images.iterdir() if path.is_dir()]
    return len(folders), sum(1 for folder in folders for path in folder.iterdir() if path.is_file())


def fetch_lfw(
    dest: str | Path,
    base_url: str = LFW_BASE_URL,
    sha256: dict[str, str] | None = None,
    progress: Callable[[str, int, int | None], None] | None = None,
    timeout: float = TIMEOUT_S,
) -> FetchSummary:
    """Download LFW deep-funneled and ``pairs.txt`` into ``dest/lfw``, verify them and extract the photos.

    Args:
        dest: the data root (what ``FMIX_DATA`` names); LFW goes to ``dest/lfw``.
        base_url: where the files are (``LFW_BASE_URL``; a mirror, or a ``file://`` folder).
        sha256: expected SHA-256 per file name, over :data:`LFW_SHA256`.
        progress: download progress callback (see :func:`download`).
        timeout: seconds to wait for the server.

    Returns:
        What was downloaded, skipped and extracted.

    Raises:
        ValueError: a checksum mismatch, an unknown file name in ``sha256`` or an unsafe archive.
        FileExistsError: ``dest/lfw/images_deepfunneled`` exists but was not extracted from this archive.
        OSError: a download failed.
    """
    expected = {**LFW_SHA256, **(sha256 or {})}
    unknown = sorted(set(expected) - set(LFW_FILES))
    if unknown:
        raise ValueError(f"no file {', '.join(unknown)} to check: the files are {', '.join(LFW_FILES)}")
    root = Path(dest) / LFW_DIR
    sums_path = root / SUMS_FILE
    recorded = read_sums(sums_path)
    summary = FetchSummary(root=root)
    for name in LFW_FILES:
        fetched = download(
            file_url(base_url, name), root / name, expected.get(name), recorded.get(name), progress, timeout
        )
        summary.files.append(fetched)
        recorded[name] = fetched.sha256
        write_sums(sums_path, recorded)  # after each file: a later failure keeps what is known
    images = root / LFW_IMAGES
    marker = root / f".{LFW_IMAGES}.sha256"  # the archive the folder was extracted from
    archive_sha = recorded[LFW_ARCHIVE]
    if images.is_dir() and marker.is_file() and marker.read_text().strip() == archive_sha:
        summary.extracted = False
    else:
        if images.exists():
            raise FileExistsError(
                f"{images} exists but was not extracted from {root / LFW_ARCHIVE}: move it away to extract again"
            )
        safe_extract(root / LFW_ARCHIVE, images)
        _write_text_atomic(marker, archive_sha + "\n")
        summary.extracted = True
    summary.images = images
    summary.identities, summary.photos = _count_photos(images)
    return summary
