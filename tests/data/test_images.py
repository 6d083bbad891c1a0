import numpy as np
import pytest
from PIL import Image

from fmix.data.images import ImageReadError, list_identity_folders, read_rgb, write_png_atomic
from fmix_testing import LFW_IMAGES, make_bad_input_zoo

PHOTO = LFW_IMAGES / "Ariel_Sharon" / "Ariel_Sharon_0001.jpg"


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("zoo")
    return folder, make_bad_input_zoo(folder, PHOTO)


def test_real_photo_decodes_to_rgb_uint8():
    rgb = read_rgb(PHOTO)
    assert rgb.shape == (250, 250, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb, np.asarray(Image.open(PHOTO).convert("RGB")))


@pytest.mark.parametrize(
    "name, status, message",
    [
        ("empty.jpg", "empty_file", "is an empty file"),
        ("truncated.jpg", "corrupt", "corrupt or truncated"),
        ("garbage.jpg", "not_an_image", "not a recognised image file"),
        ("notes.txt", "not_an_image", "not a recognised image file"),
        ("bomb.png", "too_large", "could be decompression bomb"),
    ],
)
def test_bad_files_raise_with_status_and_message(zoo, name, status, message):
    folder, _ = zoo
    with pytest.raises(ImageReadError, match=message) as info:
        read_rgb(folder / name)
    assert info.value.status == status


def test_missing_file_is_reported():
    with pytest.raises(ImageReadError, match="cannot read") as info:
        read_rgb(PHOTO.with_name("does_not_exist.jpg"))
    assert info.value.status == "not_an_image"


@pytest.mark.parametrize("name", ["gray.png", "cmyk.jpg", "rgba.png", "palette.png", "gray16.png"])
def test_unusual_modes_become_rgb(zoo, name):
    folder, _ = zoo
    rgb = read_rgb(folder / name)
    assert rgb.shape == (250, 250, 3) and rgb.dtype == np.uint8


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    values = np.array([[0, 257, 257 * 100, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(read_rgb(tmp_path / "g16.png")[0, :, 0], [0, 1, 100, 255])


def test_alpha_is_composited_on_black(tmp_path):
    Image.new("RGBA", (4, 4), (200, 100, 50, 0)).save(tmp_path / "clear.png")
    Image.new("RGBA", (4, 4), (200, 100, 50, 255)).save(tmp_path / "opaque.png")
    assert read_rgb(tmp_path / "clear.png").max() == 0
    np.testing.assert_array_equal(read_rgb(tmp_path / "opaque.png")[0, 0], [200, 100, 50])


def test_exif_orientation_is_applied(zoo):
    folder, _ = zoo
    upright = read_rgb(PHOTO).astype(float)
    restored = read_rgb(folder / "exif_rotated.jpg").astype(float)
    assert restored.shape == upright.shape
    assert np.abs(restored - upright).mean() < 3.0  # JPEG re-encoding noise only


def test_max_pixels_guard_is_configurable():
    with pytest.raises(ImageReadError, match="more than max_pixels=10000"):
        read_rgb(PHOTO, max_pixels=10_000)


def test_write_png_atomic_round_trip_and_checks(tmp_path):
    array = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    write_png_atomic(array, tmp_path / "a" / "x.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "x.png")), array)
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.png"]
    with pytest.raises(ValueError, match=r"Expected a uint8 array of shape \(H, W, 3\), got float64 \(4, 5\)"):
        write_png_atomic(np.zeros((4, 5)), tmp_path / "y.png")


def test_list_identity_folders(tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "empty").mkdir()
    (tmp_path / "a" / "2.jpg").write_bytes(b"x")
    (tmp_path / "a" / "1.jpg").write_bytes(b"x")
    (tmp_path / "a" / ".hidden").write_bytes(b"x")
    (tmp_path / "b" / "1.jpg").write_bytes(b"x")
    listed = list_identity_folders(tmp_path)
    assert list(listed) == ["a", "b"]
    assert [p.name for p in listed["a"]] == ["1.jpg", "2.jpg"]


def test_list_identity_folders_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="input folder not found"):
        list_identity_folders(tmp_path / "nope")
    with pytest.raises(ValueError, match="holds no identity folders with files"):
        list_identity_folders(tmp_path)
