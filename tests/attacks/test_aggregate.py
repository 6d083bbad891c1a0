"""`fmix attack aggregate`: the people a release holds most of, attacked one by one (issue: released data
names the people it holds most of).

Fixed reference values on a hand-built release (target selection, templates, strata, the maximum over
the attackers), the aggregation's effect in the masked domain on real faces of a weak release, and the
command end to end with a tiny budget."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fmix.attacks.aggregate import (
    build_templates,
    load_views,
    mean_template,
    null_hit_rate,
    parse_strata,
    published_identities,
    score_by_stratum,
    select_targets,
    stratum_names,
    stratum_of,
    worst_case,
)
from fmix.cli import app
from fmix.release.folder import IndexRow, ReleaseWriter, read_release_folder
from fmix.release.ledger import Ledger
from fmix_testing import copy_sample

runner = CliRunner()

# A hand-built release: (labels, weights) per sample, in two shards (rows 0-3 and 0-2). Every sample holds
# one value in every coefficient (VALUES), so each template is a known number.
ROWS = [
    ([3, 1], [0.6, 0.4]),  # heaviest 3
    ([1, 2], [0.55, 0.45]),  # heaviest 1
    ([3, 2], [0.5, 0.5]),  # a tie: heaviest 3 and 2
    ([1, 3], [0.65, 0.35]),  # heaviest 1
    ([4, 1, 2], [0.4, 0.3, 0.3]),  # heaviest 4
    ([2, 4], [0.3, 0.7]),  # heaviest 4 (published in a random order)
    ([5, 5], [0.5, 0.5]),  # two photos of one person in one mix: heaviest 5, total weight 1
]
VALUES = [1.0, -2.0, 3.0, -4.0, 5.0, -6.0, 7.0]
SHARDS = [(0, range(0, 4)), (1, range(4, 7))]


def _rows() -> list[IndexRow]:
    out = []
    for shard, indices in SHARDS:
        out += [IndexRow(f"s{i}", shard, row, *ROWS[i]) for row, i in enumerate(indices)]
    return out


@pytest.fixture()
def hand_built(tmp_path) -> Path:
    """The release of ROWS written with the release writer: shards, records, index.csv, run.json."""
    folder = tmp_path / "release"
    folder.mkdir()
    writer = ReleaseWriter(folder, "float16")
    writer.write_run({"release": "hand-built", "randomness": {"source": "os"}, "mix": True, "one_use_per_face": True})
    index = []
    for shard, indices in SHARDS:
        writer.write_samples(shard, np.stack([np.full((3, 2, 2), VALUES[i], np.float32) for i in indices]))
        rows = [
            {"name": f"s{i}", "row": row, "labels": ROWS[i][0], "weights": ROWS[i][1]} for row, i in enumerate(indices)
        ]
        writer.write_record(shard, rows, [])
        index += [{**row, "shard": shard} for row in rows]
    writer.write_index(index)
    return folder


def test_targets_are_the_labels_heaviest_in_the_most_samples(hand_built):
    release = read_release_folder(hand_built)
    assert release.rows == _rows()
    targets = select_targets(release.rows, 10)
    # heaviest in 2 samples: 1 (held by 4), 3 (held by 3), 4 (held by 2); then heaviest in 1: 2 (held by 4), 5 (held by 1)
    assert [t.label for t in targets] == [1, 3, 4, 2, 5]
    by_label = {t.label: t for t in targets}
    assert by_label[1].heaviest == (1, 3) and by_label[1].heaviest_weights == (0.55, 0.65) and by_label[1].single == 3
    assert by_label[1].containing == (0, 1, 3, 4) and by_label[1].containing_weights == (0.4, 0.55, 0.65, 0.3)
    assert by_label[3].heaviest == (0, 2) and by_label[3].single == 0  # 0.6 beats the tie's 0.5
    assert by_label[2].heaviest == (2,) and by_label[4].single == 5
    assert by_label[5].containing_weights == (1.0,)
    assert [t.label for t in select_targets(release.rows, 3)] == [1, 3, 4]
    assert (
        select_targets(list(reversed(release.rows)), 10)[0].label == 1
    )  # the ranking does not depend on the row order
    with pytest.raises(ValueError, match="Expected targets >= 1"):
        select_targets(release.rows, 0)


@pytest.mark.parametrize("sign_masked", [True, False])
def test_templates_are_the_single_sample_and_the_two_means(hand_built, sign_masked):
    release = read_release_folder(hand_built)
    targets = select_targets(release.rows, 10)
    templates = build_templates(release, targets, sign_masked)
    view = [abs(v) if sign_masked else v for v in VALUES]
    expected = {  # label -> (single, heaviest mean, weight-weighted mean)
        1: (view[3], (view[1] + view[3]) / 2, (0.4 * view[0] + 0.55 * view[1] + 0.65 * view[3] + 0.3 * view[4]) / 1.9),
        3: (view[0], (view[0] + view[2]) / 2, (0.6 * view[0] + 0.5 * view[2] + 0.35 * view[3]) / 1.45),
        5: (view[6], view[6], view[6]),
    }
    for t, target in enumerate(targets):
        if target.label in expected:
            for name, value in zip(("single", "heaviest", "weighted"), expected[target.label]):
                assert templates[name][t].shape == (3, 2, 2)
                assert torch.allclose(templates[name][t], torch.full((3, 2, 2), value), atol=1e-5), (target.label, name)
    views = load_views(release, [3, 1], sign_masked)
    assert views[:, 0, 0, 0].tolist() == [view[3], view[1]]
    assert torch.equal(mean_template(views), templates["heaviest"][0])
    with pytest.raises(ValueError, match="positive sum"):
        mean_template(views, torch.zeros(2))


def test_labels_are_named_by_the_owners_ledger_or_a_published_labels_json(hand_built, tmp_path):
    release = read_release_folder(hand_built)
    ledger = tmp_path / "owner" / "ledger.jsonl"
    with pytest.raises(ValueError, match=r"holds no header of the release .* \(pass its ledger with --ledger\)"):
        published_identities(release, ledger)
    ledger.parent.mkdir()
    Ledger(ledger).start("hand-built", hand_built, {"Ann": 3, "Bob": 1, "Cy": 2, "Di": 4, "Ed": 5}, "inputs")
    assert published_identities(release, ledger) == {3: "Ann", 1: "Bob", 2: "Cy", 4: "Di", 5: "Ed"}
    (hand_built / "labels.json").write_text(json.dumps({"Ann": 1, "Bob": 1}))
    with pytest.raises(ValueError, match="not one integer per identity"):
        published_identities(release, tmp_path / "other.jsonl")


def test_strata_by_photos_per_identity():
    bounds = parse_strata("2,5,20")
    assert bounds == (2, 5, 20) and stratum_names(bounds) == ["2-4", "5-19", "20+"]
    assert [stratum_of(n, bounds) for n in (1, 2, 4, 5, 19, 20, 530)] == [
        "1",
        "2-4",
        "2-4",
        "5-19",
        "5-19",
        "20+",
        "20+",
    ]
    assert stratum_names((2, 3)) == ["2", "3+"] and stratum_of(1, (3, 10)) == "1-2" and stratum_of(3, (3, 10)) == "3-9"
    for bad in ("5,2", "0,3", "two", "", "2,2"):
        with pytest.raises(ValueError, match="Expected strata"):
            parse_strata(bad)


def test_the_null_rate_is_each_identity_named_for_the_other_targets():
    # Top-1 names 3, 3, 0, 3 for targets 3, 1, 2, 0: identity 3 (a hub) is named for 2 of the 3 others of
    # target 0, identity 0 for 1 of the 3 others of target 3, identities 1 and 2 never: 3 of 12 pairings.
    ranked = torch.tensor([[3, 1], [3, 2], [0, 1], [3, 0]])
    labels = torch.tensor([3, 1, 2, 0])
    assert null_hit_rate(ranked, labels) == pytest.approx(0.25)
    # Its own reconstruction does not count: a target named only by itself has a null rate of 0.
    assert null_hit_rate(torch.tensor([[0], [1]]), torch.tensor([0, 1])) == 0.0
    assert null_hit_rate(ranked[:1], labels[:1]) == 0.0


def test_per_stratum_scores_and_the_maximum_over_the_attackers():
    strata = ["20+", "20+", "5-19", "5-19", "2-4", "2-4"]
    names = stratum_names((2, 5, 20))
    hit = lambda text: torch.tensor([c == "1" for c in text])  # noqa: E731
    attacks = {
        "single": score_by_stratum(hit("100000"), hit("110000"), strata, names, 10),
        "heaviest": score_by_stratum(hit("111000"), hit("111100"), strata, names, 10),
        "weighted": score_by_stratum(hit("011101"), hit("011101"), strata, names, 10),
    }
    single = attacks["single"]
    assert single["n"] == 6 and single["top1"] == pytest.approx(1 / 6) and single["top5"] == pytest.approx(2 / 6)
    assert single["chance_top1"] == pytest.approx(0.1) and single["chance_top5"] == pytest.approx(0.5)
    assert {s: v["top1"] for s, v in single["by_stratum"].items()} == {"2-4": 0.0, "5-19": 0.0, "20+": 0.5}
    assert attacks["weighted"]["by_stratum"]["5-19"] == {
        "n": 2,
        "top1": 1.0,
        "top5": 1.0,
        "chance_top1": pytest.approx(0.1),
        "chance_top5": pytest.approx(0.5),
    }
    head = worst_case(attacks)
    assert (
        head["attack"] == "weighted" and head["top1"] == pytest.approx(4 / 6) and head["top5"] == pytest.approx(4 / 6)
    )
    assert head["by_stratum"] == {
        "2-4": {"n": 2, "top1": 0.5, "attack": "weighted"},
        "5-19": {"n": 2, "top1": 1.0, "attack": "weighted"},
        "20+": {"n": 2, "top1": 1.0, "attack": "heaviest"},
    }
    assert (
        head["worst_stratum"] == "5-19" and head["worst_stratum_top1"] == 1.0
    )  # a tie in rate and size: the first stratum
    # Ties between attackers go to the first of single, heaviest, weighted; a stratum without targets is named, not scored.
    tied = {
        name: score_by_stratum(hit("1100"), hit("1100"), ["20+", "20+", "2-4", "2-4"], names, 10)
        for name in ("weighted", "single")
    }
    head = worst_case(tied)
    assert head["attack"] == "single" and head["by_stratum"]["5-19"] == {"n": 0, "top1": None, "attack": None}
    assert head["worst_stratum"] == "20+" and head["worst_stratum_top1"] == 1.0
    assert worst_case({"heaviest": attacks["heaviest"]})["attack"] == "heaviest"  # only the attackers run
    with pytest.raises(ValueError, match="at least one of the attacks"):
        worst_case({"positive": attacks["single"]})


# ------------------------------------------------------------------------------ real faces


@pytest.fixture(scope="module")
def weak_release(pipeline_sample, tmp_path_factory):
    """A masker without sign mask or noise at k = 2 and a keyed release (one use per face) of the sample's
    60 faces plus 30 photos of one person, who is then the heaviest constituent of the most samples."""
    from fmix.data.align import align_folder
    from fmix.masker.export import export_masker
    from fmix.params import AlignParams, ExportParams, MaskParams, MixingParams
    from fmix.release.protect import ReleaseOptions, protect_folder

    root = tmp_path_factory.mktemp("aggregate")
    align_folder(
        copy_sample(root / "photos", identities=("Colin_Powell",), per_identity=30),
        root / "aligned_many",
        AlignParams(workers=1),
        progress=False,
    )
    faces = root / "faces"
    shutil.copytree(pipeline_sample["aligned"], faces, ignore=shutil.ignore_patterns("*.json", "*.jsonl"))
    shutil.copytree(root / "aligned_many" / "Colin_Powell", faces / "Colin_Powell")
    masker = root / "weak.onnx"
    mixing = MixingParams(k_values=(2,), noise=0.0, sign_flip=False)
    export_masker(
        pipeline_sample["aligned"], pipeline_sample["splits"] / "public.csv", masker, ExportParams(), mixing=mixing
    )
    options = ReleaseOptions(secret_key=bytes(range(32)), ledger=root / "ledger.jsonl")
    protect_folder(
        faces,
        root / "release",
        masker,
        MaskParams(batch_size=64, previews=0, noise=None),  # noise_photos 5, the default: nothing to grow
        None,
        progress=False,
        release=options,
    )
    return {"faces": faces, "masker": masker, "release": root / "release", "ledger": root / "ledger.jsonl"}


def test_averaging_a_persons_samples_approaches_their_true_masked_face(weak_release):
    """In the masked domain the aggregate is exact arithmetic: the relative error of the template to the person's
    mean masked face falls as the samples where they are heaviest are added; single samples stay far from it."""
    from fmix.data.faces import load_faces
    from fmix.masker.build import faces_to_tensor
    from fmix.masker.onnx_masker import OnnxMasker

    release = read_release_folder(weak_release["release"])
    assert release.run["release_noise"] == 0.0 and release.run["noise_photos"] is None  # no noise: none grown
    target = select_targets(release.rows, 5)[0]
    person = published_identities(release, weak_release["ledger"])[target.label]
    assert person == "Colin_Powell" and len(target.heaviest) >= 12
    paths = sorted((weak_release["faces"] / person).glob("*.png"))
    faces, loaded, _ = load_faces(paths, 112)
    masked, _ = OnnxMasker(weak_release["masker"])(faces_to_tensor(faces), torch.zeros(len(loaded)))
    truth = masked.mean(dim=0)
    error = lambda template: ((template - truth).norm() / truth.norm()).item()  # noqa: E731
    views = load_views(release, target.heaviest, sign_masked=False)
    single = sorted(error(view) for view in views)
    curve = [error(mean_template(views[:n])) for n in (1, 3, 6, len(views))]
    assert curve == sorted(curve, reverse=True), curve  # more samples, closer
    assert curve[-1] < 0.35 * single[len(single) // 2], (curve, single)  # much closer than a typical single sample
    assert curve[-1] < single[0]  # closer than the best single sample
    weighted = mean_template(load_views(release, target.containing, False), torch.tensor(target.containing_weights))
    assert error(weighted) < 0.35 * single[len(single) // 2]


def test_aggregate_command_end_to_end(pipeline_sample, tmp_path):
    aligned, splits, masker = (str(pipeline_sample[key]) for key in ("aligned", "splits", "masker"))
    ledger = ["--ledger", str(tmp_path / "owner" / "ledger.jsonl")]
    release = tmp_path / "release"
    result = runner.invoke(
        app, ["mask", aligned, str(release), "-m", masker, "--faces", f"{splits}/private_train.csv", "-q", *ledger]
    )
    assert result.exit_code == 0, result.output
    params = tmp_path / "params.yaml"
    params.write_text("attack:\n  steps: 3\n  seconds: 60.0\n  batch_size: 4\n")
    out = tmp_path / "out"
    result = runner.invoke(
        app,
        [
            "attack",
            "aggregate",
            str(release),
            masker,
            aligned,
            splits,
            str(out),
            "-p",
            str(params),
            "--targets",
            "3",
            *ledger,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "single top-1" in result.output
        and "controls: un-mixed top-1" in result.output
        and "null top-1 (other targets' reconstructions) " in result.output
        and "worst stratum" in result.output
    )
    record = json.loads((out / "aggregate.json").read_text())
    assert record["attackers_read"] == "|x|" and record["judge"] == "dlib" and record["inverter"]["steps"] == 3
    assert record["targets"]["requested"] == 3 and 1 <= record["targets"]["selected"] <= 3
    identities = record["identities"]
    assert (
        identities == 4
        and record["chance_top1"] == pytest.approx(1 / identities)
        and record["chance_top5"] == pytest.approx(1.0)
    )
    assert record["strata"]["bounds"] == [2, 5, 20] and record["strata"]["names"][-3:] == ["2-4", "5-19", "20+"]
    for name in ("single", "heaviest", "weighted"):
        scores = record["attacks"][name]
        assert scores["n"] == record["targets"]["selected"] and 0.0 <= scores["top1"] <= scores["top5"] <= 1.0
        assert sum(v["n"] for v in scores["by_stratum"].values()) == scores["n"]
        assert 0.0 <= scores["null_top1"] <= 1.0
    controls = record["controls"]
    assert set(controls) == {"positive", "shuffled"} and controls["positive"]["min_top1"] == 0.25
    assert (
        record["attack_works"] is (controls["positive"]["top1"] >= 0.25) and 0.0 <= controls["shuffled"]["top1"] <= 1.0
    )
    head = record["headline"]
    assert head["top1"] == max(record["attacks"][name]["top1"] for name in ("single", "heaviest", "weighted"))
    assert head["worst_stratum"] in record["strata"]["names"] and head["attack_works"] is record["attack_works"]
    assert len(record["per_target"]) == record["targets"]["selected"] and "Alvaro_Uribe" not in json.dumps(
        record
    )  # no names
    assert (out / "aggregate_grid.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # With the attackers' prior of this masking, the prior is the inverter: nothing is trained here.
    prior = tmp_path / "prior.pt"
    params.write_text("attack:\n  steps: 3\n  prior_steps: 2\n  batch_size: 4\n")
    assert (
        runner.invoke(app, ["attack", "prior", masker, aligned, splits, str(prior), "-p", str(params)]).exit_code == 0
    )
    command = ["attack", "aggregate", str(release), masker, aligned, splits, str(out), "-p", str(params), *ledger]
    result = runner.invoke(app, [*command, "--targets", "3", "--prior", str(prior)])
    assert result.exit_code == 0, result.output
    inverter = json.loads((out / "aggregate.json").read_text())["inverter"]
    assert inverter["steps"] == 2 and inverter["prior"]["used"] is True and inverter["prior"]["path"] == str(prior)
    # Bad input: one line, no traceback, nothing written.
    result = runner.invoke(
        app,
        ["attack", "aggregate", str(release), masker, aligned, splits, str(tmp_path / "o2"), "--targets", "0", *ledger],
    )
    assert result.exit_code == 1 and "error: Expected targets >= 1, got 0" in result.output
    result = runner.invoke(
        app,
        [
            "attack",
            "aggregate",
            str(release),
            masker,
            aligned,
            splits,
            str(tmp_path / "o2"),
            "--ledger",
            str(tmp_path / "none.jsonl"),
        ],
    )
    assert (
        result.exit_code == 1
        and "error: the ledger" in result.output
        and "holds no header of the release" in result.output
    )
    result = runner.invoke(
        app,
        [
            "attack",
            "aggregate",
            str(release),
            masker,
            aligned,
            splits,
            str(tmp_path / "o2"),
            "--strata",
            "5,2",
            *ledger,
        ],
    )
    assert result.exit_code == 1 and "error: Expected strata" in result.output
    assert not (tmp_path / "o2").exists()


def test_the_report_shows_the_worst_case_per_stratum(tmp_path):
    """`fmix report --aggregate`: the release's worst case in its own table, beside chance and the controls."""
    import yaml

    results, models, out = tmp_path / "results", tmp_path / "models", tmp_path / "report"
    (results / "none").mkdir(parents=True)
    models.mkdir()
    verification = {
        "method": "none",
        "verification": {"accuracy_mean": 0.8, "accuracy_std": 0.05},
        "raw_feature_floor": {"accuracy_mean": 0.6},
    }
    (results / "none" / "verification.json").write_text(json.dumps(verification))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {}, "sweep": {"none": {"method": "none"}}}))
    strata, names = ["20+", "5-19", "2-4", "2-4"], stratum_names((2, 5, 20))
    hit = lambda text: torch.tensor([c == "1" for c in text])  # noqa: E731
    scores = {
        name: score_by_stratum(hit(h), hit(h), strata, names, 1000)
        for name, h in (
            ("single", "1000"),
            ("heaviest", "1100"),
            ("weighted", "0100"),
            ("positive", "1110"),
            ("shuffled", "0000"),
        )
    }
    attacks = {name: scores[name] for name in ("single", "heaviest", "weighted")}
    for name, null in zip(attacks, (0.004, 0.006, 0.005)):
        attacks[name]["null_top1"] = null
    record = {
        "identities": 1000,
        "judge": "dlib",
        "strata": {"names": names},
        "targets": {"selected": 4, "heaviest_samples": {"median": 3}},
        "attacks": attacks,
        "controls": {"positive": {**scores["positive"], "min_top1": 0.25}, "shuffled": scores["shuffled"]},
        "attack_works": True,
        "headline": worst_case(attacks),
    }
    (tmp_path / "release").mkdir()
    (tmp_path / "release" / "aggregate.json").write_text(json.dumps(record))
    result = runner.invoke(
        app,
        [
            "report",
            str(results),
            str(models),
            str(out),
            "--params",
            str(params),
            "--aggregate",
            str(tmp_path / "release" / "aggregate.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    markdown = (out / "report.md").read_text()
    assert "## Worst case of the release: the people it holds most of" in markdown
    assert "| all | 4 | 0.250 | 0.500 | 0.250 | 0.500 | 0.0010 | 0.750 | 0.000 |" in markdown
    assert "| 20+ | 1 | 1.000 | 1.000 | 0.000 | 1.000 | 0.0010 | 1.000 | 0.000 |" in markdown
    assert "| 5-19 | 1 | 0.000 | 1.000 | 1.000 | 1.000 | 0.0010 | 1.000 | 0.000 |" in markdown
    assert (
        "top-1 0.500 (heaviest)" in markdown
        and "worst stratum 5-19: top-1 1.000" in markdown
        and "the attack works at this budget" in markdown
        and "named each target for the other targets' reconstructions at 0.004 / 0.006 / 0.005 (" in markdown
    )
    (tmp_path / "release" / "aggregate.json").write_text(json.dumps({"attacks": {}}))
    result = runner.invoke(
        app,
        [
            "report",
            str(results),
            str(models),
            str(out),
            "--params",
            str(params),
            "--aggregate",
            str(tmp_path / "release" / "aggregate.json"),
        ],
    )
    assert result.exit_code == 1 and "is not an aggregate.json of `fmix attack aggregate`" in result.output
