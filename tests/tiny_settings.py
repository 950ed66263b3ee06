"""The one place for the overrides that make synthetic runs tiny (every test module takes them from here)."""

# Small enough to train in seconds on a 2-core CPU, large enough to learn something: 16 px
# images (a third of the time of 32 px; the sweep-sized run still tests at 48% 5-way 1-shot).
_COMMON = [
    "data.image_size=16",
    "data.synthetic.val_classes=6", "data.synthetic.test_classes=6", "data.synthetic.images_per_class=30",
    "pretrain.batch_size=32", "pretrain.val_episodes=20", "pretrain.probe_steps=10",
    "meta.batches_per_epoch=4", "hard_tasks.window=3",
    "eval.val_episodes=20", "eval.episodes=40", "eval.inner_steps=10", "eval.batch_episodes=8",
    "runtime.progress=false",
]

# one experiment (python -m mtl train, run_trial, the trainers)
TINY = [*_COMMON, "data.synthetic.train_classes=12", "pretrain.epochs=2", "meta.epochs=3", "meta.inner_steps=3"]

# the smoke sweep shrunk to seconds per trial; the winner still tests far above chance
# (about 50% 5-way 1-shot against 20%)
TINY_SWEEP = [*_COMMON, "data.synthetic.train_classes=24", "pretrain.epochs=4"]
