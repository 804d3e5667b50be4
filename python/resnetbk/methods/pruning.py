"""``use_pruning``: not implemented yet (the next issue makes it real); turning it on raises
NotImplementedError rather than being ignored."""

from .base import NotYetImplemented


class Pruning(NotYetImplemented):
    flag = "use_pruning"
    claim = "4x model size"
    acts_on = "weights and experts (magnitude pruning)"
    paper = "not chosen yet"
