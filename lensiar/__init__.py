"""lensiar: look inside vision-language models and make them safer without retraining."""

from lensiar import testing
from lensiar.arch import ARCHITECTURES, ArchSpec, UnsupportedArchitectureError
from lensiar.cache import ActivationCache
from lensiar.hooks import HookNameError
from lensiar.lens import Lens
from lensiar.prompt import Prompt
from lensiar.spec import ModelSpec

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "ActivationCache",
    "ArchSpec",
    "HookNameError",
    "Lens",
    "ModelSpec",
    "Prompt",
    "UnsupportedArchitectureError",
    "__version__",
    "testing",
]
