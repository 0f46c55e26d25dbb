"""OffloadedEmbedding: bit-exact agreement with F.embedding for every dtype and every table source
(tensor, raw memory-mapped file, safetensors file), repeated / 2-D / int32 / empty ids, out-of-range
ids, the table staying off the module's parameters, lazy reading of mapped files, bad files, and
use as a Hugging Face model's input embedding."""
import json
import os
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, strategies as st

from leankern.vocab.embedding import OffloadedEmbedding

DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_ST_NAMES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}


def _table(V=37, H=12, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = (torch.randn(V, H, generator=g) * 3).to(dtype)
    if V >= 2 and H >= 4:  # special values travel too
        w[1, :4] = torch.tensor([0.0, -0.0, float("inf"), float("nan")], dtype=dtype)
    return w


def _bits(t):
    return t.view({1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def _write_raw(path, w, offset=0):
    with open(path, "wb") as f:
        f.write(b"\x07" * offset)
        f.write(_bits(w).contiguous().numpy().tobytes())


def _write_safetensors(path, tensors: dict):
    """A .safetensors file written by hand (8-byte header length, JSON header, data), so these tests
    do not depend on the safetensors package."""
    header, blobs, pos = {"__metadata__": {"format": "pt"}}, [], 0
    for name, t in tensors.items():
        data = _bits(t).contiguous().numpy().tobytes()
        header[name] = {"dtype": _ST_NAMES[t.dtype], "shape": list(t.shape), "data_offsets": [pos, pos + len(data)]}
        blobs.append(data)
        pos += len(data)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def _make(source, w, tmp_path, device="cpu"):
    if source == "tensor":
        return OffloadedEmbedding(w, device=device)
    if source == "raw":
        _write_raw(tmp_path / "t.bin", w, offset=24)
        return OffloadedEmbedding.from_raw(tmp_path / "t.bin", tuple(w.shape), w.dtype, offset=24, device=device)
    _write_safetensors(tmp_path / "t.safetensors", {"bias": torch.zeros(3, dtype=w.dtype), "emb": w})
    return OffloadedEmbedding.from_safetensors(tmp_path / "t.safetensors", "emb", device=device)


@pytest.mark.parametrize("source", ["tensor", "raw", "safetensors"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_matches_f_embedding_bit_for_bit(source, dtype, device, tmp_path):
    w = _table(dtype=dtype)
    emb = _make(source, w, tmp_path, device)
    cases = [torch.tensor([5]), torch.tensor([3, 3, 1, 36, 0, 3]), torch.randint(0, 37, (4, 9)),
             torch.tensor([[1, 2], [2, 1]], dtype=torch.int32), torch.zeros(0, dtype=torch.int64),
             torch.zeros(2, 0, dtype=torch.int64)]
    for ids in cases:
        got = emb(ids.to(device))
        want = F.embedding(ids.long(), w)
        assert got.device.type == torch.device(device).type and got.dtype == dtype and got.shape == want.shape
        assert torch.equal(_bits(got.cpu()), _bits(want))
    assert emb.num_embeddings == 37 and emb.embedding_dim == 12
    assert emb.table_bytes() == w.numel() * w.element_size() and emb.resident_bytes() == 0


def test_safetensors_package_files(tmp_path):
    safetensors_torch = pytest.importorskip("safetensors.torch")
    tensors = {"a": _table(5, 3, torch.float32), "emb": _table(dtype=torch.bfloat16), "z": torch.ones(2, 2)}
    safetensors_torch.save_file(tensors, tmp_path / "m.safetensors")
    emb = OffloadedEmbedding.from_safetensors(tmp_path / "m.safetensors", "emb")
    ids = torch.tensor([[0, 36, 1], [36, 36, 2]])
    assert torch.equal(_bits(emb(ids)), _bits(F.embedding(ids, tensors["emb"])))


@given(st.integers(1, 50), st.integers(1, 20), st.sampled_from(DTYPES), st.data())
def test_random_shapes_and_ids(V, H, dtype, data):
    w = _table(V, H, dtype, seed=V * 31 + H)
    shape = data.draw(st.lists(st.integers(0, 5), max_size=3))
    ids = torch.tensor(data.draw(st.lists(st.integers(0, V - 1), min_size=int(np.prod(shape)),
                                          max_size=int(np.prod(shape))))).reshape(shape)
    ids = ids.to(data.draw(st.sampled_from([torch.int32, torch.int64])))
    got = OffloadedEmbedding(w)(ids)
    assert got.shape == (*shape, H) and torch.equal(_bits(got), _bits(F.embedding(ids.long(), w)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_output_dtype(dtype, tmp_path):
    w = _table(dtype=torch.float16)
    ids = torch.tensor([[4, 4, 9]])
    emb = OffloadedEmbedding(w, dtype=dtype)
    assert emb(ids).dtype == dtype and torch.equal(_bits(emb(ids)), _bits(F.embedding(ids, w).to(dtype)))
    _write_raw(tmp_path / "t.bin", w)
    mapped = OffloadedEmbedding.from_raw(tmp_path / "t.bin", (37, 12), torch.float16, out_dtype=dtype)
    assert torch.equal(_bits(mapped(ids)), _bits(F.embedding(ids, w).to(dtype)))


@pytest.mark.parametrize("source", ["tensor", "raw", "safetensors"])
@pytest.mark.parametrize("bad", [[37], [-1], [0, 5, 1000], [[2, -7], [40, 1]]])
def test_out_of_range_ids_raise(source, bad, tmp_path):
    emb = _make(source, _table(), tmp_path)
    ids = torch.tensor(bad)
    lo, hi = int(ids.min()), int(ids.max())
    with pytest.raises(IndexError, match=rf"input_ids: expected ids in \[0, 37\).*got min {lo}, max {hi}"):
        emb(ids)
    with pytest.raises(TypeError, match="input_ids: expected an integer tensor"):
        emb(torch.tensor([1.0]))


def test_table_is_not_a_parameter_or_buffer():
    w = _table()
    emb = OffloadedEmbedding(w)
    assert list(emb.parameters()) == [] and list(emb.buffers()) == [] and emb.state_dict() == {}
    emb.half()  # module conversions do not touch the table
    assert emb.weight.dtype == torch.float32 and emb.weight.device.type == "cpu"
    assert emb.weight.data_ptr() == w.data_ptr()  # a contiguous CPU table is shared, not copied
    model = torch.nn.Sequential(emb, torch.nn.Linear(12, 2))
    assert list(model.state_dict()) == ["1.weight", "1.bias"]
    grad_w = w.clone().requires_grad_()
    assert not OffloadedEmbedding(grad_w)(torch.tensor([1])).requires_grad


def test_mapped_table_is_read_lazily(tmp_path):
    """The module holds a numpy memmap whose memory IS the table (no copy into a tensor); a row
    rewritten in the file after construction is what forward returns, so rows are read from the
    mapping at call time, not loaded when the module is built."""
    w = _table()
    _write_raw(tmp_path / "t.bin", w)
    emb = OffloadedEmbedding.from_raw(tmp_path / "t.bin", (37, 12), torch.float32)
    assert isinstance(emb.memmap, np.memmap) and emb.memmap.shape == (37, 12)
    assert emb.weight.data_ptr() == emb.memmap.ctypes.data and "storage=mmap:" in repr(emb)
    new_row = torch.arange(12, dtype=torch.float32)
    with open(tmp_path / "t.bin", "r+b") as f:
        f.seek(20 * 12 * 4)
        f.write(new_row.numpy().tobytes())
    assert torch.equal(emb(torch.tensor([20, 19]))[0], new_row)
    assert torch.equal(emb(torch.tensor([19]))[0], w[19])


def _rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux /proc to read the RSS")
@pytest.mark.parametrize("kind", ["raw", "safetensors"])
def test_large_mapped_table_does_not_enter_memory(kind, tmp_path):
    """A 512 MiB table (a sparse file: no disk blocks) gathered from: the process's resident memory
    grows by far less than the table, i.e. only the touched pages were read."""
    V, H = 1 << 19, 256  # 512 MiB of float32
    path = tmp_path / f"big.{kind}"
    if kind == "raw":
        with open(path, "wb") as f:
            f.truncate(V * H * 4)
    else:
        raw = json.dumps({"emb": {"dtype": "F32", "shape": [V, H], "data_offsets": [0, V * H * 4]}}).encode()
        with open(path, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            f.truncate(8 + len(raw) + V * H * 4)
    before = _rss_bytes()
    if kind == "raw":
        emb = OffloadedEmbedding.from_raw(path, (V, H), torch.float32)
    else:
        emb = OffloadedEmbedding.from_safetensors(path, "emb")
    out = emb(torch.tensor([[0, V - 1, 12345], [0, 7, 1 << 18]]))
    assert out.shape == (2, 3, H) and not out.any()
    assert emb.table_bytes() == V * H * 4
    assert _rss_bytes() - before < 64 << 20


def test_from_embedding():
    ref = torch.nn.Embedding(37, 12, padding_idx=-2)
    emb = OffloadedEmbedding.from_embedding(ref)
    ids = torch.tensor([[35, 0, 35], [1, 2, 3]])
    assert emb.padding_idx == 35 and "padding_idx=35" in repr(emb)
    assert torch.equal(_bits(emb(ids)), _bits(ref(ids).detach()))
    with pytest.raises(ValueError, match="embedding.max_norm"):
        OffloadedEmbedding.from_embedding(torch.nn.Embedding(4, 2, max_norm=1.0))
    with pytest.raises(TypeError, match="embedding: expected an nn.Embedding"):
        OffloadedEmbedding.from_embedding(torch.nn.Linear(2, 2))

    class Scaled(torch.nn.Embedding):
        def forward(self, x):
            return super().forward(x) * 2

    with pytest.warns(UserWarning, match="overrides nn.Embedding.forward"):
        OffloadedEmbedding.from_embedding(Scaled(4, 2))


def test_constructor_errors(tmp_path):
    with pytest.raises(ValueError, match=r"weight: expected a 2-D tensor \[V, H\]"):
        OffloadedEmbedding(torch.zeros(5))
    with pytest.raises(ValueError, match="weight: expected a 2-D"):
        OffloadedEmbedding(torch.zeros(0, 4))
    with pytest.raises(ValueError, match="weight.dtype"):
        OffloadedEmbedding(torch.zeros(4, 4, dtype=torch.int32))
    with pytest.raises(TypeError, match="weight: expected a torch.Tensor"):
        OffloadedEmbedding(np.zeros((2, 2)))
    with pytest.raises(ValueError, match="padding_idx"):
        OffloadedEmbedding(torch.zeros(4, 4), padding_idx=4)
    with pytest.raises(ValueError, match="dtype"):
        OffloadedEmbedding(torch.zeros(4, 4), dtype=torch.int8)


def test_raw_file_errors(tmp_path):
    path = tmp_path / "t.bin"
    _write_raw(path, _table(4, 4))
    with pytest.raises(ValueError, match="needs 72 bytes, the file has 64"):
        OffloadedEmbedding.from_raw(path, (4, 4), torch.float32, offset=8)
    with pytest.raises(ValueError, match="shape: expected"):
        OffloadedEmbedding.from_raw(path, (16,), torch.float32)
    with pytest.raises(ValueError, match="offset: expected"):
        OffloadedEmbedding.from_raw(path, (4, 4), torch.float32, offset=-1)
    with pytest.raises(ValueError, match="dtype: expected one of"):
        OffloadedEmbedding.from_raw(path, (4, 4), torch.int32)


def test_safetensors_file_errors(tmp_path):
    path = tmp_path / "m.safetensors"
    _write_safetensors(path, {"emb": _table(4, 4), "vec": torch.zeros(4)})
    with pytest.raises(KeyError, match=r"tensor_name: 'nope' is not in .*\['emb', 'vec'\]"):
        OffloadedEmbedding.from_safetensors(path, "nope")
    with pytest.raises(ValueError, match=r"expected a 2-D shape \[V, H\]"):
        OffloadedEmbedding.from_safetensors(path, "vec")
    garbage = tmp_path / "g.safetensors"
    garbage.write_bytes(b"\xff" * 64)
    with pytest.raises(ValueError, match="not a safetensors file"):
        OffloadedEmbedding.from_safetensors(garbage, "emb")
    bad_json = tmp_path / "j.safetensors"
    bad_json.write_bytes(struct.pack("<Q", 4) + b"{{{{" + b"\0" * 16)
    with pytest.raises(ValueError, match="bad JSON header"):
        OffloadedEmbedding.from_safetensors(bad_json, "emb")
    truncated = tmp_path / "t.safetensors"
    truncated.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(ValueError, match="data_offsets"):
        OffloadedEmbedding.from_safetensors(truncated, "emb")
    ints = tmp_path / "i.safetensors"
    raw = json.dumps({"emb": {"dtype": "I8", "shape": [2, 2], "data_offsets": [0, 4]}}).encode()
    ints.write_bytes(struct.pack("<Q", len(raw)) + raw + b"\0" * 4)
    with pytest.raises(ValueError, match="dtype 'I8'"):
        OffloadedEmbedding.from_safetensors(ints, "emb")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: pinned staging + non-blocking copies")
def test_cuda_staging_buffer_reuse():
    w = _table(V=4096, H=64, dtype=torch.bfloat16)
    emb = OffloadedEmbedding(w, device="cuda")
    assert emb.weight.is_pinned() and "storage=pinned" in repr(emb)
    g = torch.Generator().manual_seed(1)
    outs, wants = [], []
    for n in (3, 200, 5, 4096, 17):  # growing and shrinking: the buffer is reused across calls
        ids = torch.randint(0, 4096, (n,), generator=g)
        outs.append(emb(ids.cuda()))
        wants.append(F.embedding(ids, w))
    torch.cuda.synchronize()
    for got, want in zip(outs, wants):
        assert torch.equal(_bits(got.cpu()), _bits(want))
    assert emb.staging_bytes() > 0 and emb.resident_bytes() == 0


def test_hugging_face_drop_in():
    transformers = pytest.importorskip("transformers")
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    ids = torch.tensor([[5, 9, 9, 63, 0]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        model.set_input_embeddings(OffloadedEmbedding.from_embedding(model.get_input_embeddings()))
        got = model(input_ids=ids).logits
        generated = model.generate(ids, max_new_tokens=3, do_sample=False)
    assert torch.equal(got, want) and generated.shape == (1, 8)
    assert "embed_tokens.weight" not in model.state_dict()
