"""Named experiments: their grids come from the registries, and their data says what the figures claim."""

import dataclasses
import os

import pytest

from sandbox.lab import plots
from sandbox.lab.experiments import EXPERIMENTS, flash_backward_kinds
from sandbox.lab.kinds import capabilities
from sandbox.lab.sweep import load, run_sweep
from sandbox.vocabulary import kinds
from sandbox.vocabulary.footprints import flash2_sram
from sandbox.vocabulary.schedule import Schedule
from simulator import theory

#: The backward experiment at a size the tests afford: N = 256, d = 16, M from 1 KiB to 32 KiB.
TINY = dict(n=(256,), head_dim=(16,), sram=tuple(2**k for k in range(10, 16)))


def test_backward_experiment_takes_the_kinds_with_a_flash_backward_from_the_registry(isolated_kinds):
    expected = tuple(c["kind"] for c in capabilities() if c["backward"] == "flash")
    assert flash_backward_kinds() == expected and {"flash1", "flash2"} <= set(expected)
    assert EXPERIMENTS["backward_hbm_vs_sram"].spec.kinds == expected
    # a kind registered later is in the grid the next time it is asked for
    kinds.register(kinds.Kind("toy_flash", "a FlashAttention-2 backward", sram=flash2_sram, backward="flash"))
    assert EXPERIMENTS["backward_hbm_vs_sram"].spec.kinds == expected + ("toy_flash",)


def test_backward_hbm_vs_sram_at_a_tiny_size(tmp_path):
    """Every (kind, M) has both passes' counts of one schedule that fits M; the backward's bytes are at
    least the lower bound's elements (fp32: 4 bytes each) and fall as M grows; the figure is drawn."""
    spec = dataclasses.replace(EXPERIMENTS["backward_hbm_vs_sram"].spec, **TINY)
    run_sweep(spec, str(tmp_path / "b.csv"), argv=["test"])
    prov, rows = load(str(tmp_path / "b.json"))
    n, d = TINY["n"][0], TINY["head_dim"][0]
    assert len(rows) == len(spec.kinds) * len(TINY["sram"])
    for kind in spec.kinds:
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["sram_bytes"])
        assert [r["sram_bytes"] for r in rs] == list(TINY["sram"])
        for r in rs:
            assert r["infeasible"] is None and r["hbm_bytes"] > 0
            s = Schedule(kind, block_q=r["block_q"], block_kv=r["block_kv"], sram_bytes=r["sram_bytes"])
            s.check_fits(d, "float32", backward=True)  # one schedule runs both passes in M
            m = theory.sram_elements(r["sram_bytes"], "float32")
            assert r["hbm_bytes_backward"] >= 4 * theory.backward_lower_bound(n, d, m)
        backward = [r["hbm_bytes_backward"] for r in rs]
        assert all(b >= a for a, b in zip(backward[1:], backward)), backward  # never rises with M
        assert backward[-1] < backward[0] / 4, backward  # and falls: 1 KiB to 32 KiB
    paths = plots.backward_hbm_vs_sram(rows, prov, str(tmp_path / "figures"))
    assert [os.path.basename(p) for p in paths] == ["backward_hbm_vs_sram.png", "backward_hbm_vs_sram.svg"]
    assert all(os.path.getsize(p) > 0 for p in paths)


def test_backward_blocks_fit_both_passes():
    """Where the forward's blocks leave no room for dO, Bc is lowered until the backward fits too."""
    forward = Schedule.from_sram(2**17, head_dim=64, kind="flash2")
    both = Schedule.from_sram(2**17, head_dim=64, kind="flash2", backward=True)
    with pytest.raises(ValueError, match="for the backward pass"):
        forward.check_fits(64, "float32", backward=True)
    both.check_fits(64, "float32", backward=True)
    assert both.block_kv < forward.block_kv and both.block_q == min(both.block_kv, 64)
    with pytest.raises(ValueError, match="has no backward pass"):
        Schedule.from_sram(2**17, head_dim=64, kind="splitkv", backward=True)
