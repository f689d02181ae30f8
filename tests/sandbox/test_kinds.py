"""The kind registry (sandbox/kinds.py): one declaration feeds Schedule, the kernels, the simulator and the tests."""

import pytest

from sandbox import Problem, Schedule, kinds
from sandbox.lab import simulate
from tests.strategies import BACKWARD_KINDS, KINDS, MASK_KINDS


def test_builtins_and_splitkv_are_registered_and_tested():
    assert KINDS == kinds.names() and {"standard", "flash1", "flash2", "splitkv"} <= set(KINDS)
    assert "splitkv" in MASK_KINDS and "splitkv" not in BACKWARD_KINDS


def test_register_refuses_duplicates_and_bad_names(monkeypatch):
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.get("flash2"))
    with pytest.raises(ValueError, match="identifier"):
        kinds.register(kinds.Kind("my kind", "", sram="a:b", kernels="a", counts="a:b"))
    with pytest.raises(TypeError, match="expected a sandbox.kinds.Kind"):
        kinds.register("flash3")


def test_unknown_kind_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown schedule kind 'flash9'; expected one of \('standard'"):
        Schedule("flash9", block_q=4, block_kv=4)


def test_a_registered_kind_is_usable_by_name(monkeypatch):
    """A new kind that reuses flash2's parts is a valid Schedule kind, simulated like flash2."""
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))
    kinds.register(kinds.Kind("flash2copy", "flash2 under another name", sram="sandbox.schedule:flash2_sram",
                              kernels="kernels.flash2", counts="simulator.counts:flash2_counts"))
    p = Problem(1, 2, 100, 70, 16, causal=True)
    copy = simulate(Schedule("flash2copy", block_q=16, block_kv=8), p)
    assert copy == simulate(Schedule("flash2", block_q=16, block_kv=8), p)
    with pytest.raises(ValueError, match="has no backward pass"):
        simulate(Schedule("flash2copy", block_q=16, block_kv=8), p, backward=True)
    from sandbox import masks

    with pytest.raises(ValueError, match="does not take a mask"):
        simulate(Schedule("flash2copy", block_q=16, block_kv=8), p, mask=masks.causal())


def test_kv_splits_only_where_the_kind_splits():
    assert Schedule("splitkv", block_q=4, block_kv=4, kv_splits=3).kv_splits == 3
    assert "splits=3" in Schedule("splitkv", block_q=4, block_kv=4, kv_splits=3).describe()
    with pytest.raises(ValueError, match="kind 'flash2' does not split K/V"):
        Schedule("flash2", block_q=4, block_kv=4, kv_splits=2)
    with pytest.raises(ValueError, match="kv_splits"):
        Schedule("splitkv", block_q=4, block_kv=4, kv_splits=0)


def test_splitkv_trades_hbm_for_parallelism():
    """Q is read once per split and O moves as fp32 partials: more HBM than flash2, growing with the splits."""
    p = Problem(1, 4, 8, 4096, 64)
    flash2 = simulate(Schedule("flash2", block_q=16, block_kv=64), p)
    prev = flash2.hbm_bytes
    for s in (1, 2, 8, 32):
        r = simulate(Schedule("splitkv", block_q=16, block_kv=64, kv_splits=s), p)
        assert r.hbm_reads["K"] == flash2.hbm_reads["K"] and r.hbm_reads["Q"] == s * flash2.hbm_reads["Q"]
        assert r.hbm_writes["Opart"] == r.hbm_reads["Opart"] == s * 4 * 8 * 64
        assert r.hbm_bytes > prev
        prev = r.hbm_bytes


def test_the_backward_is_declared_in_the_registry(monkeypatch):
    """A kind names its backward ("flash" or "standard"); everything dispatches on that, not on names."""
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))
    kinds.register(kinds.Kind("flash2grad", "flash2 with the flash backward", sram="sandbox.schedule:flash2_sram",
                              kernels="kernels.flash2", counts="simulator.counts:flash2_counts", backward="flash"))
    p = Problem(1, 2, 50, 70, 16, causal=True)
    assert simulate(Schedule("flash2grad", block_q=16, block_kv=8), p, backward=True) == simulate(
        Schedule("flash2", block_q=16, block_kv=8), p, backward=True)
    with pytest.raises(ValueError, match="backward must be one of"):
        kinds.register(kinds.Kind("oops", "", sram="a:b", kernels="a", counts="a:b", backward=True))
