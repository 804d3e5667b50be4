"""``use_quantization``: not implemented yet (the next issue makes it real); turning it on raises
NotImplementedError rather than being ignored."""

from .base import NotYetImplemented


class Quantization(NotYetImplemented):
    flag = "use_quantization"
    claim = "4-8x model size"
    acts_on = "weights and activations (INT8 quantization-aware training, export)"
    paper = "not chosen yet"
