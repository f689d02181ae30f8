"""Named experiments: their grids come from the registries, and their data says what the figures claim."""

import dataclasses
import os

import numpy as np
import pytest

from sandbox.lab import plots
from sandbox.lab.experiments import EXPERIMENTS, flash_backward_kinds
from sandbox.lab.kinds import capabilities
from sandbox.lab.sweep import load, run_sweep
from sandbox.vocabulary import kinds
from sandbox.vocabulary.footprints import flash2_sram
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.schedule import Schedule
from simulator import theory
from simulator.entry import simulate

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


# -- grouped K/V heads in L2 (gqa_l2) ---------------------------------------------------------

#: The gqa_l2 grid at a size the tests afford: H = 8, N = 256, d = 16, 16×16 blocks.
TINY_GROUPED = dict(heads=8, heads_kv=(8, 4, 2, 1), n=256, head_dim=16, blocks=(16, 16))
DOCS_GQA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                        "docs", "data", "gqa_l2.json")


def check_grouped_rows(rows, one_copy_kinds):
    """What the gqa_l2 figure claims, per (kind, direction) along H / H_kv:
    - the bytes requested of every tensor but K, V (and the backward's dK, dV and their fp32
      partials) do not change with grouping, nor do K's and V's (each query head reads its tiles);
    - the L2 model's DRAM bytes do not grow as the group grows (the backward from group 2 on: its
      first grouping adds the dK, dV partials and their sum);
    - K and V come from DRAM at least once per K/V head, their DRAM bytes fall as the group grows,
      at H_kv = 1 by at least a quarter of the largest group against H_kv = H; for ``one_copy_kinds``
      at H_kv = 1 they are one copy per batch (within 5 %: sectors and the odd eviction)."""
    from sandbox.lab.grouping import GRADIENT_KV_TENSORS, KV_TENSORS

    series = {}
    for r in rows:
        series.setdefault((r["kind"], r["direction"]), []).append(r)
    assert series
    for (kind, direction), rs in series.items():
        rs = sorted(rs, key=lambda r: r["group"])
        assert [r["group"] for r in rs] == sorted({r["heads"] // r["heads_kv"] for r in rs}) and rs[0]["group"] == 1
        fixed = lambda r: {t: b for t, b in r["requested_by_tensor"].items()  # noqa: E731
                           if t not in KV_TENSORS + GRADIENT_KV_TENSORS}
        assert all(fixed(r) == fixed(rs[0]) for r in rs), (kind, direction)
        assert all(r["requested_kv_bytes"] == rs[0]["requested_kv_bytes"] for r in rs), (kind, direction)
        if direction == "fwd":
            assert all(r["requested_bytes"] == rs[0]["requested_bytes"] for r in rs), kind
        dram = [r["dram_bytes"] for r in (rs if direction == "fwd" else rs[1:])]
        assert all(b <= a for a, b in zip(dram, dram[1:])), (kind, direction, dram)
        kv = [r["dram_kv_read_bytes"] for r in rs]
        copy = rs[0]["batch"] * rs[0]["n"] * rs[0]["head_dim"] * np.dtype(rs[0]["dtype"]).itemsize
        assert all(r["dram_kv_read_bytes"] >= 2 * r["heads_kv"] * copy for r in rs), (kind, direction)
        assert all(b <= a for a, b in zip(kv, kv[1:])), (kind, direction, kv)
        assert rs[-1]["heads_kv"] == 1 and kv[-1] * rs[-1]["group"] / 4 <= kv[0], (kind, direction, kv)
        if kind in one_copy_kinds:
            assert kv[-1] <= 1.05 * 2 * copy, (kind, direction, kv[-1], 2 * copy)


def test_gqa_l2_at_a_tiny_size(tmp_path):
    """Every kind with an L2 stream, forward, and backward where it has one; the invariants hold; the
    CSV reads back as the JSON; the figure is drawn; over two processes the rows are the same."""
    from sandbox.lab.grouping import GroupedSpec, l2_kinds, load_grouped

    experiment = EXPERIMENTS["gqa_l2"]
    spec = dataclasses.replace(experiment.spec, **TINY_GROUPED)
    assert isinstance(experiment.spec, GroupedSpec) and experiment.spec.gpu == "h200"
    rows = experiment.runner(spec, str(tmp_path / "g.csv"), None)
    ticks = []
    over_two = dataclasses.replace(experiment, grid=spec).run(
        str(tmp_path / "two.csv"), progress=lambda it: ticks.extend([len(it)]) or it, jobs=2)
    assert over_two == rows and ticks == [len(rows)]  # two processes, the same rows in the same order
    with_backward = [k for k in l2_kinds() if kinds.get(k).backward is not None]
    assert len(rows) == (len(l2_kinds()) + len(with_backward)) * len(TINY_GROUPED["heads_kv"])
    check_grouped_rows(rows, one_copy_kinds=l2_kinds())  # here all of every tensor fits the L2
    # the bytes requested are the simulator's tile counts
    r = next(r for r in rows if r["kind"] == "flash2" and r["direction"] == "bwd" and r["heads_kv"] == 2)
    problem = Problem(1, 8, 256, 256, 16, heads_kv=2)
    assert r["requested_bytes"] == simulate(Schedule("flash2", block_q=16, block_kv=16), problem, backward=True).hbm_bytes
    prov, from_json = load_grouped(str(tmp_path / "g.json"))
    assert from_json == load_grouped(str(tmp_path / "g.csv"))[1] and prov["grids"][0]["heads"] == 8
    paths = plots.gqa_l2(from_json, prov, str(tmp_path / "figures"))
    assert [os.path.basename(p) for p in paths] == ["gqa_l2.png", "gqa_l2.svg"]
    assert all(os.path.getsize(p) > 0 for p in paths)


def test_gqa_l2_committed_data_shows_the_reuse():
    """docs/data/gqa_l2.json (H = 32, N = 4096, d = 128, the H200's L2) holds the same invariants;
    K and V at H_kv = 1 are one copy for every kind but standard, whose S and P (N² per head, more
    than the L2) evict them between its launches."""
    from sandbox.lab.grouping import load_grouped

    prov, rows = load_grouped(DOCS_GQA)
    assert {r["heads_kv"] for r in rows} == {32, 16, 8, 4, 2, 1} and {r["gpu"] for r in rows} == {"NVIDIA H200 SXM"}
    assert {r["direction"] for r in rows} == {"fwd", "bwd"} and prov["grids"][0]["n"] == 4096
    check_grouped_rows(rows, one_copy_kinds={r["kind"] for r in rows} - {"standard"})


def test_gqa_l2_refuses_data_it_cannot_draw(tmp_path):
    from sandbox.lab.grouping import load_grouped

    (tmp_path / "x.json").write_text('{"rows": [{"kind": "flash2"}]}')
    with pytest.raises(ValueError, match="x.json is not a gqa_l2 file .no columns .*python -m sandbox sweep"):
        load_grouped(str(tmp_path / "x.json"))
    with pytest.raises(ValueError, match="gqa_l2 experiment"):
        plots.gqa_l2([{"kind": "flash2"}], {}, str(tmp_path))


def test_gqa_l2_through_the_commands(tmp_path, monkeypatch, capsys):
    """sweep --experiment gqa_l2 writes its CSV and JSON, and plot gqa_l2 draws from either."""
    from sandbox.cli import main

    experiment = EXPERIMENTS["gqa_l2"]
    tiny = dataclasses.replace(experiment.spec, kinds=("flash2",), backward=False, **TINY_GROUPED)
    monkeypatch.setitem(EXPERIMENTS, "gqa_l2", dataclasses.replace(experiment, grid=tiny))
    out = tmp_path / "data" / "g.csv"
    assert main(["sweep", "--experiment", "gqa_l2", "--out", str(out)]) == 0
    assert "4 points in" in capsys.readouterr().out and out.exists() and (tmp_path / "data" / "g.json").exists()
    for data in ("g.csv", "g.json"):
        assert main(["plot", "gqa_l2", "--data", str(tmp_path / "data" / data), "--out", str(tmp_path / data)]) == 0
        assert os.path.getsize(tmp_path / data / "gqa_l2.png") > 1000
