"""leankern: kernels that make LLM inference do less work.

Families: :mod:`leankern.mx` (MX/NV block formats). Each op has a pure-PyTorch reference
(:mod:`leankern.ref`), a C++ CPU kernel and a Triton GPU kernel behind one ``torch.ops.leankern``
op; :func:`use_backend` forces one for tests and benchmarks.
"""
from ._backend import extension, extension_error, use_backend
from . import formats
from . import testing
from . import ops
from .ops import mx
from .ops.mx import MXTensor

__version__ = "0.1.0"
__all__ = ["mx", "MXTensor", "formats", "testing", "use_backend", "extension", "extension_error", "__version__"]
