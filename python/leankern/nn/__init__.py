"""Modules built on leankern's kernels: :class:`QuantLinear` (block-quantized ``nn.Linear``) and
:func:`quantize_model` (swap the linears of any model for it, in place, with a report)."""
from .quant_linear import QuantLinear
from .quantize_model import LayerReport, QuantizeReport, quantize_model
from .sefp_linear import SEFPLinear, set_precision

__all__ = ["QuantLinear", "quantize_model", "QuantizeReport", "LayerReport", "SEFPLinear", "set_precision"]
