"""``use_curriculum``: not implemented yet (the next issue makes it real); turning it on raises
NotImplementedError rather than being ignored."""

from .base import NotYetImplemented


class Curriculum(NotYetImplemented):
    flag = "use_curriculum"
    claim = "30% fewer steps"
    acts_on = "the order of training windows"
    paper = "not chosen yet"
