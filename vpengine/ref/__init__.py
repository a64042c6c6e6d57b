"""Pure-PyTorch references of every op: the specification that tests,
benchmarks and CPU fallbacks share."""
from .attention import masked_attention_ref
from .spacetime_attention import NEG, spacetime_attention_ref

__all__ = ["NEG", "masked_attention_ref", "spacetime_attention_ref"]
