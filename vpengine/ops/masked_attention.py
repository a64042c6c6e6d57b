"""Attention with an explicit mask for the text tower and the pooler.

These stacks are a few percent of the model's work, so they run the reference
math directly (plain PyTorch autograd, any device); the op exists so the model
never writes attention math itself.
"""
from ..ref.attention import masked_attention_ref as masked_attention

__all__ = ["masked_attention"]
