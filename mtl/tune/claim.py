"""One driver per sweep name: :class:`mtl.claim.SweepClaim`, the claim a launch holds on
``<storage>/<name>`` while it runs (the claim mechanism is :mod:`mtl.claim`, shared with
``python -m mtl train --out``)."""

from mtl.claim import SweepClaim

__all__ = ["SweepClaim"]
