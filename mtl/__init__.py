"""Meta-Transfer Learning (MTL) for few-shot image classification, searchable with Ray Tune.

Nothing runs on import. Entry points: ``python -m mtl train|evaluate`` for one experiment,
``launch/tune.py`` for a hyperparameter search.
"""

from mtl.config import Config, load_config

__all__ = ["Config", "load_config"]
__version__ = "0.1.0"
