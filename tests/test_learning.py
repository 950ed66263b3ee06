"""The learning test: pretraining + meta-transfer on the synthetic set beats chance and raw pixels."""

import pytest

from mtl.configs import load_config
from mtl.data import load_split
from mtl.data.baselines import raw_pixel_nearest_centroid
from mtl.experiment import run_experiment


@pytest.mark.slow
def test_mtl_learns_far_above_chance_and_raw_pixels(tmp_path):
    # 16 px (a third of the time of 32 px): measured test 0.581 ± 0.015 against raw pixels 0.259
    cfg = load_config("synthetic", ["data.image_size=16", "pretrain.epochs=4", "pretrain.val_episodes=40", "meta.epochs=2",
                                    "eval.val_episodes=60", "eval.episodes=200", "runtime.progress=false"])
    res = run_experiment(cfg, tmp_path / "run")
    baseline = raw_pixel_nearest_centroid(load_split(cfg.data, "test", progress=False), way=5, shot=1, query=15,
                                          episodes=200, seed=0)
    chance = 1 / cfg.meta.way
    print(f"test {res['test_acc']:.3f} ± {res['test_ci95']:.3f}, raw-pixel centroid {baseline:.3f}, chance {chance}")
    assert res["test_acc"] - res["test_ci95"] > chance + 0.2  # far above chance, beyond the CI
    assert res["test_acc"] - res["test_ci95"] > baseline + 0.15


@pytest.mark.slow
def test_meta_transfer_improves_on_its_starting_point(tmp_path):
    """Scale, shift and the head initialisation learn: validation accuracy on the fixed bank
    rises above that of the freshly converted model (same backbone, same episodes)."""
    from mtl.pretraining import pretrainer
    from mtl.runtime import make_env
    from mtl.trial import load_data, meta_trainer

    # 16 px: half the time of 32 px; measured 0.470 -> 0.515 with a CI of 0.017 on this bank
    cfg = load_config("synthetic", ["data.image_size=16", "data.synthetic.train_classes=32", "data.synthetic.val_classes=10",
                                    "meta.head_init=kaiming", "pretrain.lr_step=10", "pretrain.augment=true",
                                    "pretrain.crop_scale=0.5", "pretrain.epochs=4", "meta.epochs=6", "meta.batches_per_epoch=15",
                                    "eval.val_episodes=150", "eval.inner_steps=20", "hard_tasks.ratio=0",
                                    "runtime.progress=false"])
    env = make_env(cfg.runtime)
    data = load_data(cfg, env)
    pre = pretrainer(cfg, env, data)
    while not pre.done:
        pre.run_epoch()
    meta = meta_trainer(cfg, env, data, pre.backbone_payload()["state"])
    start = meta.evaluate(data["val"], meta.val_bank)
    while not meta.done:
        meta.run_epoch()
    print(f"val {start['acc']:.3f} -> {meta.best_acc:.3f} (ci {start['ci95']:.3f})")
    assert meta.best_acc > start["acc"] + start["ci95"]
