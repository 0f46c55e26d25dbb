"""The C++ ops' output cache (leankern.output_cache): off by default, reuses freed >= 1 MiB
outputs when on, never hands out memory that is still alive, flushes on request."""
import json

import pytest
import torch

from leankern import output_cache
from conftest import needs_ext, run_python

MIB = 1 << 20


def _quantize(x):
    return torch.ops.leankern.mx_quantize(x, "mxint8", 32, "rceil", None, None, False)


@pytest.fixture
def x():
    return torch.randn(1024, 2048)  # codes: 2 MiB of int8 (pool-sized); scales 64 KiB (not)


@pytest.fixture
def cache():
    """The cache as a test found it is restored afterwards (it is process-wide)."""
    before = output_cache.stats()["limit_bytes"] >> 20
    output_cache.set_limit(0)
    output_cache.flush()
    yield output_cache
    output_cache.set_limit(before)
    output_cache.flush()


def _span(t):
    return t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes()


def _overlap(a, b):
    (a0, a1), (b0, b1) = _span(a), _span(b)
    return a0 < b1 and b0 < a1


def test_off_by_default_in_a_fresh_process():
    code = "import json, leankern; print(json.dumps(leankern.output_cache.stats()))"
    out = run_python(code, drop=("LEANKERN_OUTPUT_CACHE_MB",))
    assert out.returncode == 0, out.stderr
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    assert stats["limit_bytes"] == 0 and stats["cached_bytes"] == 0
    assert set(stats) == {"limit_bytes", "cached_bytes", "live_bytes", "hits", "misses"}


@needs_ext
def test_environment_variable_sets_the_limit_at_start_up():
    code = "import json, leankern; print(json.dumps(leankern.output_cache.stats()))"
    out = run_python(code, env={"LEANKERN_OUTPUT_CACHE_MB": "16"}, drop=("LEANKERN_DISABLE_EXT",))
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1])["limit_bytes"] == 16 * MIB


@pytest.mark.parametrize("bad", [-1, 1.5, "64", True, None])
def test_set_limit_rejects_what_is_not_a_non_negative_int(bad):
    with pytest.raises(ValueError, match="limit_mb: expected a non-negative int"):
        output_cache.set_limit(bad)


@needs_ext
def test_freed_output_is_reused(cache, x):
    cache.set_limit(64)
    assert cache.stats()["limit_bytes"] == 64 * MIB
    codes, scales, g = _quantize(x)
    assert codes.untyped_storage().nbytes() >= MIB
    ptr, want = codes.data_ptr(), codes.clone()
    live = cache.stats()["live_bytes"]
    assert live >= MIB
    del codes, scales, g
    after_free = cache.stats()
    assert after_free["cached_bytes"] >= MIB and after_free["live_bytes"] < live
    codes2, _, _ = _quantize(x)
    s = cache.stats()
    assert s["hits"] == after_free["hits"] + 1
    assert codes2.data_ptr() == ptr
    assert torch.equal(codes2, want)  # a reused buffer holds the new result, fully written
    assert s["cached_bytes"] < after_free["cached_bytes"] and s["live_bytes"] >= MIB

    codes3, _, _ = _quantize(x)  # codes2 is alive: never the same memory
    assert not _overlap(codes2, codes3)
    assert torch.equal(codes3, want)


@needs_ext
def test_flush_gives_the_buffers_back(cache, x):
    cache.set_limit(64)
    outs = [_quantize(x) for _ in range(3)]
    del outs
    assert cache.stats()["cached_bytes"] >= 3 * MIB
    cache.flush()
    s = cache.stats()
    assert s["cached_bytes"] == 0 and s["limit_bytes"] == 64 * MIB
    misses = s["misses"]
    _quantize(x)
    assert cache.stats()["misses"] == misses + 1  # nothing left to hit


@needs_ext
def test_limit_zero_caches_nothing(cache, x):
    s0 = cache.stats()
    assert s0["limit_bytes"] == 0
    a = _quantize(x)[0]
    del a
    assert cache.stats()["cached_bytes"] == 0
    b = _quantize(x)[0]
    c = _quantize(x)[0]
    assert not _overlap(b, c)
    s = cache.stats()
    assert s["hits"] == s0["hits"] and s["cached_bytes"] == 0


@needs_ext
def test_lowering_the_limit_frees_down_to_it(cache, x):
    cache.set_limit(64)
    outs = [_quantize(x) for _ in range(4)]
    del outs
    assert cache.stats()["cached_bytes"] >= 4 * MIB
    cache.set_limit(3)
    assert cache.stats()["cached_bytes"] <= 3 * MIB


@needs_ext
def test_enabled_restores_the_previous_limit(cache, x):
    cache.set_limit(8)
    with cache.enabled(32):
        assert cache.stats()["limit_bytes"] == 32 * MIB
        del_me = _quantize(x)
        del del_me
        assert cache.stats()["cached_bytes"] > 0
    s = cache.stats()
    assert s["limit_bytes"] == 8 * MIB and s["cached_bytes"] == 0


def test_enabled_restores_the_limit_after_an_exception(cache):
    with pytest.raises(KeyError), cache.enabled(16):
        raise KeyError("boom")
    assert cache.stats()["limit_bytes"] == 0


def test_enabled_blocks_of_two_threads_overlap(cache):
    """The limit is one per process: blocks that overlap without nesting (two threads: A enters, B enters, A
    exits, B exits) keep the cache on until the last exits (A's exit turned it off under B, and B's exit left
    A's 16 MB on for good), then restore the limit from before the first."""
    a, b = cache.enabled(16), cache.enabled(32)
    a.__enter__()
    b.__enter__()
    assert cache.stats()["limit_bytes"] == 32 * MIB
    a.__exit__(None, None, None)
    assert cache.stats()["limit_bytes"] == 32 * MIB
    b.__exit__(None, None, None)
    assert cache.stats()["limit_bytes"] == 0
    with pytest.raises(ValueError, match="limit_mb"):
        with cache.enabled(-1):
            pass
    assert cache.stats()["limit_bytes"] == 0


@needs_ext
@pytest.mark.parametrize("name,value", [("LEANKERN_OUTPUT_CACHE_MB", "abc"), ("LEANKERN_OUTPUT_CACHE_MB", "1e9"),
                                        ("LEANKERN_OUTPUT_CACHE_MB", "-5"), ("LEANKERN_AMX", "off")])
def test_bad_environment_values_are_errors_at_import(name, value):
    """Read by the C++ side at load: a typo must not pass silently ("1e9" was 1 MB, "abc" and "-5" off, "off" on)."""
    out = run_python("import leankern", env={name: value}, drop=("LEANKERN_DISABLE_EXT",))
    assert out.returncode != 0 and f"{name}: expected" in out.stderr and repr(value) in out.stderr, out.stderr
