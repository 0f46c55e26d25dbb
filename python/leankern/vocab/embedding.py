"""Offloaded input embedding (VocabTailor, arXiv 2508.15229): the [V, H] table stays in CPU memory
(pinned when the compute device is CUDA) or in a memory-mapped file, and each call gathers only
the rows it needs and moves them to the compute device.

The table is a plain attribute, not a Parameter or buffer: ``model.to("cuda")`` / ``.half()`` do
not move or convert it, and ``state_dict()`` does not contain it (save the original checkpoint,
not the patched model). The compute device and the output dtype are fixed at construction.
"""
from __future__ import annotations

import json
import os
import threading
import warnings

import numpy as np
import torch
from torch import nn

__all__ = ["OffloadedEmbedding"]

# torch dtype -> numpy dtype of the stored bytes (little-endian; bf16 is read as int16, then viewed)
_NUMPY_DTYPES = {torch.float32: "<f4", torch.float16: "<f2", torch.bfloat16: "<i2", torch.float64: "<f8"}
_SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header
_STAGING_LOCK = threading.Lock()  # OffloadedEmbedding._gather_to_device on CUDA (its pinned staging buffer)


def _check_dtype(name: str, dtype) -> torch.dtype:
    if dtype not in _NUMPY_DTYPES:
        raise ValueError(f"{name}: expected one of {sorted(str(d) for d in _NUMPY_DTYPES)}, got {dtype}")
    return dtype


def _memmap_table(path, shape, dtype: torch.dtype, offset: int) -> tuple:
    """(torch view [V, H], numpy memmap) of ``path``; nothing is read until rows are indexed.

    mode "c" (copy-on-write) maps the file privately: the tensor is writable without ever
    changing the file, and pages the process never writes stay shared with the page cache.
    """
    V, H = shape
    nbytes = V * H * torch.empty((), dtype=dtype).element_size()
    size = os.path.getsize(path)
    if offset + nbytes > size:
        raise ValueError(f"{path}: a [{V}, {H}] {dtype} table at offset {offset} needs {offset + nbytes} bytes, "
                         f"the file has {size}")
    mm = np.memmap(path, dtype=np.dtype(_NUMPY_DTYPES[dtype]), mode="c", offset=offset, shape=(V, H))
    table = torch.from_numpy(mm)
    return (table.view(torch.bfloat16) if dtype == torch.bfloat16 else table), mm


def _safetensors_entry(path, tensor_name: str) -> tuple:
    """(dtype, (V, H), absolute byte offset) of ``tensor_name``: the 8-byte little-endian header
    length, the JSON header, then the data; offsets in the header are relative to the data."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else -1
        if n < 2 or n > min(size - 8, _MAX_HEADER):
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file size {size})")
        try:
            header = json.loads(f.read(n))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: not a safetensors file (bad JSON header: {e})") from None
    names = sorted(k for k in header if k != "__metadata__") if isinstance(header, dict) else []
    if tensor_name == "__metadata__" or tensor_name not in names:
        raise KeyError(f"tensor_name: {tensor_name!r} is not in {path}; it holds {names[:8]}"
                       + (f" and {len(names) - 8} more" if len(names) > 8 else ""))
    entry = header[tensor_name]
    dtype = _SAFETENSORS_DTYPES.get(entry.get("dtype"))
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if dtype is None:
        raise ValueError(f"{path}: tensor {tensor_name!r} has dtype {entry.get('dtype')!r}, "
                         f"expected one of {sorted(_SAFETENSORS_DTYPES)}")
    if not (isinstance(shape, list) and len(shape) == 2 and all(isinstance(s, int) and s > 0 for s in shape)):
        raise ValueError(f"{path}: tensor {tensor_name!r}: expected a 2-D shape [V, H] with V, H >= 1, got {shape}")
    nbytes = shape[0] * shape[1] * torch.empty((), dtype=dtype).element_size()
    if not (isinstance(offsets, list) and len(offsets) == 2 and offsets[1] - offsets[0] == nbytes
            and 0 <= offsets[0] and 8 + n + offsets[1] <= size):
        raise ValueError(f"{path}: tensor {tensor_name!r}: data_offsets {offsets} do not hold {nbytes} bytes "
                         f"inside the file ({size} bytes)")
    return dtype, tuple(shape), 8 + n + offsets[0]


class OffloadedEmbedding(nn.Module):
    """Embedding whose table never lives on the compute device.

    ``forward`` gathers each distinct id's row once (from CPU memory or the mapped file), moves
    those rows to ``device`` and expands them to the input's shape there; on CUDA the rows go
    through a reusable pinned staging buffer with a non-blocking copy. Outputs are bit-identical
    to ``F.embedding(input_ids, table)`` (converted to ``dtype`` when given).

    Use it as a drop-in for ``model.get_input_embeddings()`` (``model.set_input_embeddings(m)``)
    after loading; do not call ``tie_weights`` / ``resize_token_embeddings`` afterwards.
    ``weight`` is the CPU table, so ``weight.dtype`` is the stored dtype and ``weight.device`` is
    cpu: code that moves ``input_ids`` to ``embedding.weight.device`` still works, because
    ``forward`` accepts ids on any device and always returns on ``device``.

    Parameters
    ----------
    weight : torch.Tensor
        The table, float32 / float16 / bfloat16 / float64. Shape: [V, H]. A contiguous CPU tensor
        is kept as is (shared, not copied) unless it must be pinned; others are copied to CPU.
    device : torch.device or str, optional
        Compute device of the outputs (default cpu).
    padding_idx : int, optional
        Recorded like ``nn.Embedding.padding_idx`` (it only matters for gradients, which this
        module does not compute); negative values count from the end.
    dtype : torch.dtype, optional
        Output dtype (default: the table's); the conversion happens on ``device`` after the copy.
    pin_memory : bool, optional
        Pin the table (default: when ``device`` is CUDA and CUDA is available). Pinning copies it.

    Shape: input_ids [...] (int32 / int64, any device) -> [..., H] on ``device``.
    """

    def __init__(self, weight: torch.Tensor, *, device=None, padding_idx: int | None = None,
                 dtype: torch.dtype | None = None, pin_memory: bool | None = None):
        super().__init__()
        if not isinstance(weight, torch.Tensor):
            raise TypeError(f"weight: expected a torch.Tensor [V, H], got {type(weight).__name__}")
        if weight.dim() != 2 or weight.shape[0] < 1 or weight.shape[1] < 1:
            raise ValueError(f"weight: expected a 2-D tensor [V, H] with V, H >= 1, got shape {tuple(weight.shape)}")
        _check_dtype("weight.dtype", weight.dtype)
        self.num_embeddings, self.embedding_dim = (int(s) for s in weight.shape)
        self.device = torch.device(device if device is not None else "cpu")
        self.dtype = _check_dtype("dtype", dtype if dtype is not None else weight.dtype)
        self.padding_idx = self._normalise_padding_idx(padding_idx)
        cuda = self.device.type == "cuda" and torch.cuda.is_available()
        table = weight.detach().to("cpu").contiguous()
        if (cuda if pin_memory is None else pin_memory) and not table.is_pinned():
            table = table.pin_memory()
        self._table = table  # plain attribute: not a Parameter or buffer (see the module docstring)
        self._memmap = None  # the numpy memmap when the table is a mapped file
        self._storage = "pinned" if table.is_pinned() else "cpu"
        self._staging = None  # pinned [capacity, H] buffer for CUDA copies
        self._copy_done = None  # CUDA event: the last copy out of the staging buffer finished

    def _normalise_padding_idx(self, padding_idx):
        if padding_idx is None:
            return None
        V = self.num_embeddings
        if isinstance(padding_idx, bool) or not isinstance(padding_idx, int) or not -V <= padding_idx < V:
            raise ValueError(f"padding_idx: expected None or an int in [-{V}, {V}), got {padding_idx!r}")
        return padding_idx % V

    # ------------------------------------------------------------------------------ constructors
    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, device=None, *, dtype=None, pin_memory=None):
        """From an ``nn.Embedding`` (its CPU weight is shared, a GPU weight is copied to CPU; drop
        the original module to free its memory). ``max_norm`` is refused (it rewrites rows in
        forward); subclasses that change ``forward`` (e.g. a scaled embedding) get a warning."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding: expected an nn.Embedding, got {type(embedding).__name__}")
        if embedding.max_norm is not None:
            raise ValueError(f"embedding.max_norm: expected None (rows are renormalised in forward), "
                             f"got {embedding.max_norm}")
        if type(embedding).forward is not nn.Embedding.forward:
            warnings.warn(f"{type(embedding).__name__} overrides nn.Embedding.forward; OffloadedEmbedding "
                          "returns the plain table rows (any scaling in that forward is not applied)", stacklevel=2)
        return cls(embedding.weight, device=device, padding_idx=embedding.padding_idx, dtype=dtype,
                   pin_memory=pin_memory)

    @classmethod
    def _mapped(cls, path, shape, file_dtype, offset, device, dtype):
        table, mm = _memmap_table(path, shape, file_dtype, offset)
        module = cls(table, device=device, dtype=dtype, pin_memory=False)  # a mapped file is never pinned
        module._memmap = mm
        module._storage = f"mmap:{os.fspath(path)}"
        return module

    @classmethod
    def from_safetensors(cls, path, tensor_name: str, device=None, *, dtype=None):
        """Memory-map tensor ``tensor_name`` of a .safetensors file (F32/F16/BF16/F64, 2-D). The
        header is parsed here (no dependency on the ``safetensors`` package); rows are read from
        the file on demand."""
        file_dtype, shape, offset = _safetensors_entry(os.fspath(path), tensor_name)
        return cls._mapped(path, shape, file_dtype, offset, device, dtype)

    @classmethod
    def from_raw(cls, path, shape, dtype: torch.dtype, offset: int = 0, device=None, *, out_dtype=None):
        """Memory-map a raw row-major little-endian [V, H] table of ``dtype`` starting at byte
        ``offset`` of ``path``; ``out_dtype`` is the output dtype (default ``dtype``)."""
        if not (isinstance(shape, (tuple, list)) and len(shape) == 2
                and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape)):
            raise ValueError(f"shape: expected (V, H) with V, H >= 1, got {shape!r}")
        if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
            raise ValueError(f"offset: expected an int >= 0, got {offset!r}")
        return cls._mapped(path, tuple(shape), _check_dtype("dtype", dtype), offset, device, out_dtype)

    # ---------------------------------------------------------------------------------- forward
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if not isinstance(input_ids, torch.Tensor):
            raise TypeError(f"input_ids: expected an integer tensor, got {type(input_ids).__name__}")
        if input_ids.dtype.is_floating_point or input_ids.dtype.is_complex or input_ids.dtype == torch.bool:
            raise TypeError(f"input_ids: expected an integer tensor (int32 or int64), got dtype {input_ids.dtype}")
        flat = input_ids.detach().reshape(-1).to("cpu", torch.int64)  # [N]; the table is on the host
        V = self.num_embeddings
        if flat.numel():
            lo, hi = int(flat.min()), int(flat.max())
            if lo < 0 or hi >= V:
                raise IndexError(f"input_ids: expected ids in [0, {V}) (num_embeddings), got min {lo}, max {hi}")
        unique_ids, inverse = torch.unique(flat, sorted=True, return_inverse=True)  # [U], [N]
        rows = self._gather_to_device(unique_ids).to(self.dtype)  # [U, H] on device
        out = rows.index_select(0, inverse.to(self.device))  # [N, H]: repeats expanded on the device
        return out.reshape(*input_ids.shape, self.embedding_dim)

    def _gather_to_device(self, unique_ids: torch.Tensor) -> torch.Tensor:
        """Rows ``table[unique_ids]`` on ``device`` (table dtype). Shape: [U] -> [U, H]."""
        if not (self.device.type == "cuda" and torch.cuda.is_available()):
            return self._table.index_select(0, unique_ids).to(self.device)
        # one staging buffer per embedding: two threads must not fill it while the other's copy still reads it
        with _STAGING_LOCK:
            return self._stage_and_copy(unique_ids)

    def _stage_and_copy(self, unique_ids: torch.Tensor) -> torch.Tensor:
        if self._copy_done is not None:
            self._copy_done.synchronize()  # the previous non-blocking copy may still read the buffer
        n = unique_ids.numel()
        if self._staging is None or self._staging.shape[0] < n:
            grown = 2 * (0 if self._staging is None else self._staging.shape[0])  # amortised growth
            capacity = min(self.num_embeddings, max(n, 64, grown))
            self._staging = torch.empty((capacity, self.embedding_dim), dtype=self._table.dtype, pin_memory=True)
        staged = self._staging[:n]
        torch.index_select(self._table, 0, unique_ids, out=staged)
        rows = staged.to(self.device, non_blocking=True)
        self._copy_done = torch.cuda.Event()
        self._copy_done.record(torch.cuda.current_stream(self.device))
        return rows

    # ------------------------------------------------------------------------------- accounting
    @property
    def weight(self) -> torch.Tensor:
        """The CPU table [V, H] (pinned, plain, or a view of the mapped file; read-only by intent).
        Not a Parameter: reading ``.weight.dtype`` / ``.weight.device`` is safe, assigning or
        tying it (``tie_weights``) is not supported."""
        return self._table

    @property
    def memmap(self):
        """The ``numpy.memmap`` backing the table, or None when the table is in memory."""
        return self._memmap

    def table_bytes(self) -> int:
        """Bytes of the whole [V, H] table in its stored dtype (in RAM, pinned, or on disk)."""
        return self._table.numel() * self._table.element_size()

    def staging_bytes(self) -> int:
        """Bytes of the pinned host staging buffer (CUDA only; grows to the most distinct ids seen)."""
        return 0 if self._staging is None else self._staging.numel() * self._staging.element_size()

    def resident_bytes(self) -> int:
        """Bytes this module keeps allocated on the compute device between calls: always 0.

        The table is counted by :meth:`table_bytes` (host memory or file, even when the compute
        device is cpu), the staging buffer by :meth:`staging_bytes` (pinned host memory); the
        rows gathered in a call ([U, H]) and the output ([..., H]) are transient and the output
        belongs to the caller. Compare with ``nn.Embedding``'s V * H * itemsize on the device.
        """
        return 0

    def extra_repr(self) -> str:
        s = f"{self.num_embeddings}, {self.embedding_dim}, table_dtype={self._table.dtype}, dtype={self.dtype}, " \
            f"device={self.device}, storage={self._storage}"
        return s + ("" if self.padding_idx is None else f", padding_idx={self.padding_idx}")
