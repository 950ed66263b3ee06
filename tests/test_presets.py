"""The packaged presets and the one recipe-switch rule on every path that builds a config:
a YAML file and its ``base:`` chain, ``--set``, a sweep's ``config:``, ``--set`` and ``space``,
``with_overrides``. Fields set on purpose win; fields holding the previous recipe's values
follow the new recipe."""

import pytest
import yaml

from mtl.config import RECIPES, config_from_dict
from mtl.configs import load_config, packaged_configs, save_config
from mtl.tune.preflight import dry_run_text
from mtl.tune.spec import load_spec

ROOT = ["data.root=/data"]  # the data need not exist to build a config


def _over(name):
    return [] if name == "synthetic" else ROOT


def _expected_switch(before, new):
    """What a switch of ``before`` to recipe ``new`` must give, field by field (written out here,
    independently of mtl.recipes.merge_layers)."""
    tree = before.to_dict()
    old = RECIPES.get(before.pretrain.recipe)
    for k, v in RECIPES.get(new).items():
        if tree["pretrain"][k] == old[k]:
            tree["pretrain"][k] = v
    tree["pretrain"]["recipe"] = new
    return config_from_dict(tree)


@pytest.mark.parametrize("name", packaged_configs())
def test_set_recipe_tf_on_every_packaged_config(name):
    before = load_config(name, _over(name))
    got = load_config(name, [*_over(name), "pretrain.recipe=tf"])
    assert got == _expected_switch(before, "tf")
    assert got == before.with_overrides({"pretrain.recipe": "tf"})  # the same rule on a resolved config


def test_the_110_epoch_trap_is_gone():
    for name in ("mini_1shot", "fc100_1shot", "fc100_5shot", "mini_5shot"):
        cfg = load_config(name, [*ROOT, "pretrain.recipe=tf"])
        assert (cfg.pretrain.epochs, cfg.pretrain.optimizer, cfg.pretrain.lr_step) == (17, "adam", 8), name
    # a value set on purpose stays (tiered_1shot sets 60 epochs for its dataset)
    assert load_config("tiered_1shot", [*ROOT, "pretrain.recipe=tf"]).pretrain.epochs == 60


def test_base_chain_layers_follow_the_same_rule(tmp_path):
    (tmp_path / "a.yaml").write_text("base: mini_1shot\npretrain: {recipe: tf}\n")
    assert load_config(tmp_path / "a.yaml", ROOT) == load_config("mini_1shot", [*ROOT, "pretrain.recipe=tf"])
    (tmp_path / "b.yaml").write_text("base: mini_1shot\npretrain: {epochs: 50}\n")
    (tmp_path / "c.yaml").write_text("base: b.yaml\npretrain: {recipe: tf}\n")
    c = load_config(tmp_path / "c.yaml", ROOT)
    assert (c.pretrain.epochs, c.pretrain.optimizer, c.pretrain.batch_size) == (50, "adam", 64)  # 50 was set
    (tmp_path / "d.yaml").write_text("base: mini_1shot\npretrain: {recipe: tf, epochs: 110}\n")
    assert load_config(tmp_path / "d.yaml", ROOT).pretrain.epochs == 110  # set in the switching layer
    # a switch back in a later layer restores the values the earlier one moved
    (tmp_path / "e.yaml").write_text("pretrain: {recipe: tf}\n")
    (tmp_path / "f.yaml").write_text("base: e.yaml\npretrain: {recipe: pt}\n")
    assert load_config(tmp_path / "f.yaml") == load_config()


def test_mapping_source_is_a_layer_over_its_base():
    got = load_config({"base": "mini_1shot", "pretrain": {"recipe": "tf"}}, ROOT)
    assert got == load_config("mini_1shot", [*ROOT, "pretrain.recipe=tf"])


def _spec(tmp_path, text):
    path = tmp_path / "s.yaml"
    path.write_text(text)
    return path


SPACE = "space:\n  meta.inner_lr: {loguniform: [0.001, 0.1]}\n"


def test_sweep_config_and_set_switch_the_recipe_alike(tmp_path):
    want = load_config("mini_1shot", [*ROOT, "pretrain.recipe=tf"])
    inline = load_spec(_spec(tmp_path, "base: mini_1shot\nconfig: {pretrain: {recipe: tf}}\n" + SPACE), ROOT)
    assert inline.base == want
    over = load_spec(_spec(tmp_path, "base: mini_1shot\n" + SPACE), [*ROOT, "pretrain.recipe=tf"])
    assert over.base == want
    assert "# pretrain.recipe tf supplies epochs, batch_size" in dry_run_text(over)  # --dry-run shows it


def test_sweep_space_searching_the_recipe(tmp_path):
    text = ("base: mini_1shot_pt\nspace:\n  pretrain.recipe: {choice: [pt, tf]}\n"
            "  pretrain.lr: {loguniform: [0.001, 0.1]}\n")
    spec = load_spec(_spec(tmp_path, text), ROOT)
    base = spec.base.to_dict()  # what the driver hands each trial (mtl/tune/trainable.py builds the config so)
    trial = config_from_dict(base).with_overrides({"pretrain.recipe": "tf", "pretrain.lr": 0.02})
    want = load_config("mini_1shot_pt", [*ROOT, "pretrain.recipe=tf", "pretrain.lr=0.02"])
    assert trial == want
    assert (trial.pretrain.epochs, trial.pretrain.head, trial.pretrain.lr) == (17, "linear", 0.02)
    text = dry_run_text(spec)
    assert "# a trial with pretrain.recipe=tf: pretrain.recipe tf supplies epochs, batch_size, optimizer" in text
    assert "pretraining: in the search, one entry per distinct pretraining setup; each pretraining epoch is a result" in text


def test_resolved_config_yaml_states_the_recipe_and_round_trips(tmp_path):
    cfg = load_config("tiered_1shot", [*ROOT, "pretrain.recipe=tf"])
    save_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text()
    assert text.startswith("# pretrain.recipe tf supplies batch_size, optimizer,")
    assert "; set otherwise: epochs=60\n" in text.splitlines(keepends=True)[0]
    assert config_from_dict(yaml.safe_load(text)) == cfg


# ----------------------------------------------------------------------------- the faithful presets


def test_tf_presets_follow_the_tf_code():
    for name in ("mini_1shot_tf", "mini_5shot_tf", "fc100_1shot_tf", "fc100_5shot_tf", "tiered_1shot_tf"):
        c = load_config(name, ROOT)
        assert (c.model.backbone, c.data.image_size, c.model.ss_scope, c.model.bn_mode) == \
               ("resnet12", 84, "3x3", "batch_stats"), name
        p, m = c.pretrain, c.meta
        assert (p.recipe, p.optimizer, p.lr, p.batch_size, p.head, p.selection) == \
               ("tf", "adam", 1e-3, 64, "linear", "last"), name
        assert (m.lr_ss, m.lr_head, m.lr_step, m.lr_gamma, m.lr_floor) == (1e-3, 1e-3, 1000, 0.5, 1e-4), name
        assert (m.meta_batch, m.inner_steps, m.first_order, m.head_init) == (2, 20, False, "xavier"), name
        assert (c.eval.inner_steps, c.eval.protocol) == (100, "paper"), name
        # TF's 0.001 on the support CE summed over N*K images / K = N x the mean CE (0.01 in the HT code)
        assert m.inner_lr == pytest.approx((0.01 if name.startswith("tiered") else 0.001) * m.way), name
        assert c.hard_tasks.ratio == (pytest.approx(1 / 3) if name.startswith("tiered") else 0.0), name
    assert load_config("mini_1shot_tf", ROOT).meta.epochs * 100 == 20_000  # TF run_experiment.py


def test_pt_presets_follow_the_pytorch_code():
    for name in ("mini_1shot_pt", "mini_5shot_pt", "fc100_1shot_pt", "fc100_5shot_pt"):
        c = load_config(name, ROOT)
        assert (c.model.backbone, c.data.image_size, c.model.ss_scope, c.model.bn_mode) == \
               ("resnet25", 80, "all", "train_affine"), name
        p, m = c.pretrain, c.meta
        assert (p.recipe, p.optimizer, p.lr, p.epochs, p.batch_size, p.head, p.selection) == \
               ("pt", "sgd", 0.1, 110, 128, "mlp", "best"), name
        assert (m.lr_ss, m.lr_head, m.first_order, m.meta_batch, m.inner_steps, m.inner_lr) == \
               (1e-4, 1e-3, True, 1, 100, 0.01), name
        assert (c.hard_tasks.ratio, c.eval.protocol, c.eval.query, c.eval.inner_steps) == \
               (0.0, "standard", 15, 100), name


def test_every_preset_header_names_its_code_and_target():
    from mtl.configs import find_config

    for name in packaged_configs():
        head = " ".join(line.lstrip("#").strip() for line in find_config(name).read_text().splitlines()
                        if line.startswith("#"))
        if name.endswith(("_tf", "_pt")):
            assert "Target:" in head and ("Sun et al." in head or "issue" in head), name
            assert "code" in head, name
        elif name != "synthetic":
            assert "not a reproduction" in head, name
