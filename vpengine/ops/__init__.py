"""Public ops. Each is a torch.library custom op in the ``vpengine`` namespace
with a fake impl and autograd; the backend is chosen per call (see
:mod:`vpengine.backends`)."""
from ..backends import BackendUnavailable, use_backend
from .masked_attention import masked_attention
from .spacetime_attention import spacetime_attention

__all__ = ["BackendUnavailable", "masked_attention", "spacetime_attention", "use_backend"]
