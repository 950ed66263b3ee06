"""Speed benchmark: every throughput figure of the library next to its backbone-only floor.

``python -m mtl.bench [--set KEY=VALUE ...] [--quick] [--json PATH]`` (e.g. ``--set trials.n=4``)
measures, in one run on one device: pretraining images/s through the real data path,
meta-training episodes/s (5-way 1/5-shot, 20/100 inner steps, meta-batch 1/4), seconds for
600 test episodes, peak CUDA memory of a trial, and N concurrent trials against one alone.
Each figure comes with the floor of the same network measured in the same run and their
ratio (see :mod:`mtl.bench.figures` for the definitions). The settings are one declared tree
(:mod:`mtl.bench.settings`; ``--help`` lists every key). Importing this package imports
nothing but the standard library; it never needs Ray, Optuna or MLflow.

Results measured on GPUs are committed under ``mtl/bench/results/`` (see
``launch/gpu_bench.sh``).
"""
