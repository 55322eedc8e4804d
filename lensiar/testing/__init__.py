"""Small random models and helpers for tests and examples."""

from lensiar.testing.zoo import list_tiny_models, tiny_model

__all__ = ["list_tiny_models", "tiny_model"]

from lensiar.testing.assembled import smolvlm_around_smollm2

__all__ += ["smolvlm_around_smollm2"]
