"""Overrides that make the synthetic experiment tiny (shared by several test modules)."""

# Small enough to train in seconds on a 2-core CPU, large enough to learn something.
TINY = [
    "data.synthetic.train_classes=12", "data.synthetic.val_classes=6", "data.synthetic.test_classes=6",
    "data.synthetic.images_per_class=30",
    "pretrain.epochs=2", "pretrain.batch_size=32", "pretrain.val_episodes=20", "pretrain.probe_steps=10",
    "meta.epochs=3", "meta.batches_per_epoch=4", "meta.inner_steps=3",
    "hard_tasks.window=3",
    "eval.val_episodes=20", "eval.episodes=40", "eval.inner_steps=10", "eval.batch_episodes=8",
    "runtime.progress=false",
]
