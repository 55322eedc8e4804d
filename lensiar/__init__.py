"""lensiar: look inside vision-language models and make them safer without retraining."""

from lensiar import testing
from lensiar.arch import ARCHITECTURES, ArchSpec, UnsupportedArchitectureError
from lensiar.bundle import BundleError, RevisionBundle
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
    "BundleError",
    "HookNameError",
    "Lens",
    "ModelSpec",
    "Prompt",
    "RevisionBundle",
    "UnsupportedArchitectureError",
    "__version__",
    "testing",
]
