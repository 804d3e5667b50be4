"""``use_koopman``: not implemented yet (the next issue makes it real); turning it on raises
NotImplementedError rather than being ignored."""

from .base import NotYetImplemented


class Koopman(NotYetImplemented):
    flag = "use_koopman"
    claim = "100x gradient cost"
    acts_on = "a Koopman-operator surrogate for the blocks' dynamics"
    paper = "not chosen yet"
