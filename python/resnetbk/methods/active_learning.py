"""``use_active_learning``: not implemented yet (the next issue makes it real); turning it on raises
NotImplementedError rather than being ignored."""

from .base import NotYetImplemented


class ActiveLearning(NotYetImplemented):
    flag = "use_active_learning"
    claim = "50% less data"
    acts_on = "which training windows are used"
    paper = "not chosen yet"
