"""``use_physics_informed``: not implemented yet (the next issue makes it real); turning it on raises
NotImplementedError rather than being ignored."""

from .base import NotYetImplemented


class PhysicsInformed(NotYetImplemented):
    flag = "use_physics_informed"
    claim = "10x fewer training steps"
    acts_on = "an energy-conservation loss between blocks"
    paper = "not chosen yet"
