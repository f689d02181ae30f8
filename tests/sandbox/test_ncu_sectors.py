"""The ncu check's sector model (sandbox/lab/ncu_sectors.py) against the kernels' own global accesses,
traced under Numba's CUDA simulator: every load and store of every thread, grouped into warp
instructions, counted in the 32-byte sectors ncu's L1 counters count."""

import collections
import contextlib
import threading

import numpy as np
import pytest

from kernels import backward_tc, mma16
from kernels import launch as kernel_launch
from kernels.builds import choose_backward_build, choose_build
from kernels.flash2_tc import tc_schedule
from sandbox import Problem, Schedule
from sandbox.lab import ncu_sectors
from sandbox.vocabulary import kinds
from sandbox.vocabulary.runtime import using_simulator
from simulator.l2 import simulate_dram

#: The tests that trace the kernels: they run them under Numba's CUDA simulator.
traces = pytest.mark.skipif(not using_simulator(), reason="traces the kernels under Numba's CUDA simulator")


@contextlib.contextmanager
def traced():
    """Record every element a kernel reads or writes in global memory: yields (accesses, regions).

    accesses: (launch index, block, thread, address, bytes, store), a cp.async copy (kernels/mma16.py)
    one access of 16 bytes; regions: name -> (address, bytes) of the arrays the launcher allocates (kernels.launch.device_empty's ``what``); the caller
    adds its inputs with :func:`region`."""
    from numba.cuda.simulator import kernel as sim_kernel
    from numba.cuda.simulator.cudadrv import devicearray as sim_array

    accesses, regions, launch = [], {}, [-1]
    cls = sim_array.FakeWithinKernelCUDAArray
    get, put, call, empty = cls.__getitem__, cls.__setitem__, sim_kernel.FakeCUDAKernel.__call__, kernel_launch.device_empty
    copy = mma16.cp_async

    def note(self, idx, store, itemsize=None):
        ary = self._item._ary
        idx = idx if isinstance(idx, tuple) else (idx,)
        if len(idx) == ary.ndim:  # an element, not a view
            addr = ary.__array_interface__["data"][0] + sum(int(i) * s for i, s in zip(idx, ary.strides))
            t = threading.current_thread()
            accesses.append((launch[0], tuple(t.blockIdx), t.thread_id, addr, itemsize or ary.itemsize, store))

    def traced_copy(sm, at, src, row, word, valid):
        """A cp.async copy (kernels/mma16.py): one 16-byte access (a zero fill reads nothing)."""
        if valid:
            note(src, (row, word), False, 16)
        for i in range(4):
            sm[at + i] = get(src, (row, word + i)) if valid else 0

    def traced_get(self, idx):
        note(self, idx, False)
        return get(self, idx)

    def traced_put(self, idx, value):
        note(self, idx, True)
        return put(self, idx, value)

    def traced_call(self, *args):
        if not self._device:
            launch[0] += 1
        return call(self, *args)

    def traced_empty(shape, dtype, what):
        x = empty(shape, dtype, what)
        regions[what] = region(x)
        return x

    cls.__getitem__, cls.__setitem__ = traced_get, traced_put
    sim_kernel.FakeCUDAKernel.__call__ = traced_call
    kernel_launch.device_empty = traced_empty
    mma16.cp_async = traced_copy
    try:
        yield accesses, regions
    finally:
        cls.__getitem__, cls.__setitem__ = get, put
        sim_kernel.FakeCUDAKernel.__call__ = call
        kernel_launch.device_empty = empty
        mma16.cp_async = copy


def region(device_array):
    a = device_array._ary
    return a.__array_interface__["data"][0], a.nbytes


def sectors_by_access(accesses, regions):
    """(launch, tensor, "ld"|"st") -> (sector bytes, bytes). A warp instruction is the k-th access of a
    tensor by each lane of a warp (lanes run the same code: tiles are full); addresses are taken
    from the tensor's start, which cudaMalloc aligns to far more than a sector. An element several
    lanes of one instruction read (the four lanes of a row reading its L) is asked for once."""
    def where(addr):
        for name, (start, nbytes) in regions.items():
            if start <= addr < start + nbytes:
                return name, addr - start
        raise AssertionError(f"an access outside every known array: {addr:#x}")

    ordinal, groups = collections.Counter(), collections.defaultdict(set)
    for launch, block, tid, addr, itemsize, store in accesses:
        tensor, offset = where(addr)
        op = "st" if store else "ld"
        k = ordinal[launch, block, tid, tensor, op]
        ordinal[launch, block, tid, tensor, op] += 1
        groups[launch, block, tid // ncu_sectors.WARP, tensor, op, k].add((offset, itemsize))
    sector_bytes, nbytes = collections.Counter(), collections.Counter()
    for (launch, _, _, tensor, op, _), elements in groups.items():
        sector_bytes[launch, tensor, op] += len({b // ncu_sectors.SECTOR for o, size in elements
                                                 for b in (o, o + size - 1)}) * ncu_sectors.SECTOR
        nbytes[launch, tensor, op] += sum(size for _, size in elements)
    return {key: (sector_bytes[key], nbytes[key]) for key in nbytes}


def device(x):
    from numba import cuda

    return cuda.to_device(x)


def inputs(problem, names, seed=0):
    rng = np.random.default_rng(seed)
    shapes = {"Q": problem.n_q, "dO": problem.n_q, "K": problem.n_kv, "V": problem.n_kv}
    return {n: device(rng.standard_normal((problem.batch, problem.heads, shapes[n], problem.head_dim))
                      .astype(problem.dtype)) for n in names}


def assert_model_matches_trace(schedule, problem, backward, module, run_traced):
    """Each launch's traced sector bytes, tensor by tensor, equal the simulator's bytes × the model's factor."""
    with traced() as (accesses, regions):
        given = run_traced()
    regions.update({name: region(x) for name, x in given.items()})
    trace = sectors_by_access(accesses, regions)
    per_launch = simulate_dram(schedule, problem, gpu="h200", backward=backward).per_launch
    phase_accesses = ncu_sectors.accesses(schedule.kind, backward, module)
    l1 = ncu_sectors.l1_bytes(per_launch, phase_accesses, schedule, problem.head_dim, problem.dtype)
    assert {launch for launch, _, _ in trace} == set(range(len(per_launch)))
    for i, (launch, model) in enumerate(zip(per_launch, l1)):
        for op in ("ld", "st"):
            traced_sectors = sum(s for (j, _, o), (s, _) in trace.items() if j == i and o == op)
            traced_bytes = sum(b for (j, _, o), (_, b) in trace.items() if j == i and o == op)
            assert traced_bytes == model[f"hbm_{op}_bytes"], (launch["phase"], op)
            assert traced_sectors == pytest.approx(model[f"{op}_bytes"]), (launch["phase"], op, trace)
        # the accesses the model lists as not whole sectors are the ones the trace shows
        uneven = {f"{t} {o}": s / b for (j, t, o), (s, b) in trace.items() if j == i and s != b}
        assert uneven == pytest.approx(model["factors"]), launch["phase"]


#: TX = 16 threads along a row (as the check's 64×64 blocks with 4×4 tiles have), 64 threads in all:
#: register tiles are stored in whole sectors (ncu_sectors.whole_sector_caveats).
SMALL = dict(block_q=16, block_kv=32, thread_q=4, thread_kv=2)


@traces
@pytest.mark.parametrize("kind", kinds.names())
def test_plain_forward(kind):
    """The counting kernels' forward (counters compiled out): whole sectors, but for standard's L."""
    schedule = Schedule(kind, **SMALL, kv_splits=2 if kinds.get(kind).kv_splits else 1)
    problem = Problem(1, 1, 32, 64, 16)
    x = inputs(problem, "QKV")

    def run():
        kernel_launch.run(schedule, problem, x["Q"], x["K"], x["V"], fast=False)
        return x

    assert_model_matches_trace(schedule, problem, False, None, run)


@traces
@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("kind", ["flash2", "standard"])
def test_plain_backward(kind, dtype):
    """d reads a row per thread; dK and dV leave their register tiles transposed."""
    schedule = Schedule(kind, **SMALL)
    problem = Problem(1, 1, 32, 64, 16, dtype=dtype)
    x = inputs(problem, ("Q", "K", "V", "dO"))
    out, lse = kernel_launch.run(schedule, problem, x["Q"], x["K"], x["V"], fast=False)[:2]

    def run():
        kernel_launch.run_backward(schedule, problem, x["Q"], x["K"], x["V"], out, lse, x["dO"])
        return {**x, "O": out, "L": lse}

    assert_model_matches_trace(schedule, problem, True, None, run)


@traces
@pytest.mark.parametrize("schedule, d", [(Schedule("flash2", 32, 32, 4, 4), 32), (tc_schedule(16, 8), 16)],
                         ids=["fast-fma", "fast-tf32x3"])
def test_fast_forward(schedule, d):
    """The fast builds: the FMA build's O and L stores, the tensor-core build's Q, K loads and O stores."""
    problem = Problem(1, 1, schedule.block_q, 2 * schedule.block_kv, d)
    chosen = choose_build(schedule, d, fast=True)
    x = inputs(problem, "QKV")

    def run():
        kernel_launch.run(schedule, problem, x["Q"], x["K"], x["V"], chosen=chosen)
        return x

    assert_model_matches_trace(schedule, problem, False, chosen.module, run)


@traces
@pytest.mark.parametrize("dtype, causal", [("float32", False), ("float16", False), ("float32", True)])
def test_fast_backward(dtype, causal, monkeypatch):
    """flash2's fast backward: every load and store in whole sectors (d's row sums and the gradients
    staged through SRAM), so the trace finds none uneven; d's block in two passes of 8 rows, as
    d = 128 takes them. Causal with Nk > Nq, the last K/V block starts past every query: dkdv loads
    nothing for it (and stores its zeros), as the simulator counts. With fp32 inputs the kernels copy
    their tiles by cp.async (two stages), which ncu counts at LDGSTS_COUNTED of their sectors
    (test_the_h200s_measured_bytes_of_the_two_stage_backward); a trace sees the sectors alone."""
    monkeypatch.setattr(backward_tc, "D_STAGE_FLOATS", 8 * 17)
    monkeypatch.setattr(kernel_launch, "build", kernel_launch.build.__wrapped__)  # not the cached kernels
    schedule = tc_schedule(16, 16)
    problem = Problem(1, 1, 32, 48, 16, dtype=dtype, causal=causal)
    chosen = choose_backward_build(schedule, problem.head_dim, fast=True)
    x = inputs(problem, ("Q", "K", "V", "dO"))
    out, lse = kernel_launch.run(schedule, problem, x["Q"], x["K"], x["V"], fast=False)[:2]

    def run():
        kernel_launch.run_backward(schedule, problem, x["Q"], x["K"], x["V"], out, lse, x["dO"], chosen=chosen)
        return {**x, "O": out, "L": lse}

    copies = {ph: sorted(a.tensor for a in acc if a.counted(schedule, 16, problem.dtype.itemsize) != 1)
              for ph, acc in ncu_sectors.accesses("flash2", True, chosen.module).items()}
    two = dtype == "float32"
    assert chosen.fast and copies == {"dkdv": ["K", "Q", "V", "dO"] if two else [], "dq": ["K", "Q", "V", "dO"] if two else []}
    assert ncu_sectors.accesses("flash2", True, chosen.module, masked=True) == {}
    monkeypatch.setattr(ncu_sectors, "LDGSTS_COUNTED", 1.0)
    assert_model_matches_trace(schedule, problem, True, chosen.module, run)


def test_production_factors():
    """At the check's own schedules the factors are the ones the README's numbers rest on."""
    s, f = Schedule("flash2", 64, 64, 4, 4), ncu_sectors.factor
    assert f(ncu_sectors.backward_d_rows, s, 64, 4) == 8 and f(ncu_sectors.backward_d_rows, s, 64, 2) == 16
    assert f(ncu_sectors.transposed_store, s, 128, 4) == 4
    assert f(ncu_sectors.fma_o_store, s, 64, 4) == 4 and f(ncu_sectors.fma_o_store, s, 128, 4) == 4
    tc = tc_schedule(64, 64)
    assert [f(p, tc, 128, 4) for p in (ncu_sectors.tc_q_load, ncu_sectors.tc_k_load, ncu_sectors.tc_v_load,
                                       ncu_sectors.tc_o_store)] == [2, 2, 1, 2]
    assert f(ncu_sectors.one_thread_per_row, s, 64, 4) == 8
    from kernels.flash2_tc16 import tc16_schedule as f16

    assert [f(p, f16(64, 64), d, 2) for p in (ncu_sectors.tc16_q_load, ncu_sectors.tc16_o_store)
            for d in (64, 128)] == [2] * 4
    # a warp per 32 rows: Q_i copied whole by cp.async
    assert [f(p, f16(128, 64, 32), d, 2) for p in (ncu_sectors.tc16_q_load, ncu_sectors.tc16_o_store)
            for d in (64, 128)] == [1, 1, 2, 2]


def test_l1_bytes_and_its_note():
    """l1_bytes multiplies each listed access's bytes by its factor and says which ones."""
    per_launch = [{"phase": "d", "per_tensor": {"O": {"requested_read_bytes": 100}, "D": {"requested_write_bytes": 8}}},
                  {"phase": "dq", "per_tensor": {"dQ": {"requested_write_bytes": 64}}}]
    s = Schedule("flash2", 64, 64, 4, 4)
    l1 = ncu_sectors.l1_bytes(per_launch, ncu_sectors.accesses("flash2", True), s, 64, "float32")
    assert [(x["phase"], x["ld_bytes"], x["st_bytes"], x["hbm_ld_bytes"], x["hbm_st_bytes"]) for x in l1] == [
        ("d", 800, 8, 100, 8), ("dq", 0, 64, 0, 64)]
    assert ncu_sectors.describe(l1) == "d: O ld ×8.00"
    assert ncu_sectors.accesses("splitkv", False) == {} and ncu_sectors.accesses("flash2", False, object()) == {}


def test_whole_sector_caveats():
    """The conditions under which the accesses taken as whole sectors are whole."""
    s = Schedule("flash2", 64, 64, 4, 4)
    assert ncu_sectors.whole_sector_caveats(s, Problem(1, 1, 1024, 1024, 64)) == []
    assert ncu_sectors.whole_sector_caveats(Schedule("flash2", **SMALL), Problem(1, 1, 32, 64, 16, dtype="float16")) == []
    causal = ncu_sectors.whole_sector_caveats(s, Problem(1, 1, 1024, 1024, 64, causal=True))
    assert len(causal) == 1 and causal[0].startswith("causal")
    odd = ncu_sectors.whole_sector_caveats(Schedule("flash2", 16, 16, 4, 4), Problem(1, 1, 100, 100, 6))
    assert [c.split(" ")[0].split("=")[0] for c in odd] == ["TX", "d·itemsize", "Bc·4", "ragged"]


@pytest.mark.parametrize("name, build", [("ncu_check.csv", "plain"), ("ncu_check_fast.csv", "fast-fma")])
def test_the_h100s_measured_bytes(name, build):
    """The sector model gives, byte for byte, the L1 global load and store bytes Nsight Compute measured on
    the H100 (docs/results/h100-2026-11-24, N up to 4096): standard's L and the FMA build's O and L included."""
    import csv
    import pathlib

    from sandbox.cli import ncu_parser
    from sandbox.lab import ncu_results, ncu_specs

    args = ncu_parser().parse_args(["--no-probes"])
    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "h100-2026-11-24" / name
    with open(path) as f:
        rows = [r for r in csv.DictReader(f) if int(r["n"]) <= 4096]
    assert len(rows) == (16 if build == "plain" else 4)
    for r in rows:
        cfg = ncu_specs.Config(r["kind"], int(r["n"]), int(r["d"]), bool(int(r["causal"])), "fwd", build)
        pred = ncu_results.predict(cfg, args, "h100")
        assert (pred["sim_l1_ld_bytes"], pred["sim_l1_st_bytes"]) == (
            float(r["ncu_global_ld_bytes"]), float(r["ncu_global_st_bytes"])), cfg.label()


def test_the_h200s_measured_bytes_of_the_16_bit_forward():
    """The model gives, byte for byte, the L1 global bytes Nsight Compute measured on the H200 for the
    16-bit forward with a warp per 32 rows (docs/results/h200-2026-12-01/ncu_check_f16.csv, 128×64): Q_i,
    K_j and V_j copied by cp.async (counted at 9/8 of their bytes), O_i stored in word pairs (2×)."""
    import csv
    import pathlib

    from sandbox.cli import ncu_parser
    from sandbox.lab import ncu_results, ncu_specs

    args = ncu_parser().parse_args(["--no-probes", "--dtype", "float16", "--block-q", "128", "--block-kv", "64",
                                    "--thread-q", "4", "--thread-kv", "16"])
    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "h200-2026-12-01" / "ncu_check_f16.csv"
    with open(path) as f:
        rows = list(csv.DictReader(line for line in f if not line.startswith("#")))
    assert len(rows) == 4
    for r in rows:
        assert (int(r["block_q"]), int(r["block_kv"])) == (128, 64)
        cfg = ncu_specs.Config(r["kind"], int(r["n"]), int(r["d"]), bool(int(r["causal"])), "fwd", "fast-f16")
        pred = ncu_results.predict(cfg, args, "h200")
        assert (pred["sim_l1_ld_bytes"], pred["sim_l1_st_bytes"]) == (
            float(r["ncu_global_ld_bytes"]), float(r["ncu_global_st_bytes"])), cfg.label()
        assert pred["sim_l1_ld_bytes"] == ncu_sectors.LDGSTS_COUNTED * pred["sim_hbm_read_bytes"]


def test_the_h200s_measured_bytes_of_the_two_stage_backward():
    """The model gives, byte for byte, the L1 global bytes Nsight Compute measured on the H200 for the
    fp32 fast backward at 64×64 (docs/results/h200-2026-12-02/ncu_check_backward.json, d = 64 and 128,
    causal and not, without a mask and under two): unmasked, every tile copied by cp.async into two
    stages (LDGSTS_COUNTED of its bytes); under a mask one stage, loaded in whole sectors (the
    simulator's bytes)."""
    import json
    import pathlib

    from sandbox.cli import ncu_parser
    from sandbox.lab import ncu_results, ncu_specs

    args = ncu_parser().parse_args(["--no-probes"])
    path = pathlib.Path(__file__).resolve().parents[2] / "docs" / "results" / "h200-2026-12-02" / "ncu_check_backward.json"
    rows = json.loads(path.read_text())["rows"]
    assert len(rows) == 12 and sum(not r["mask"] for r in rows) == 4
    for r in rows:
        assert (r["block_q"], r["block_kv"], r["build"]) == (64, 64, "fast-tf32x3")
        cfg = ncu_specs.Config(r["kind"], r["n"], r["d"], bool(r["causal"]), "bwd", r["build"], r["mask"] or "")
        pred = ncu_results.predict(cfg, args, "h200")
        assert (pred["sim_l1_ld_bytes"], pred["sim_l1_st_bytes"]) == (
            r["ncu_global_ld_bytes"], r["ncu_global_st_bytes"]), cfg.label()
        if r["mask"]:
            assert pred["sim_l1_ld_bytes"] == pred["sim_hbm_read_bytes"], cfg.label()
        else:
            assert pred["sim_l1_ld_bytes"] > pred["sim_hbm_read_bytes"], cfg.label()


def test_a_cp_async_copy_is_counted_at_9_8_of_its_bytes():
    """The 16-bit build's K_j and V_j copies, and Q_i's with a warp per 32 rows, take LDGSTS_COUNTED;
    Q's word loads with a warp per 16 rows take their sectors alone."""
    from kernels import flash2_tc16
    from kernels.flash2_tc16 import tc16_schedule as f16

    by = {a.tensor: a for a in ncu_sectors.accesses("flash2", False, flash2_tc16)["main"]}
    wide, narrow = f16(128, 64, 32), f16(64, 64)
    assert [by[t].counted(wide, 64, 2) for t in "QKV"] == [9 / 8] * 3
    assert [by[t].counted(narrow, 64, 2) for t in "QKV"] == [2, 9 / 8, 9 / 8]
    assert by["O"].counted(wide, 64, 2) == 2


@pytest.mark.parametrize("backward", [False, True], ids=["fwd", "bwd"])
def test_stream_bytes_are_the_l2_models_requests(backward):
    """stream_bytes, without the cache model, gives each launch's requested bytes per tensor as simulate_dram
    does (the causal S and P tiles' rows cut at the diagonal included)."""
    for kind in kinds.names():
        if backward and kinds.get(kind).backward is None:
            continue
        schedule = Schedule(kind, **SMALL, kv_splits=2 if kinds.get(kind).kv_splits else 1)
        problem = Problem(1, 2, 72, 72, 16, causal=True)
        got = _requested(ncu_sectors.stream_bytes(schedule, problem, backward))
        want = _requested(simulate_dram(schedule, problem, gpu="h200", backward=backward).per_launch)
        assert got == want, kind


def _requested(per_launch):
    """(phase, {tensor: {its nonzero requested_* bytes}}) per launch, tensors without any left out."""
    out = []
    for x in per_launch:
        per = {t: {k: v for k, v in f.items() if k.startswith("requested") and v} for t, f in x["per_tensor"].items()}
        out.append((x["phase"], {t: f for t, f in per.items() if f}))
    return out


def test_masked_l1_bytes_only_where_every_access_moves_every_row():
    """Under a mask the sectors beyond the bytes are the mask-free stream's, for accesses outside the tile
    loop; an uneven access in the tile loop (the tensor-core forward's K_j) leaves no sector model."""
    from kernels import flash2_tc

    l1 = [{"phase": "d", "ld_bytes": 800.0, "st_bytes": 8.0, "hbm_ld_bytes": 100, "hbm_st_bytes": 8,
           "factors": {"O ld": 8.0}}]
    assert ncu_sectors.masked_l1_bytes(l1, ncu_sectors.accesses("flash2", True), 60, 5) == (760, 5, [])
    l1 = [{"phase": "main", "ld_bytes": 300.0, "st_bytes": 8.0, "hbm_ld_bytes": 200, "hbm_st_bytes": 8,
           "factors": {"K ld": 2.0}}]
    assert ncu_sectors.masked_l1_bytes(l1, ncu_sectors.accesses("flash2", False, flash2_tc), 100, 8) == (
        None, None, ["main: K ld"])


@traces
def test_masked_backward():
    """The plain flash2 backward under a sliding window skips the mask's empty tiles, and its traced sectors
    are the check's masked sector model: the simulator's bytes under the mask plus d's and dK, dV's extra
    sectors, which move every row whatever the mask."""
    from sandbox.cli import ncu_parser
    from sandbox.lab import ncu_results, ncu_specs
    from sandbox.vocabulary.masks import tile_classes

    args = ncu_parser().parse_args(["--no-probes", "--block-q", "16", "--block-kv", "16", "--thread-q", "4",
                                    "--thread-kv", "2"])
    cfg = ncu_specs.Config("flash2", 48, 8, False, "bwd", "plain", "sliding_window:4")
    schedule, problem, mask = (f(cfg, args) for f in (ncu_specs.make_schedule, ncu_specs.make_problem,
                                                      ncu_specs.make_mask))
    assert tile_classes(mask, schedule, problem)[0] == 2  # Q block 0 with K/V block 2, and 2 with 0: skipped
    pred = ncu_results.predict(cfg, args, "h200")
    x = inputs(problem, ("Q", "K", "V", "dO"))
    out, lse = kernel_launch.run(schedule, problem, x["Q"], x["K"], x["V"], mask=mask, fast=False)[:2]
    with traced() as (accesses, regions):
        kernel_launch.run_backward(schedule, problem, x["Q"], x["K"], x["V"], out, lse, x["dO"], mask=mask)
    regions.update({name: region(a) for name, a in {**x, "O": out, "L": lse}.items()})
    trace = sectors_by_access(accesses, regions)
    for op, moved in (("ld", "sim_hbm_read_bytes"), ("st", "sim_hbm_write_bytes")):
        assert sum(b for (_, _, o), (_, b) in trace.items() if o == op) == pred[moved], op
        assert sum(s for (_, _, o), (s, _) in trace.items() if o == op) == pred[f"sim_l1_{op}_bytes"], op
    assert pred["sim_l1_bytes"] > pred["sim_hbm_bytes"]
