"""Public ops. Each is a torch.library custom op in the ``vpengine`` namespace
with a fake impl and autograd; the backend is chosen per call (see
:mod:`vpengine.backends`)."""
from ..backends import BackendUnavailable, use_backend
from .masked_attention import masked_attention
from .patchify import patchify
from .spacetime_attention import spacetime_attention
from .tokens import decoder_input, token_gather, token_scatter, token_shuffle, token_unshuffle

__all__ = [
    "BackendUnavailable",
    "decoder_input",
    "masked_attention",
    "patchify",
    "spacetime_attention",
    "token_gather",
    "token_scatter",
    "token_shuffle",
    "token_unshuffle",
    "use_backend",
]
