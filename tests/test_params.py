import dataclasses

import pytest
import yaml

from fmix.methods import METHODS
from fmix.params import (
    SECTIONS,
    AdaptiveParams,
    AlignParams,
    MixingParams,
    MixupParams,
    ParamsError,
    SplitParams,
    TrainParams,
    check_sections,
    defaults_as_dict,
    load_section,
    section_from_mapping,
)
from fmix_testing import REPO


def test_params_yaml_holds_the_code_defaults():
    """One source of truth: the stage sections of params.yaml equal the dataclass defaults."""
    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    assert {name: on_disk[name] for name in SECTIONS} == defaults_as_dict()


def test_load_section_reads_file_and_applies_overrides(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("align:\n  workers: 1\n  score_threshold: 0.8\nsplit: {}\n")
    cfg = load_section(AlignParams, path, "align", workers=None, min_images=3)
    assert (cfg.workers, cfg.score_threshold, cfg.min_images, cfg.size) == (1, 0.8, 3, 112)
    assert load_section(SplitParams, path, "split") == SplitParams()
    assert load_section(SplitParams, None, "split", seed=4).seed == 4


def test_ints_are_accepted_for_floats():
    assert section_from_mapping(SplitParams, {"val_fraction": 1 / 4}, "split").val_fraction == 0.25
    assert isinstance(section_from_mapping(AlignParams, {"score_threshold": 0.5}, "align").score_threshold, float)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"wokers": 2}, r"unknown key\(s\) in section 'align': wokers"),
        ({"workers": "two"}, r"align.workers must be int, got 'two'"),
        ({"workers": 1.5}, r"align.workers must be int, got 1.5"),
        ({"workers": 0}, r"align.workers must be >= 1"),
        ({"size": 100}, r"align.size must be a multiple of 8"),
        ({"score_threshold": 1.5}, r"align.score_threshold must be in \(0, 1\)"),
        ({"size": None}, r"align.size must not be null"),
    ],
)
def test_bad_align_values_are_rejected_with_the_key(values, message):
    with pytest.raises(ParamsError, match=message):
        section_from_mapping(AlignParams, values, "align")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"private_fraction": 0.7, "public_fraction": 0.3}, r"private_fraction \+ split.public_fraction must be < 1"),
        ({"pairs": "all"}, r"split.pairs must be 'heldout' or 'lfw', got 'all'"),
        ({"pairs_per_fold": 5}, r"split.pairs_per_fold must be even"),
        ({"min_images": 1}, r"split.min_images must be >= 2"),
    ],
)
def test_bad_split_values_are_rejected(values, message):
    with pytest.raises(ParamsError, match=message):
        section_from_mapping(SplitParams, values, "split")


@pytest.mark.parametrize(
    "values, message",
    [
        ({"noise": -0.5}, r"mixing.noise must be >= 0, got -0.5"),
        ({"cap": 1.5}, r"mixing.cap must be in \(0, 1\] or null"),
        ({"weight_law": "beta"}, r"mixing.weight_law must be 'dirichlet' or 'instahide', got 'beta'"),
    ],
)
def test_bad_mixing_values_are_rejected(values, message):
    with pytest.raises(ParamsError, match=message):
        section_from_mapping(MixingParams, values, "mixing")


def test_bad_files_are_reported(tmp_path):
    with pytest.raises(ParamsError, match="params file not found"):
        load_section(AlignParams, tmp_path / "none.yaml", "align")
    (tmp_path / "bad.yaml").write_text("align: [unclosed\n")
    with pytest.raises(ParamsError, match="is not valid YAML"):
        load_section(AlignParams, tmp_path / "bad.yaml", "align")
    (tmp_path / "list.yaml").write_text("- 1\n")
    with pytest.raises(ParamsError, match="must hold a mapping of sections, got list"):
        load_section(AlignParams, tmp_path / "list.yaml", "align")
    (tmp_path / "sec.yaml").write_text("align: 3\n")
    with pytest.raises(ParamsError, match="section 'align' must be a mapping, got int"):
        load_section(AlignParams, tmp_path / "sec.yaml", "align")


def test_sections_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        AlignParams().workers = 3


def test_a_misspelled_section_is_an_error_not_silent_defaults(tmp_path):
    """Issue 9 item 2: `masks:` instead of `mask:` used to run with real names and seed 0."""
    from fmix.params import MaskParams

    path = tmp_path / "p.yaml"
    path.write_text("data: {aligned: data/aligned}\nmasks: {anonymize: true, seed: 424242}\n")
    with pytest.raises(
        ParamsError, match=r"unknown section\(s\) in .*p.yaml: masks; known: align, split, export, mask, .*data"
    ):
        load_section(MaskParams, path, "mask")
    path.write_text("mask: {anonymise: true}\n")
    with pytest.raises(ParamsError, match=r"unknown key\(s\) in section 'mask': anonymise"):
        load_section(MaskParams, path, "mask")


def test_validate_params_checks_every_section():
    from fmix.params import validate_params

    on_disk = yaml.safe_load((REPO / "params.yaml").read_text())
    validate_params(on_disk)  # the shipped file is valid
    with pytest.raises(ParamsError, match=r"unknown section\(s\) in params.yaml: trian"):
        validate_params({**on_disk, "trian": {}}, "params.yaml")
    with pytest.raises(ParamsError, match=r"unknown key\(s\) in section 'attack': second"):
        validate_params({**on_disk, "attack": {"second": 1}})
    with pytest.raises(ParamsError, match=r"export.upsample must be 1, 2, 4 or 8, got 3"):
        validate_params({"export": {"upsample": 3}})
    with pytest.raises(ParamsError, match=r"export.keep_lowest_energy and export.keep_highest_energy exclude"):
        validate_params({"export": {"keep_lowest_energy": 36, "keep_highest_energy": 36}})
    with pytest.raises(ParamsError, match=r"attack.check_min_s4 must be in \(0, 1\], got 0.0"):
        validate_params({"attack": {"check_min_s4": 0.0}})
    with pytest.raises(ParamsError, match=r"attack.steps must be null or >= 1, got 0"):
        validate_params({"attack": {"steps": 0}})


def test_a_non_utf8_params_file_is_a_params_error(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"mask:\n  seed: \xff\xfe\n")
    with pytest.raises(ParamsError, match=r"params file .*p.yaml is not UTF-8 text"):
        load_section(SplitParams, path, "split")


@pytest.mark.parametrize("name", ["split", "train", "evaluator", "attack"])
def test_seeds_out_of_range_are_refused(name):
    with pytest.raises(ParamsError, match=rf"{name}.seed must be in \[0, 4294967295\], got 100000000000000000000"):
        section_from_mapping(SECTIONS[name], {"seed": 10**20}, name)
    with pytest.raises(ParamsError, match=rf"{name}.seed must be in \[0, 4294967295\], got -1"):
        section_from_mapping(SECTIONS[name], {"seed": -1}, name)


def test_params_yaml_holds_the_default_sweep():
    from fmix.params import DEFAULT_SWEEP

    assert yaml.safe_load((REPO / "params.yaml").read_text())["sweep"] == DEFAULT_SWEEP


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({}, r"section 'sweep' must be a non-empty mapping"),
        ({"Mixup-4": {"method": "mixup"}}, r"sweep entry name 'Mixup-4' must be lower-case letters, digits and _"),
        ({"m": ["mixup"]}, r"sweep.m must be a mapping of train keys, got \['mixup'\]"),
        ({"m": {"methd": "mixup"}}, r"unknown key\(s\) in section 'train \(with sweep.m\)': methd"),
        ({"m": {"method": "mixdown"}}, rf"train.method must be one of {', '.join(METHODS)}, got 'mixdown'"),
    ],
)
def test_bad_sweep_entries_are_rejected(tmp_path, sweep, message):
    from fmix.params import load_sweep_entry

    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"sweep": sweep}))
    with pytest.raises(ParamsError, match=message):
        load_sweep_entry(path, "m")


def test_a_sweep_entry_is_its_train_overrides(tmp_path):
    from fmix.params import TrainParams, load_sweep_entry

    path = tmp_path / "p.yaml"
    path.write_text("train: {epochs: 3}\nsweep:\n  mixup4: {method: mixup, mixup: {k: 4}}\n")
    entry = load_sweep_entry(path, "mixup4")
    assert entry == {"method": "mixup", "mixup": {"k": 4}}
    assert load_section(TrainParams, path, "train", **entry) == TrainParams(
        epochs=3, method="mixup", mixup=MixupParams(k=4)
    )


def test_a_sweep_entry_overrides_only_the_keys_of_a_method_section_it_names(tmp_path):
    from fmix.params import load_sweep_entry

    path = tmp_path / "p.yaml"
    path.write_text(
        "train: {adaptive: {n_fr: 1, policy_lr: 0.05}}\nsweep:\n  adversarial: {method: adaptive, adaptive: {policy_objective: adversarial}}\n"
    )
    params = load_section(TrainParams, path, "train", **load_sweep_entry(path, "adversarial"))
    assert params.adaptive == AdaptiveParams(n_fr=1, policy_lr=0.05, policy_objective="adversarial")


@pytest.mark.parametrize(
    "old, new, value",
    [
        ("k", "mixup.k", 4),
        ("policy_objective", "adaptive.policy_objective", "adversarial"),
        ("target_mean_k", "adaptive.target_mean_k", 3.0),
        ("dctdp_epsilon", "dctdp.epsilon", 1000.0),
        ("dpsgd_delta", "dpsgd.delta", 1e-6),
    ],
)
def test_a_flat_method_key_of_an_older_params_file_names_its_new_key(tmp_path, old, new, value):
    from fmix.params import load_sweep_entry, validate_params

    section, _, leaf = new.partition(".")
    message = rf"key '{old}' of section 'train' moved: it is now train.{new} \(write `{section}: {{{leaf}: {value!r}}}`"
    with pytest.raises(ParamsError, match=message):
        validate_params({"train": {old: value}})
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump({"sweep": {"m": {"method": "mixup", old: value}}}))
    with pytest.raises(
        ParamsError, match=rf"key '{old}' of section 'train \(with sweep.m\)' moved: it is now train.{new}"
    ):
        load_sweep_entry(path, "m")


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"adaptive": {"policy_reference": "k2"}},
            r"train.adaptive.policy_reference must be 'none' or 'unmixed', got 'k2'",
        ),
        (
            {"adaptive": {"policy_reward": "partners"}},
            r"train.adaptive.policy_reward must be 'mixed' or 'anchor', got 'partners'",
        ),
        (
            {"adaptive": {"policy_objective": "selfish"}},
            r"train.adaptive.policy_objective must be 'adversarial' or 'cooperative', got 'selfish'",
        ),
        (
            {"adaptive": {"policy_gradient": "exact"}},
            r"train.adaptive.policy_gradient must be 'sampled' or 'expected', got 'exact'",
        ),
        ({"adaptive": {"target_mean_k": 1.0}}, r"train.adaptive.target_mean_k must be null or > 1, got 1.0"),
        ({"adaptive": {"difficulty_weight": -1.0}}, r"train.adaptive.difficulty_weight must be >= 0"),
        ({"adaptive": {"nfr": 1}}, r"unknown key\(s\) in section 'train.adaptive': nfr"),
        ({"adaptive": 3}, r"section 'train.adaptive' must be a mapping, got int"),
        ({"mixup": {"k": 0}}, r"train.mixup.k must be >= 1"),
        ({"dctdp": {"epsilon": 0.0}}, r"train.dctdp.epsilon and train.dctdp.clip must be > 0"),
        ({"dpsgd": {"delta": 1.0}}, r"train.dpsgd.delta must be in \(0, 1\)"),
        ({"mix_warmup_fraction": 1.0}, r"train.mix_warmup_fraction must be in \[0, 1\)"),
        ({"mix_warmup_fraction": -0.1}, r"train.mix_warmup_fraction must be in \[0, 1\)"),
    ],
)
def test_bad_train_curriculum_values_are_rejected(values, message):
    with pytest.raises(ParamsError, match=message):
        section_from_mapping(TrainParams, values, "train")


def test_the_mean_k_budget_is_checked_against_the_configured_k_values():
    """train.adaptive.target_mean_k must lie strictly inside mixing.k_values (not a fixed 2..6), for the adaptive method."""
    from fmix.params import validate_params

    check_sections(
        TrainParams(adaptive=AdaptiveParams(target_mean_k=7.5)), MixingParams(k_values=(2, 4, 8))
    )  # inside 2..8
    message = r"train.adaptive.target_mean_k=4.0 must be null or lie strictly between the smallest and the largest of mixing.k_values=\[2, 3, 4\]"
    with pytest.raises(ParamsError, match=message):
        check_sections(TrainParams(), MixingParams(k_values=(2, 3, 4)))
    check_sections(
        TrainParams(method="mixup"), MixingParams(k_values=(2, 3, 4))
    )  # the adaptive section is not this run's
    check_sections(TrainParams(adaptive=AdaptiveParams(target_mean_k=None)), MixingParams(k_values=(2, 3)))
    with pytest.raises(ParamsError, match=message):
        validate_params({"mixing": {"k_values": [2, 3, 4]}})
    with pytest.raises(
        ParamsError, match=r"sweep.a: train.adaptive.target_mean_k=4.0 must be null or lie strictly between"
    ):
        validate_params(
            {"train": {"method": "none"}, "mixing": {"k_values": [2, 3, 4]}, "sweep": {"a": {"method": "adaptive"}}}
        )
