"""Ray Tune sweeps of MTL configs.

spec (the YAML) and space (its distributions), preflight (checks before Ray, the dry-run text),
cluster (Ray, resources, signals), sweep (the driver: Tuner, the summary), trainable (the adapter
to mtl.trial), outcome (how each trial ended), progress and callbacks (what the terminal and
MLflow get while trials run), tasks (the Ray tasks after the search), race (the finalists on
fresh validation episodes), finals (the comparisons on the test episodes, seed re-runs), summary
(the verdict and the printed table). The driver produces :mod:`mtl.results`; :mod:`mtl.tracking`
and :mod:`mtl.report` consume them and never import this package.
"""


class SweepInterrupted(Exception):
    """The sweep stopped before all its trials finished (Ctrl+C, SIGTERM); Ray Tune saved its
    state and ``launch/tune.py ... --resume`` continues it. Defined here so that the launcher can
    catch it without importing the driver (torch, ray)."""

    def __init__(self, name: str, finished: int, total: int, exp: object) -> None:
        super().__init__(f"sweep {name} interrupted with {finished} of {total} trials finished; "
                         f"its state is saved in {exp}")
        self.finished, self.total, self.exp = finished, total, exp
