"""A short tour of leankern.mx: quantize, inspect, dequantize, rotate, save. Run: python examples/mx_tour.py"""
import torch

import leankern

torch.manual_seed(0)
w = torch.randn(4096, 4096, dtype=torch.bfloat16)

qt = leankern.mx.quantize(w, "mxfp4")  # C++ kernel on CPU, Triton on CUDA
print(qt)
print("codes", tuple(qt.codes.shape), qt.codes.dtype, "| scales", tuple(qt.scales.shape), qt.scales.dtype)
w_hat = qt.dequantize()
print("QSNR mxfp4: %.2f dB" % leankern.testing.qsnr_db(w.float(), w_hat.float()))

nv = leankern.mx.quantize(w, "nvfp4")  # two-level: e4m3 block scales x fp32 per-tensor scale
print("nvfp4 global scale %.6g, %.2f bits/element" % (float(nv.global_scale), nv.bits_per_element))

# Random Hadamard rotation: same rotation on both GEMM operands keeps x @ w.T
x = torch.randn(8, 4096)
x[:, 11] *= 40  # an outlier channel
xr, wr = leankern.mx.rotate(x, 32, seed=1), leankern.mx.rotate(w.float(), 32, seed=1)
print("max |xr wr^T - x w^T| = %.2e" % (xr @ wr.T - x @ w.float().T).abs().max())
for name, t in (("plain", x), ("rotated", xr)):
    q = leankern.mx.quantize(t, "nvint4").dequantize()
    print("nvint4 QSNR of %-7s activations: %.2f dB" % (name, leankern.testing.qsnr_db(t, q)))

# Every backend agrees bit for bit with the reference
with leankern.use_backend("ref"):
    ref = leankern.mx.quantize(w[:64], "mxfp4")
print("C++ == reference:", torch.equal(leankern.mx.quantize(w[:64], "mxfp4").codes, ref.codes))

sd = qt.state_dict(prefix="layer0.")  # tensors only: safetensors-friendly
print(sorted(sd), torch.equal(leankern.MXTensor.from_state_dict(sd, "layer0.").dequantize(), w_hat))
