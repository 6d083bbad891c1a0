"""The test helpers find the shared data relative to the repository, and a missing data set fails."""

import re
from pathlib import Path

import pytest

from fmix_testing import LFW_IMAGES, REPO, require_files

TESTS = Path(__file__).resolve().parent


def test_shared_data_is_found_relative_to_the_repository():
    assert LFW_IMAGES == REPO.parent / "shared" / "data" / "lfw" / "images_deepfunneled"
    assert LFW_IMAGES.is_dir()


def test_a_missing_data_file_fails_instead_of_skipping(tmp_path):
    present = tmp_path / "a.jpg"
    present.write_bytes(b"x")
    assert require_files([present]) == [present]
    with pytest.raises(FileNotFoundError, match=r"1 test file\(s\) of the shared data set are missing, first .*b\.jpg"):
        require_files([present, tmp_path / "b.jpg"])


def test_no_test_holds_an_absolute_machine_path_or_skips_for_data():
    offenders = []
    for path in sorted(TESTS.rglob("*.py")):
        text = path.read_text()
        if re.search(r"[\"'](/work|/home|/root|/tmp)/", text):
            offenders.append(f"{path.name}: absolute path")
        if re.search(r"pytest\.skip\([^)]*(LFW|data|not found)", text):
            offenders.append(f"{path.name}: skips when data is missing")
    assert offenders == []
