"""Hostile inputs of `fmix align` (issue 9): name clashes, killed runs, symbolic links."""

import json
import os
import shutil

from typer.testing import CliRunner

from fmix.cli import app
from fmix.data.align import align_folder, read_manifest
from fmix.params import AlignParams
from fmix_testing import LFW_IMAGES, copy_sample

ONE_WORKER = AlignParams(min_images=1, workers=1)


def test_sources_that_share_an_output_name_are_refused_not_overwritten(tmp_path):
    """collide.jpg and collide.png (faces of two people) used to both report ok, the second overwriting the first."""
    from PIL import Image

    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    shutil.copy(LFW_IMAGES / "Ariel_Sharon" / "Ariel_Sharon_0002.jpg", src / "Ariel_Sharon" / "collide.jpg")
    Image.open(LFW_IMAGES / "Bill_Clinton" / "Bill_Clinton_0001.jpg").save(src / "Ariel_Sharon" / "COLLIDE.png")
    summary = align_folder(src, tmp_path / "out", ONE_WORKER, progress=False)
    assert summary["status_counts"] == {"name_clash": 2, "ok": 1}
    rows = {row.source: row for row in read_manifest(tmp_path / "out")}
    assert (
        rows["Ariel_Sharon/collide.jpg"].message
        == "COLLIDE.png, collide.jpg would all be aligned to Ariel_Sharon/collide.png: rename them"
    )
    assert rows["Ariel_Sharon/COLLIDE.png"].output == ""
    assert sorted(p.name for p in (tmp_path / "out" / "Ariel_Sharon").iterdir()) == ["Ariel_Sharon_0001.png"]


def test_resume_repairs_a_half_written_manifest_line_and_removes_stale_temporaries(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=3)
    out = tmp_path / "out"
    align_folder(src, out, ONE_WORKER, progress=False)
    lines = (out / "manifest.jsonl").read_text().splitlines()
    # Killed while writing the second row, before the third: half a line, no newline, orphan temporaries.
    (out / "manifest.jsonl").write_text(lines[0] + "\n" + lines[1][:25])
    for row in lines[1:]:
        (out / json.loads(row)["output"]).unlink()
    (out / "Ariel_Sharon" / ".Ariel_Sharon_0002.png.k1l2m3.tmp").write_bytes(b"half a png")
    (out / ".summary.json.x9y8.tmp").write_text("{")
    summary = align_folder(src, out, ONE_WORKER, progress=False)
    assert (summary["processed_now"], summary["status_counts"]) == (2, {"ok": 3})
    written = (out / "manifest.jsonl").read_text().splitlines()
    assert len(written) == 3 and [json.loads(line)["status"] for line in written] == ["ok"] * 3
    assert list(out.rglob("*.tmp")) == []


def test_symbolic_links_loops_broken_and_leaving_src(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    folder = src / "Ariel_Sharon"
    os.symlink("loop_a.jpg", folder / "loop_b.jpg")
    os.symlink("loop_b.jpg", folder / "loop_a.jpg")
    os.symlink("missing.jpg", folder / "broken.jpg")
    outside = (
        copy_sample(tmp_path / "elsewhere", identities=("Bill_Clinton",), per_identity=1)
        / "Bill_Clinton"
        / "Bill_Clinton_0001.jpg"
    )
    os.symlink(outside, folder / "outside.jpg")
    os.symlink("Ariel_Sharon_0001.jpg", folder / "inside.jpg")

    followed = align_folder(src, tmp_path / "followed", ONE_WORKER, progress=False)
    assert followed["status_counts"] == {"broken_link": 1, "ok": 3, "symlink_loop": 2}
    rows = {row.source: row for row in read_manifest(tmp_path / "followed")}
    assert rows["Ariel_Sharon/loop_a.jpg"].message.endswith("loop_a.jpg is a symbolic link loop")
    assert rows["Ariel_Sharon/broken.jpg"].message.endswith("broken.jpg is a symbolic link to a missing file")

    result = CliRunner().invoke(
        app, ["align", str(src), str(tmp_path / "inside"), "--min-images", "1", "--workers", "1", "--inside-only", "-q"]
    )
    assert result.exit_code == 0, result.output
    assert '"outside_source": 1' in result.output and "aligned 2 of 6 photos" in result.output
    row = {row.source: row for row in read_manifest(tmp_path / "inside")}["Ariel_Sharon/outside.jpg"]
    assert (row.status, row.output) == ("outside_source", "")
    assert row.message.startswith(f"leads to {outside.resolve()}, outside")


def test_inside_only_also_refuses_an_identity_folder_linked_from_outside(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    elsewhere = copy_sample(tmp_path / "elsewhere", identities=("Bill_Clinton",), per_identity=1)
    os.symlink(elsewhere / "Bill_Clinton", src / "Bill_Clinton")
    assert align_folder(src, tmp_path / "all", ONE_WORKER, progress=False)["status_counts"] == {"ok": 2}
    summary = align_folder(src, tmp_path / "inside", ONE_WORKER, progress=False, follow_outside=False)
    assert summary["status_counts"] == {"ok": 1, "outside_source": 1}
    assert not (tmp_path / "inside" / "Bill_Clinton").exists()


def test_an_existing_file_as_output_is_a_one_line_error(tmp_path):
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    (tmp_path / "taken").write_text("mine")
    result = CliRunner().invoke(app, ["align", str(src), str(tmp_path / "taken"), "--min-images", "1", "-q"])
    assert (result.exit_code, result.output) == (
        1,
        f"error: output folder {tmp_path / 'taken'} is an existing file, not a folder\n",
    )
    assert (tmp_path / "taken").read_text() == "mine"


def test_a_250_character_file_name_aligns_and_nested_photos_get_a_row(tmp_path):
    """A long name used to fail (its temporary name passed 255 bytes); photos in sub-folders were dropped unseen."""
    src = copy_sample(tmp_path / "src", identities=("Ariel_Sharon",), per_identity=1)
    long_name = "a" * 246 + ".jpg"
    shutil.copy(LFW_IMAGES / "Ariel_Sharon" / "Ariel_Sharon_0002.jpg", src / "Ariel_Sharon" / long_name)
    (src / "Ariel_Sharon" / "2019" / "deeper").mkdir(parents=True)
    shutil.copy(
        LFW_IMAGES / "Ariel_Sharon" / "Ariel_Sharon_0003.jpg",
        src / "Ariel_Sharon" / "2019" / "deeper" / "Ariel_Sharon_0001.jpg",
    )
    summary = align_folder(src, tmp_path / "out", ONE_WORKER, progress=False)
    assert summary["status_counts"] == {"nested_folder": 1, "ok": 2}  # the nested twin of _0001 clashes with nothing
    rows = {row.source: row for row in read_manifest(tmp_path / "out")}
    assert rows[f"Ariel_Sharon/{long_name}"].output == f"Ariel_Sharon/{'a' * 246}.png"
    nested = rows["Ariel_Sharon/2019/deeper/Ariel_Sharon_0001.jpg"]
    assert (
        nested.message
        == "Ariel_Sharon/2019/deeper/Ariel_Sharon_0001.jpg is in a sub-folder of its identity folder: move it into Ariel_Sharon/ to align it"
    )
