"""The experiment config: loading, overrides, validation, packaged files."""

import pytest
import yaml

from mtl.config import Config, all_keys, check_against_data, config_from_dict
from mtl.configs import find_config, load_config, packaged_configs, save_config
from mtl.errors import ConfigError
from mtl.schema import parse_override


def test_defaults_are_resolved_from_the_pt_recipe():
    cfg = load_config()
    assert cfg.pretrain.optimizer == "sgd" and cfg.pretrain.lr == 0.1 and cfg.pretrain.nesterov
    assert cfg.pretrain.weight_decay == 5e-4 and cfg.pretrain.augment


def test_recipe_switch_keeps_explicit_values():
    cfg = load_config(None, ["pretrain.recipe=tf", "pretrain.epochs=3"])
    assert cfg.pretrain.optimizer == "adam" and cfg.pretrain.lr == 1e-3 and cfg.pretrain.epochs == 3
    back = cfg.with_overrides({"pretrain.recipe": "pt"})
    assert back.pretrain.optimizer == "sgd" and back.pretrain.epochs == 3


def test_dotted_overrides_and_yaml_scalars():
    cfg = load_config(None, ["meta.inner_lr=0.02", "meta.first_order=true", "pretrain.checkpoint=null",
                             "meta.lr_ss=1e-3", "eval.episodes=2000"])
    assert cfg.meta.inner_lr == 0.02 and cfg.meta.first_order is True and cfg.meta.lr_ss == 1e-3
    assert cfg.eval.episodes == 2000
    assert parse_override("data.root=/a=b") == ("data.root", "/a=b")


def test_every_key_can_be_overridden():
    cfg = load_config()
    for key in all_keys():
        assert load_config(None, {key: cfg.get(key)}) == cfg, key


@pytest.mark.parametrize("override, pattern", [
    (["meta.innr_lr=0.1"], r"unknown config key 'meta.innr_lr'; did you mean meta.inner_lr"),
    (["meta.inner_lr=-0.1"], r"meta.inner_lr .* must be positive"),
    (["meta.inner_lr=0"], r"meta.inner_lr .* must be positive"),
    (["meta.inner_steps=0"], r"meta.inner_steps = 0 must be in \[1, 100000\]"),
    (["eval.inner_steps=0"], r"eval.inner_steps = 0 must be in \[1, 100000\]"),
    (["meta.way=five"], r"meta.way must be an int"),
    (["meta.way=1"], r"meta.way .* at least 2"),
    (["meta.first_order=1"], r"meta.first_order must be a bool"),
    (["model.bn_mode=train"], r"model.bn_mode must be one of 'frozen', 'train_affine', 'batch_stats'"),
    (["hard_tasks.ratio=1.0"], r"hard_tasks.ratio .* \[0, 1\)"),
    (["meta=3"], r"'meta' is a config section"),
    (["nonsense=3"], r"unknown config key 'nonsense'"),
    (["data.dataset=mini"], r"data.root is not set .*--set data.root="),
    (["foo"], r"not of the form key=value"),
])
def test_bad_values_fail_with_one_line_naming_the_key(override, pattern):
    with pytest.raises(ConfigError, match=pattern) as e:
        load_config(None, override)
    assert "\n" not in str(e.value)


def test_unknown_yaml_keys_and_malformed_files(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("meta:\n  way: 5\n  shots: 1\n")
    with pytest.raises(ConfigError, match="unknown config key 'meta.shots'; did you mean meta.shot"):
        load_config(p)
    p.write_text("meta: [1, 2\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*c.yaml at line"):
        load_config(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(p)
    p.write_text("meta: 3\n")
    with pytest.raises(ConfigError, match="section 'meta' must be a mapping"):
        load_config(p)
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_base_chains_and_cycles(tmp_path):
    (tmp_path / "a.yaml").write_text("meta: {way: 3, shot: 2}\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\nmeta: {shot: 4}\n")
    cfg = load_config(tmp_path / "b.yaml")
    assert (cfg.meta.way, cfg.meta.shot) == (3, 4)
    (tmp_path / "c.yaml").write_text("base: d.yaml\n")
    (tmp_path / "d.yaml").write_text("base: c.yaml\n")
    with pytest.raises(ConfigError, match="includes itself"):
        load_config(tmp_path / "c.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(None, ["meta.inner_lr=0.03", "pretrain.recipe=tf"])
    save_config(cfg, tmp_path / "c.yaml")
    assert config_from_dict(yaml.safe_load((tmp_path / "c.yaml").read_text())) == cfg
    assert load_config(tmp_path / "c.yaml") == cfg


def test_packaged_configs_load_by_name_and_path():
    names = packaged_configs()
    for required in ("synthetic", "mini_1shot", "mini_5shot", "fc100_1shot", "fc100_5shot", "tiered_1shot"):
        assert required in names
    for name in names:
        overrides = [] if name == "synthetic" else ["data.root=/data"]
        assert isinstance(load_config(name, overrides), Config)
        assert load_config(str(find_config(name)), overrides) == load_config(name, overrides)


def test_episode_shapes_checked_against_the_data():
    cfg = load_config(None, ["meta.way=5", "meta.shot=5", "meta.query=15"])
    ok = {"train": (64, 600), "val": (16, 600), "test": (20, 600)}
    check_against_data(cfg, ok)
    with pytest.raises(ConfigError, match=r"meta.way = 5 but the val split has only 4 classes"):
        check_against_data(cfg, {**ok, "val": (4, 600)})
    with pytest.raises(ConfigError, match=r"meta.shot \+ meta.query \(5\+15\) = 20 images per class but a train class has only 12"):
        check_against_data(cfg, {**ok, "train": (64, 12)})
    with pytest.raises(ConfigError, match=r"eval query"):
        check_against_data(cfg, {**ok, "test": (20, 19)})


def test_validation_queries_are_checked_against_the_val_split_apart_from_the_test_protocol():
    ok = {"train": (64, 600), "val": (16, 20), "test": (20, 600)}
    paper = load_config(None, ["meta.shot=5", "eval.protocol=paper", "eval.val_query=15"])
    check_against_data(paper, ok)  # validation: 5 + 15 = 20, what a val class holds
    with pytest.raises(ConfigError, match=r"^meta.shot \+ eval.val_query \(5\+16\) = 21 images per class but a val "
                                          r"class has only 20; lower eval.val_query \(validation queries per class\) "
                                          r"to at most 15$"):
        check_against_data(paper.with_overrides(["eval.val_query=16"]), ok)
    with pytest.raises(ConfigError, match=r"val class has only 5; lower meta.shot$"):  # no query fits beside the shot
        check_against_data(paper, {**ok, "val": (16, 5)})
    check_against_data(paper, {**ok, "test": (20, 10)})  # the test: Q = K = 5
    with pytest.raises(ConfigError, match=r"eval query \(5\+5\) = 10 images per class but a test class has only 9"):
        check_against_data(paper, {**ok, "test": (20, 9)})
    standard = load_config(None, ["meta.shot=5", "eval.query=10", "eval.val_query=15"])
    check_against_data(standard, {**ok, "test": (20, 15)})
    with pytest.raises(ConfigError, match=r"eval.val_query \(5\+15\) = 20 images per class but a val class has only"):
        check_against_data(standard, {**ok, "val": (16, 19)})  # 19, while the test needs 5 + 10
