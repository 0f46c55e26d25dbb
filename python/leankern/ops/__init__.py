"""Public torch ops (``torch.ops.leankern.*``) and their Python front-ends."""
from . import mx

__all__ = ["mx"]
