"""Kinds, declared once per layer (sandbox/vocabulary/kinds.py, kernels/registry.py, simulator/table.py)
and tied by ``sandbox.register_kind``: what each registered kind has, and what every layer reads from them."""

import types

import pytest

from kernels import flash2 as flash2_kernels
from kernels import registry
from sandbox import Problem, Schedule, kind_names, masks, register_kind, simulate
from sandbox.lab import peers
from sandbox.lab.kinds import capabilities
from sandbox.vocabulary import kinds
from sandbox.vocabulary.footprints import flash2_sram
from simulator import counts as sim_counts
from simulator import streams, table
from tests.strategies import BACKWARD_KINDS, KINDS, MASK_KINDS

BUILT_IN = ("standard", "flash1", "flash2", "splitkv")


def test_every_registered_kind_is_complete(capsys):
    """Prints what each kind has; every kind has kernels, counts and bench rows, and the built-ins their L2 stream."""
    rows = capabilities()
    with capsys.disabled():
        print("\nkind       kernels counts backward  masks fast          l2    bench rows")
        for r in rows:
            print(f"{r['kind']:10s} {str(r['kernels']):7s} {str(r['counts']):6s} {str(r['backward']):9s} "
                  f"{str(r['masks']):5s} {','.join(r['fast']) or '-':13s} {str(r['l2']):5s} {', '.join(r['bench'])}")
    assert [r["kind"] for r in rows] == list(kind_names())
    for r in rows:
        assert r["kernels"] and r["counts"] and r["kind"] in r["bench"], r
        assert (f"{r['kind']} (bwd)" in r["bench"]) == (r["backward"] is not None), r
    by_kind = {r["kind"]: r for r in rows}
    assert set(BUILT_IN) <= set(by_kind) and all(by_kind[k]["l2"] for k in BUILT_IN)
    assert by_kind["flash2"]["fast"] == ("fma", "tf32x3", "f16") and "flash2-plain" in by_kind["flash2"]["bench"]


def test_builtins_and_splitkv_are_registered_and_tested():
    assert KINDS == kinds.names() == registry.names() == table.names()
    assert set(BUILT_IN) <= set(KINDS)
    assert "splitkv" in MASK_KINDS and "splitkv" not in BACKWARD_KINDS


def test_each_layer_refuses_duplicates_and_bad_parts(isolated_kinds):
    with pytest.raises(ValueError, match="already registered"):
        kinds.register(kinds.get("flash2"))
    with pytest.raises(ValueError, match="identifier"):
        kinds.Kind("my kind", "", sram=flash2_sram)
    with pytest.raises(TypeError, match="sram must be a function"):
        kinds.Kind("mykind", "", sram="sandbox.vocabulary.footprints:flash2_sram")
    with pytest.raises(ValueError, match="backward must be None or one of"):
        kinds.Kind("oops", "", sram=flash2_sram, backward=True)
    with pytest.raises(TypeError, match="expected a sandbox.vocabulary.kinds.Kind"):
        kinds.register("flash3")
    with pytest.raises(ValueError, match="unknown schedule kind 'nowhere'"):
        registry.register("nowhere", flash2_kernels)  # kernels of a kind the vocabulary does not know
    with pytest.raises(ValueError, match="unknown schedule kind 'nowhere'"):
        table.register("nowhere", sim_counts.flash2_counts)


def test_register_kind_checks_every_part_before_registering_any(isolated_kinds):
    before = (kinds.names(), registry.names(), table.names())
    with pytest.raises(ValueError, match=r"kind 'flash2' is already registered \(vocabulary, kernels, simulator\)"):
        register_kind("flash2", "", sram=flash2_sram, kernels=flash2_kernels, counts=sim_counts.flash2_counts)
    with pytest.raises(TypeError, match=r"its kernels need a launch\(\)"):
        register_kind("half", "", sram=flash2_sram, kernels=types.SimpleNamespace(phases=lambda dtype: {}),
                      counts=sim_counts.flash2_counts)
    with pytest.raises(TypeError, match="counts must be a function"):
        register_kind("half", "", sram=flash2_sram, kernels=flash2_kernels, counts="simulator.counts:flash2_counts")
    assert (kinds.names(), registry.names(), table.names()) == before


def test_unknown_kind_names_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown schedule kind 'flash9'; expected one of \('standard'"):
        Schedule("flash9", block_q=4, block_kv=4)


def test_a_registered_kind_is_usable_by_name(isolated_kinds):
    """A new kind that reuses flash2's parts is a valid Schedule kind, simulated like flash2, and a bench row."""
    register_kind("flash2copy", "flash2 under another name", sram=flash2_sram, kernels=flash2_kernels,
                  counts=sim_counts.flash2_counts, l2=streams.FLASH2_LAUNCHES)
    assert "flash2copy" in kind_names() and "flash2copy" in peers.impl_names()
    p = Problem(1, 2, 100, 70, 16, causal=True)
    copy = simulate(Schedule("flash2copy", block_q=16, block_kv=8), p)
    assert copy == simulate(Schedule("flash2", block_q=16, block_kv=8), p)
    with pytest.raises(ValueError, match="has no backward pass"):
        simulate(Schedule("flash2copy", block_q=16, block_kv=8), p, backward=True)
    with pytest.raises(ValueError, match="does not take a mask"):
        simulate(Schedule("flash2copy", block_q=16, block_kv=8), p, mask=masks.causal())
    with pytest.raises(ValueError, match="math='tf32x3': kind 'flash2copy' has no build with that arithmetic"):
        Schedule("flash2copy", block_q=16, block_kv=8, math="tf32x3")


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


def test_the_backward_is_a_trait(isolated_kinds):
    """A kind names its backward ("flash" or "standard"); everything dispatches on that, not on names."""
    register_kind("flash2grad", "flash2 with the flash backward", sram=flash2_sram, kernels=flash2_kernels,
                  counts=sim_counts.flash2_counts, backward="flash")
    p = Problem(1, 2, 50, 70, 16, causal=True)
    assert simulate(Schedule("flash2grad", block_q=16, block_kv=8), p, backward=True) == simulate(
        Schedule("flash2", block_q=16, block_kv=8), p, backward=True)
    assert "flash2grad (bwd)" in peers.rows_of_kind("flash2grad")
