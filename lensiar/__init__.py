"""lensiar: look inside vision-language models and make them safer without retraining."""

import warnings as _warnings

# tqdm.auto (imported by transformers) warns in a Jupyter without ipywidgets and then prints plain-text bars,
# which is what lensiar.progress does anyway: the warning says nothing a user can act on
_warnings.filterwarnings("ignore", message="IProgress not found")

from lensiar import prompts, store, testing
from lensiar.arch import ARCHITECTURES, ArchSpec, UnsupportedArchitectureError
from lensiar.bundle import BundleError, RevisionBundle
from lensiar.cache import ActivationCache
from lensiar.export import export_control_vector
from lensiar.features import SampleActivations, sample_activations
from lensiar.hooks import HookNameError
from lensiar.lens import Lens
from lensiar.probes import Gate, ProbeResult, probe_heads, split_averaged_layer_accuracy
from lensiar.prompt import Prompt
from lensiar.revision import RevisionError
from lensiar.samples import STRATEGIES, Sample, SampleSet, build_samples
from lensiar.spec import ModelSpec
from lensiar.store import VectorStore
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
    "VectorStore",
    "__version__",
    "build_samples",
    "export_control_vector",
    "extract",
    "probe_heads",
    "prompts",
    "sample_activations",
    "split_averaged_layer_accuracy",
    "store",
    "testing",
]
