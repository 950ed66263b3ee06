"""Meta-Transfer Learning (MTL) for few-shot image classification, searchable with Ray Tune.

Nothing runs on import. Entry points: ``python -m mtl train|evaluate`` for one experiment,
``launch/tune.py`` for a hyperparameter search, :func:`mtl.trial.run_trial` for one trial.
"""

from mtl.config import Config
from mtl.configs import load_config

__all__ = ["Config", "load_config"]
__version__ = "0.1.0"
