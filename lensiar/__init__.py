"""lensiar: look inside vision-language models and make them safer without retraining."""

from lensiar import testing
from lensiar.arch import ARCHITECTURES, ArchSpec, UnsupportedArchitectureError
from lensiar.bundle import BundleError, RevisionBundle
from lensiar.cache import ActivationCache
from lensiar.features import SampleActivations, sample_activations
from lensiar.hooks import HookNameError
from lensiar.lens import Lens
from lensiar.probes import Gate, ProbeResult, probe_heads
from lensiar.prompt import Prompt
from lensiar.revision import RevisionError
from lensiar.samples import STRATEGIES, Sample, SampleSet, build_samples
from lensiar.spec import ModelSpec
from lensiar.vectors import METHODS, extract

__version__ = "0.1.0"

__all__ = [
    "ARCHITECTURES",
    "METHODS",
    "STRATEGIES",
    "ActivationCache",
    "ArchSpec",
    "BundleError",
    "Gate",
    "HookNameError",
    "Lens",
    "ModelSpec",
    "ProbeResult",
    "Prompt",
    "RevisionBundle",
    "RevisionError",
    "Sample",
    "SampleActivations",
    "SampleSet",
    "UnsupportedArchitectureError",
    "__version__",
    "build_samples",
    "extract",
    "probe_heads",
    "sample_activations",
    "testing",
]
