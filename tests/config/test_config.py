"""Composition, typed schemas and cross-field validation."""

from __future__ import annotations

import pytest
from omegaconf.errors import ConfigKeyError, ValidationError

from kimi_lab.config import compose, to_run_config, validate_run
from kimi_lab.config.schema import MoEBackend, RopeScaling, RunConfig
from kimi_lab.config.store import check
from kimi_lab.errors import ConfigError
from tests.conftest import REPO

EXPERIMENTS = sorted(p.stem for p in (REPO / "conf" / "experiment").glob("*.yaml"))
MODELS = sorted(p.stem for p in (REPO / "conf" / "model").glob("*.yaml"))
DATA = sorted(p.stem for p in (REPO / "conf" / "data").glob("*.yaml"))


@pytest.mark.parametrize("model", MODELS)
def test_every_model_preset_composes_and_validates(model: str) -> None:
    cfg = to_run_config(compose([f"model={model}"]))
    assert isinstance(cfg, RunConfig)
    assert cfg.model.name == model
    validate_run(cfg)


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_every_experiment_composes_and_validates(experiment: str) -> None:
    cfg = to_run_config(compose([f"experiment={experiment}"]))
    assert cfg.experiment == experiment
    validate_run(cfg)


@pytest.mark.parametrize("data", DATA)
def test_every_data_config_composes_and_validates(data: str) -> None:
    cfg = to_run_config(compose(["experiment=quickstart", f"data={data}"]))
    validate_run(cfg)
    assert cfg.data.sources and all(s.weight >= 0 for s in cfg.data.sources.values())


def test_fusion_presets_match_the_k25_ablation() -> None:
    presets = {
        d: to_run_config(compose([f"data={d}"])).data.fusion
        for d in ("joint_early", "joint_mid", "joint_late")
    }
    got = {d: (f.vision_start, f.vision_ratio) for d, f in presets.items()}
    assert got == {"joint_early": (0.0, 0.1), "joint_mid": (0.5, 0.2), "joint_late": (0.8, 0.5)}


def test_typed_values() -> None:
    cfg = to_run_config(compose(["model=k2", "model.moe.backend=torch"]))
    assert cfg.model.moe.backend is MoEBackend.torch
    assert cfg.model.attention.rope.scaling is RopeScaling.yarn
    assert cfg.data.tokenizer == "data/tokenizers/bpe-163840.json"  # interpolated from model.vocab_size


def test_wrong_type_fails_and_names_the_key() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["model.moe.top_k=many"])
    assert str(err.value) == "model.moe.top_k: Value 'many' of type 'str' could not be converted to Integer"


def test_enum_error_lists_allowed_values() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["model.moe.backend=cuda_magic"])
    assert (
        str(err.value)
        == "model.moe.backend: Invalid value 'cuda_magic', expected one of [auto, torch, megablocks]"
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        # top-level keys and group names
        (
            "experimnt=quickstart",
            "experimnt=quickstart: no such key or group; did you mean experiment=quickstart?",
        ),
        ("modle=tiny", "modle=tiny: no such key or group; did you mean model=tiny?"),
        ("sed=3", "sed=3: no such key or group; did you mean seed=3?"),
        # a group's options, also in a sub-folder and in a sweep
        ("model=tinyy", "model=tinyy: model has no option 'tinyy'; did you mean model=tiny?"),
        (
            "experiment=quickstrt",
            "experiment=quickstrt: experiment has no option 'quickstrt'; did you mean experiment=quickstart?",
        ),
        (
            "experiment=zero_vision/rll",
            "experiment=zero_vision/rll: experiment has no option 'zero_vision/rll'; did you mean experiment=zero_vision/rl?",
        ),
        ("model=tiny,smal", "model=tiny,smal: model has no option 'smal'; did you mean model=small?"),
        # nested keys, deleted keys, entries of data.sources
        ("model.moe.top_kk=3", "model.moe.top_kk=3: no such key; did you mean model.moe.top_k=3?"),
        (
            "model.moe.n_routed_expert=8",
            "model.moe.n_routed_expert=8: no such key; did you mean model.moe.n_routed_experts=8?",
        ),
        ("trainer.max_step=3", "trainer.max_step=3: no such key; did you mean trainer.max_steps=3?"),
        ("~model.moe.top_kk", "~model.moe.top_kk: no such key; did you mean ~model.moe.top_k?"),
        (
            "data.sources.text.pth=x",
            "data.sources.text.pth=x: no such key; did you mean data.sources.text.path=x?",
        ),
        ("model.name.x=3", "model.name.x=3: model.name is a value, not a section with keys"),
        # + cannot add a key the typed schema lacks (it would be a dead key in the saved config)
        (
            "+experimnt=quickstart",
            "+experimnt=quickstart: no such key or group (the schema is typed: + adds no new key); did you mean experiment=quickstart?",
        ),
        (
            "+model.moe.n_routed_expert=8",
            "+model.moe.n_routed_expert=8: no such key (the schema is typed: + adds no new key); did you mean model.moe.n_routed_experts=8?",
        ),
        (
            "+data.sources.mine.pth=x",
            "+data.sources.mine.pth=x: no such key; did you mean +data.sources.mine.path=x?",
        ),
    ],
)
def test_unknown_keys_and_groups_name_the_closest_valid_one(override: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        check([override])
    assert str(err.value) == message


def test_what_plus_may_add_still_composes() -> None:
    cfg = compose(["+data.sources.mine.path=x", "+fusion_arm=early", "experiment=zero_vision/rl"])
    assert cfg.data.sources.mine.path == "x" and cfg.phase.name == "rl"


def test_hydras_other_errors_are_one_line() -> None:
    with pytest.raises(ConfigError) as err:
        compose(["a=b=("])
    assert str(err.value) == "cannot parse the override 'a=b=(': mismatched input '=' expecting <EOF>"
    with pytest.raises(
        ConfigError, match=r"Could not find 'hydra/launcher/slrum'; the options are basic, slurm, "
    ):
        compose(["hydra/launcher=slrum"])


def test_typo_inside_a_group_file_is_caught(tmp_path) -> None:
    # Merging an unknown key into the typed node fails and names it.
    from omegaconf import OmegaConf

    base = OmegaConf.structured(RunConfig)
    with pytest.raises((ConfigKeyError, ValidationError)) as err:
        OmegaConf.merge(base, {"model": {"hiden_size": 3}})
    assert "hiden_size" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "named"),
    [
        (["model=tiny", "model.moe.top_k=9"], "model.moe.top_k=9"),
        (["model=tiny", "model.first_k_dense=3"], "model.first_k_dense=3"),
        (["model=tiny", "model.attention.qk_rope_head_dim=7"], "model.attention.qk_rope_head_dim=7"),
        (["model=tiny", "data.seq_len=4096"], "data.seq_len=4096"),
        (["model=tiny", "model.moe.n_routed_experts=0"], "model.moe.n_routed_experts=0"),
        (["model=tiny", "data.batch_size=0"], "data.batch_size=0"),
        (["model=tiny", "data.fusion.vision_ratio=1.5"], "data.fusion.vision_ratio=1.5"),
        (["model=tiny", "data.vision.max_patches=2"], "data.vision.max_patches=2"),
        (["model=tiny", "data.sources.text.weight=-1"], "data.sources.text.weight=-1"),
        (["model=tiny", "model.moe.expert_parallel=3"], "model.moe.expert_parallel=3"),  # 8 experts
        (["model=tiny", "model.moe.expert_parallel=2"], "trainer.devices x trainer.num_nodes = 1"),
        (["model=tiny", "trainer.devices=2", "model.moe.expert_parallel=2"], "runs under trainer=ddp"),
        (["model=tiny", "trainer=ddp", "trainer.dp_replicate=2"], "(HSDP) needs trainer=fsdp2"),
        (["model=tiny", "trainer=fsdp2", "trainer.dp_replicate=3"], "trainer.dp_replicate=3 must divide"),
        (
            [
                "model=tiny",
                "trainer=fsdp2",
                "trainer.devices=4",
                "trainer.dp_replicate=4",
                "model.moe.expert_parallel=2",
            ],
            "must divide the ranks of one replica",
        ),
        (
            ["model=tiny", "trainer=ddp", "model.moe.expert_parallel=2", "phase=rl"],
            "use expert_parallel=1 for rl and parl",
        ),
    ],
)
def test_cross_field_rules_fail_before_building_and_name_keys(overrides: list[str], named: str) -> None:
    cfg = to_run_config(compose(overrides))
    with pytest.raises(ConfigError) as err:
        validate_run(cfg)
    message = str(err.value)
    assert named in message
    assert "\n" not in message  # one line


def test_vision_patching_has_one_source() -> None:
    """data.vision follows model.vision; setting the data side apart fails at validation, one line."""
    cfg = to_run_config(compose(["model=tiny-vl", "model.vision.patch_size=16", "model.vision.merge_size=4"]))
    assert (cfg.data.vision.patch_size, cfg.data.vision.merge_size) == (16, 4)
    validate_run(cfg)
    bad = to_run_config(compose(["model=tiny-vl", "data.vision.patch_size=16"]))
    with pytest.raises(ConfigError, match=r"^data.vision.patch_size=16 but model.vision.patch_size=14"):
        validate_run(bad)
