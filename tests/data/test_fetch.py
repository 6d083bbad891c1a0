"""`fmix data lfw` and the data root: file:// mirrors built here from tiny tarballs (never the internet)."""

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fmix.cli import app
from fmix.data import fetch
from fmix.data.root import DATA_ENV, DEFAULT_DATA_ROOT, apply_data_root, data_root, resolve_data_path
from fmix_testing import REPO

runner = CliRunner()
PHOTOS = {
    "Alice_Aa/Alice_Aa_0001.jpg": b"first",
    "Alice_Aa/Alice_Aa_0002.jpg": b"second",
    "Bob_Bb/Bob_Bb_0001.jpg": b"third",
}
PAIRS = b"1\t1\nAlice_Aa\t1\t2\nAlice_Aa\t1\tBob_Bb\t1\n"  # View 2's format: 1 fold of 1 matched + 1 mismatched pair


def _add(tar: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size, info.mode = kind, link, len(data), 0o644
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def _mirror(folder: Path, extra: list[tuple] = (), top: str = "lfw-deepfunneled") -> Path:
    """A folder holding lfw-deepfunneled.tgz (the photos under ``top``/, plus ``extra`` members) and pairs.txt."""
    folder.mkdir(parents=True, exist_ok=True)
    with tarfile.open(folder / fetch.LFW_ARCHIVE, "w:gz") as tar:
        for name, data in PHOTOS.items():
            _add(tar, f"{top}/{name}" if top else name, data)
        for member in extra:
            _add(tar, *member)
    (folder / fetch.LFW_PAIRS).write_bytes(PAIRS)
    return folder


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_downloads_verifies_and_extracts_then_skips_what_is_done(tmp_path):
    mirror = _mirror(tmp_path / "mirror")
    given = {fetch.LFW_ARCHIVE: _sha(mirror / fetch.LFW_ARCHIVE), fetch.LFW_PAIRS: _sha(mirror / fetch.LFW_PAIRS)}
    summary = fetch.fetch_lfw(tmp_path / "data", mirror.as_uri(), given)
    root = tmp_path / "data" / "lfw"
    assert [(item.name, item.checked_against, item.downloaded) for item in summary.files] == [
        (fetch.LFW_ARCHIVE, "given", True),
        (fetch.LFW_PAIRS, "given", True),
    ]
    assert (summary.extracted, summary.identities, summary.photos) == (True, 2, 3)
    for name, data in PHOTOS.items():  # the archive's top folder became images_deepfunneled
        assert (root / "images_deepfunneled" / name).read_bytes() == data
    assert (root / "pairs.txt").read_bytes() == PAIRS
    assert fetch.read_sums(root / "SHA256SUMS") == given
    assert not list(root.glob(".*.part")) and not list(root.glob(".*.tmp"))  # no temporary left
    # A second run downloads nothing, even from a mirror that is gone, and keeps the photos.
    (mirror / fetch.LFW_ARCHIVE).unlink()
    again = fetch.fetch_lfw(tmp_path / "data", mirror.as_uri(), given)
    assert (
        [item.downloaded for item in again.files] == [False, False] and again.extracted is False and again.photos == 3
    )


def test_without_a_checksum_the_computed_one_is_printed_recorded_and_enforced_later(tmp_path):
    mirror = _mirror(tmp_path / "mirror")
    dest = tmp_path / "data"
    result = runner.invoke(app, ["data", "lfw", str(dest), "--base-url", mirror.as_uri(), "--quiet"])
    assert result.exit_code == 0, result.output
    archive_sha = _sha(mirror / fetch.LFW_ARCHIVE)
    assert f"SHA-256 {archive_sha} (not verified)" in result.output
    assert (
        "warning: no known SHA-256 for lfw-deepfunneled.tgz" in result.output
        and "--sha256 lfw-deepfunneled.tgz=HEX" in result.output
    )
    assert "extracted: 3 photos of 2 people" in result.output and f"FMIX_DATA={dest}" in result.output
    # Trust on first use: the recorded checksum is what a re-download must match.
    (dest / "lfw" / fetch.LFW_PAIRS).write_bytes(b"damaged")
    (mirror / fetch.LFW_PAIRS).write_bytes(b"changed upstream")
    again = runner.invoke(app, ["data", "lfw", str(dest), "--base-url", mirror.as_uri(), "--quiet"])
    assert again.exit_code == 1 and "recorded by an earlier download in SHA256SUMS" in again.output
    assert (
        "Traceback" not in again.output and (dest / "lfw" / fetch.LFW_PAIRS).read_bytes() == b"damaged"
    )  # nothing replaced
    (mirror / fetch.LFW_PAIRS).write_bytes(PAIRS)
    healed = runner.invoke(app, ["data", "lfw", str(dest), "--base-url", mirror.as_uri(), "--quiet"])
    assert (
        healed.exit_code == 0
        and f"pairs.txt: downloaded, SHA-256 {_sha(mirror / fetch.LFW_PAIRS)} (matches SHA256SUMS)" in healed.output
    )
    assert "lfw-deepfunneled.tgz: already there" in healed.output and "already extracted" in healed.output


def test_a_wrong_checksum_keeps_nothing(tmp_path):
    mirror = _mirror(tmp_path / "mirror")
    result = runner.invoke(
        app,
        [
            "data",
            "lfw",
            str(tmp_path / "data"),
            "--base-url",
            mirror.as_uri(),
            "-q",
            "--sha256",
            f"{fetch.LFW_ARCHIVE}={'0' * 64}",
        ],
    )
    assert result.exit_code == 1 and "does not match the expected 000" in result.output
    root = tmp_path / "data" / "lfw"
    assert (
        not (root / fetch.LFW_ARCHIVE).exists()
        and not list(root.glob(".*"))
        and not (root / "images_deepfunneled").exists()
    )
    bad = runner.invoke(app, ["data", "lfw", str(tmp_path / "data"), "--sha256", "pairs.txt=xyz"])
    assert bad.exit_code == 1 and "NAME=HEX" in bad.output
    unknown = runner.invoke(app, ["data", "lfw", str(tmp_path / "data"), "--sha256", f"other.zip={'a' * 64}"])
    assert unknown.exit_code == 1 and "no file other.zip to check" in unknown.output


@pytest.mark.parametrize(
    "member",
    [
        ("../escaped.jpg", b"x"),
        ("/fmix-escape-test.jpg", b"x"),
        ("lfw-deepfunneled/link", b"", tarfile.SYMTYPE, "../../../outside"),
        ("lfw-deepfunneled/abslink", b"", tarfile.SYMTYPE, "/etc/passwd"),
        ("lfw-deepfunneled/hard", b"", tarfile.LNKTYPE, "../../outside"),
        ("lfw-deepfunneled/device", b"", tarfile.CHRTYPE),
    ],
    ids=["dotdot", "absolute", "symlink-out", "symlink-absolute", "hardlink-out", "device"],
)
def test_unsafe_archives_are_refused_and_leave_nothing(tmp_path, member):
    mirror = _mirror(tmp_path / "mirror", extra=[member])
    with pytest.raises(ValueError, match="refused to extract an unsafe member"):
        fetch.fetch_lfw(tmp_path / "data", mirror.as_uri())
    root = tmp_path / "data" / "lfw"
    assert not (root / "images_deepfunneled").exists()
    assert sorted(path.name for path in root.iterdir()) == [
        "SHA256SUMS",
        fetch.LFW_ARCHIVE,
        fetch.LFW_PAIRS,
    ]  # no staging folder
    assert not (tmp_path / "escaped.jpg").exists() and not Path("/fmix-escape-test.jpg").exists()
    assert not (tmp_path / "outside").exists()


def test_an_archive_without_a_top_folder_and_an_existing_foreign_folder(tmp_path):
    mirror = _mirror(tmp_path / "mirror", top="")
    summary = fetch.fetch_lfw(tmp_path / "data", mirror.as_uri() + "/")
    assert (summary.images / "Bob_Bb" / "Bob_Bb_0001.jpg").read_bytes() == b"third"
    other = tmp_path / "other"
    (other / "lfw" / "images_deepfunneled").mkdir(parents=True)  # photos put there by hand: never overwritten
    with pytest.raises(FileExistsError, match="was not extracted from"):
        fetch.fetch_lfw(other, mirror.as_uri())
    not_a_tar = _mirror(tmp_path / "broken")
    (not_a_tar / fetch.LFW_ARCHIVE).write_bytes(b"not a tar file")
    with pytest.raises(ValueError, match="not a readable tar archive"):
        fetch.fetch_lfw(tmp_path / "data3", not_a_tar.as_uri())


def test_the_urls_come_from_one_base():
    assert (
        fetch.file_url(fetch.LFW_BASE_URL, fetch.LFW_ARCHIVE) == "https://vis-www.cs.umass.edu/lfw/lfw-deepfunneled.tgz"
    )
    assert fetch.file_url("file:///srv/mirror", "pairs.txt") == "file:///srv/mirror/pairs.txt"
    assert fetch.LFW_SHA256 == {}  # none published; never an invented one


def test_fmix_data_moves_the_default_data_paths(monkeypatch, tmp_path):
    params = {
        "data": {"images": "../shared/data/lfw/images_deepfunneled", "aligned": "data/aligned", "release": "adaptive"},
        "split": {"lfw_pairs_file": "../shared/data/lfw/pairs.txt", "seed": 0},
    }
    monkeypatch.delenv(DATA_ENV, raising=False)
    assert apply_data_root({key: dict(value) for key, value in params.items()}) == params
    assert data_root() == Path(DEFAULT_DATA_ROOT) and data_root(REPO) == REPO.parent / "shared" / "data"
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    moved = apply_data_root({key: dict(value) for key, value in params.items()})
    assert moved["data"] == {
        "images": f"{tmp_path}/lfw/images_deepfunneled",
        "aligned": "data/aligned",
        "release": "adaptive",
    }
    assert moved["split"] == {"lfw_pairs_file": f"{tmp_path}/lfw/pairs.txt", "seed": 0}
    assert resolve_data_path("../shared/dataset/x") == "../shared/dataset/x" and data_root(REPO) == tmp_path


def test_fmix_data_reaches_the_split_and_the_snakemake_pipeline(monkeypatch, tmp_path):
    """The LFW pairs of `fmix split` and the Snakemake align stage's input come from $FMIX_DATA."""
    from fmix.data.splits import lfw_pairs

    (tmp_path / "lfw" / "images_deepfunneled" / "Alice_Aa").mkdir(parents=True)
    (tmp_path / "lfw" / "pairs.txt").write_bytes(PAIRS)
    monkeypatch.setenv(DATA_ENV, str(tmp_path))
    faces = {"Alice_Aa": ["Alice_Aa/Alice_Aa_0001.png", "Alice_Aa/Alice_Aa_0002.png"]}
    pairs, dropped = lfw_pairs("../shared/data/lfw/pairs.txt", faces)  # params' default path, read under $FMIX_DATA
    assert (len(pairs), dropped) == (1, 1)
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("Snakefile", "workflow", "params.yaml", "environment.yml", "fmix"):  # fmix/: each rule's code inputs
        (root / name).symlink_to(REPO / name)
    env = {
        **os.environ,
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        "PYTHONPATH": str(REPO),
    }
    run = subprocess.run(["snakemake", "-n", "align"], cwd=root, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    copy = (root / "logs" / "params" / "config.yaml").read_text()  # what the commands read
    assert f"images: {tmp_path}/lfw/images_deepfunneled" in copy and f"lfw_pairs_file: {tmp_path}/lfw/pairs.txt" in copy
