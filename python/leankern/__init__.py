"""leankern: kernels that make LLM inference do less work.

Families: :mod:`leankern.mx` (MX/NV block formats), :mod:`leankern.specdec` (speculative verification),
:mod:`leankern.vocab` (vocabulary-subset LM head),
:mod:`leankern.sefp` (shared-exponent FP: one stored copy, any mantissa width), :mod:`leankern.moe`
(MoE dispatch that skips experts: MoDES). Each family is one subpackage: its public
API, its reference (``ref.py``, the definition of the numerics) and its op declarations
(``ops.py``). Each op is one ``torch.ops.leankern`` op whose C++ (CPU) or Triton/CUDA (GPU)
kernel is registered with the torch dispatcher; :func:`use_backend` forces one for tests and
benchmarks. ``docs/architecture.md`` describes the layers.
"""
from .core import backend_for, extension, extension_error, registered_ops, use_backend
from . import testing
from . import mx
from .mx import MXTensor
from . import output_cache
from . import nn
from . import specdec
from . import vocab
from . import sefp
from . import moe
from .nn import QuantLinear, quantize_model
from .nn import set_precision, SEFPLinear

__version__ = "0.1.0"
__all__ = ["mx", "MXTensor", "testing", "use_backend", "backend_for", "registered_ops", "extension",
           "extension_error", "output_cache", "nn", "specdec", "vocab", "sefp", "moe", "QuantLinear", "quantize_model", "__version__",
           "set_precision", "SEFPLinear"]
