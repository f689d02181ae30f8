"""The L2 model: its request stream is counts.py's HBM traffic, and its cache is an exact sector-level LRU."""

import dataclasses
import math
import types
from collections import OrderedDict

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sandbox import Problem, Schedule
from sandbox.vocabulary.gpus import KNOWN_GPUS
from sandbox.vocabulary import kinds
from simulator.counts import simulate_backward_counts, simulate_counts
from simulator.l2 import blocks_per_sm, default_resident_blocks, simulate_dram, simulate_requests
from simulator import table
from simulator.streams import BACKWARD_LAUNCHES, TENSORS, tile_requests

#: Every kind with a request stream in the simulator's table.
KINDS = tuple(k for k in table.names() if table.get(k).l2 is not None)
#: Every kind with a backward pass (each has its backward's request stream).
BACKWARD_KINDS = tuple(k for k in kinds.names() if kinds.get(k).backward)
HUGE = 64 * 2**20  # far larger than any working set below

# (schedule blocks, problem): ragged lengths, Nq != Nk, fp16, B·H > 1
CASES = [
    ((8, 16), dict(batch=2, heads=3, n_q=37, n_kv=53, head_dim=5)),
    ((16, 8), dict(batch=1, heads=2, n_q=64, n_kv=40, head_dim=16, dtype="float16")),
    ((4, 4), dict(batch=1, heads=1, n_q=100, n_kv=7, head_dim=3)),
    ((32, 32), dict(batch=1, heads=1, n_q=5, n_kv=90, head_dim=12, dtype="bfloat16")),
]


def _schedule(kind, blocks, splits=3):
    return Schedule(kind, block_q=blocks[0], block_kv=blocks[1], kv_splits=splits if kind == "splitkv" else 1)


def assert_requests_equal_counts(schedule, problem, backward=False):
    counts = (simulate_backward_counts if backward else simulate_counts)(schedule, problem)
    r = simulate_dram(schedule, problem, gpu="h200", backward=backward)
    assert r.requested_bytes == counts.hbm_bytes
    assert r.requested_read_bytes == counts.bytes("hbm_reads")
    assert r.requested_write_bytes == counts.bytes("hbm_writes")
    for t in TENSORS:  # tensor by tensor
        got = r.per_tensor.get(t, {})
        assert got.get("requested_read_bytes", 0) == counts.hbm_reads.get(t, 0) * counts.itemsize[t], t
        assert got.get("requested_write_bytes", 0) == counts.hbm_writes.get(t, 0) * counts.itemsize[t], t
    for t in set(counts.hbm_reads) | set(counts.hbm_writes):  # every tensor the counts have is in the stream
        assert t in TENSORS, t
    # the launches' own per-tensor bytes add up to the whole's
    for t, whole in r.per_tensor.items():
        for field, value in whole.items():
            assert sum(ln["per_tensor"].get(t, {}).get(field, 0) for ln in r.per_launch) == value, (t, field)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_requested_bytes_equal_simulate_counts(kind, causal, case):
    blocks, shape = CASES[case]
    assert_requests_equal_counts(_schedule(kind, blocks), Problem(**shape, causal=causal))


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), br=st.integers(1, 12), bc=st.integers(1, 12), b=st.integers(1, 2),
       h=st.integers(1, 2), n_q=st.integers(1, 40), n_kv=st.integers(1, 40), d=st.integers(1, 20),
       dtype=st.sampled_from(["float32", "float16"]), causal=st.booleans(), splits=st.integers(1, 5))
def test_requested_bytes_equal_simulate_counts_property(kind, br, bc, b, h, n_q, n_kv, d, dtype, causal, splits):
    assert_requests_equal_counts(_schedule(kind, (br, bc), splits),
                                 Problem(b, h, n_q, n_kv, d, dtype=dtype, causal=causal))


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_backward_requested_bytes_equal_simulate_backward_counts(kind, causal, case):
    blocks, shape = CASES[case]
    assert_requests_equal_counts(_schedule(kind, blocks), Problem(**shape, causal=causal), backward=True)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(BACKWARD_KINDS), br=st.integers(1, 12), bc=st.integers(1, 12), b=st.integers(1, 2),
       h=st.integers(1, 2), n_q=st.integers(1, 40), n_kv=st.integers(1, 40), d=st.integers(1, 20),
       dtype=st.sampled_from(["float32", "float16"]), causal=st.booleans())
def test_backward_requested_bytes_property(kind, br, bc, b, h, n_q, n_kv, d, dtype, causal):
    assert_requests_equal_counts(_schedule(kind, (br, bc)), Problem(b, h, n_q, n_kv, d, dtype=dtype, causal=causal),
                                 backward=True)


@settings(max_examples=25, deadline=None)
@given(kind=st.sampled_from(KINDS), br=st.integers(1, 12), bc=st.integers(1, 12), b=st.integers(1, 2),
       hk=st.sampled_from([(2, 1), (4, 1), (4, 2), (6, 3)]), n_q=st.integers(1, 40), n_kv=st.integers(1, 40),
       d=st.integers(1, 20), dtype=st.sampled_from(["float32", "float16"]), causal=st.booleans(),
       splits=st.integers(1, 5))
def test_grouped_requested_bytes_equal_simulate_counts(kind, br, bc, b, hk, n_q, n_kv, d, dtype, causal, splits):
    """Grouped K/V heads, forward and (kinds with one) backward, its partials and group sum included."""
    problem = Problem(b, hk[0], n_q, n_kv, d, dtype=dtype, causal=causal, heads_kv=hk[1])
    assert_requests_equal_counts(_schedule(kind, (br, bc), splits), problem)
    if kind in BACKWARD_KINDS:
        assert_requests_equal_counts(_schedule(kind, (br, bc)), problem, backward=True)


def test_grouped_heads_share_k_and_v_in_the_l2():
    """At fixed H the requests stay the same, but a group's query heads request one K/V head's
    addresses: the DRAM bytes of K and V, and of the whole forward, fall as the group grows."""
    s = _schedule("flash2", (64, 64))
    reports = [simulate_dram(s, Problem(1, 8, 512, 512, 64, heads_kv=hk), gpu="h200") for hk in (8, 4, 2, 1)]
    assert len({r.requested_bytes for r in reports}) == 1
    dram = [r.dram_bytes for r in reports]
    kv = [r.per_tensor["K"]["read_bytes"] + r.per_tensor["V"]["read_bytes"] for r in reports]
    assert dram == sorted(dram, reverse=True) and len(set(dram)) == 4
    assert kv == [2 * 512 * 64 * 4 * hk for hk in (8, 4, 2, 1)]  # each K/V head read from DRAM once
    with pytest.raises(ValueError, match="slices='all'"):
        simulate_dram(s, Problem(1, 8, 512, 512, 64, heads_kv=2), gpu="h200", slices="one")


def test_grouped_backward_ends_with_the_group_sum():
    s = _schedule("flash2", (8, 8))
    phases = [ln.phase for ln in tile_requests(s, Problem(1, 4, 16, 16, 4, heads_kv=2), backward=True)]
    assert phases == ["d", "dkdv", "dq", "group_sum"]
    assert [ln.phase for ln in tile_requests(s, Problem(1, 4, 16, 16, 4), backward=True)] == ["d", "dkdv", "dq"]


def test_the_backward_launches_are_the_backwards():
    """One stream per backward pass (the kinds' trait), launched in kernels/launch.py's order."""
    assert {kinds.get(k).backward for k in BACKWARD_KINDS} == set(BACKWARD_LAUNCHES)
    assert [p for p, _, _ in BACKWARD_LAUNCHES["flash"]] == ["d", "dkdv", "dq"]
    assert [p for p, _, _ in BACKWARD_LAUNCHES["standard"]] == ["d", "p", "ds", "dv", "dk", "dq"]
    with pytest.raises(NotImplementedError, match="no backward pass"):
        simulate_dram(_schedule("splitkv", (8, 8)), Problem(1, 1, 16, 16, 4), gpu="h200", backward=True)


@pytest.mark.parametrize("backward", [False, True], ids=["forward", "backward"])
@pytest.mark.parametrize("kind", KINDS)
def test_blocks_follow_the_grid(kind, backward):
    if backward and kind not in BACKWARD_KINDS:
        pytest.skip(f"{kind} has no backward pass")
    schedule, problem = _schedule(kind, (8, 16)), Problem(2, 3, 37, 53, 5, causal=True)
    for launch in tile_requests(schedule, problem, backward):
        assert len(launch.block_ptr) - 1 == math.prod(launch.grid)
        assert launch.step_ptr[-1] == len(launch.requests)


# -- an independent reference: a fully associative LRU cache in plain Python ------------------
def reference_cache(ranges, lines, line=128, sector=32, dirty_limit=None, cleaned_out=None):
    """(read, evicted, flushed) bytes of ``ranges`` [(addr, nbytes, write)] through a ``lines``-line LRU cache.

    With ``dirty_limit`` (sectors), after each write the lines dirtied longest ago are written
    back (and stay cached) until at most that many sectors are dirty; their bytes are appended to
    ``cleaned_out``."""
    cache = OrderedDict()  # line -> (valid sectors, dirty sectors)
    order = OrderedDict()  # lines with dirty sectors, in the order they became dirty
    read = evicted = cleaned = 0
    for addr, n, write in ranges:
        end = addr + n
        for ln in range(addr // line, (end - 1) // line + 1):
            s, e = max(addr, ln * line) - ln * line, min(end, (ln + 1) * line) - ln * line
            touched = set(range(s // sector, (e - 1) // sector + 1))
            full = set(range(-(-s // sector), e // sector))
            if ln in cache:
                cache.move_to_end(ln)
            else:
                if len(cache) == lines:
                    victim, (_, vdirty) = cache.popitem(last=False)
                    evicted += len(vdirty)
                    order.pop(victim, None)
                cache[ln] = (set(), set())
            valid, dirty = cache[ln]
            if write:
                if not dirty:
                    order[ln] = True
                dirty |= touched
                valid |= full
                while dirty_limit is not None and sum(len(cache[x][1]) for x in order) > dirty_limit:
                    oldest, _ = order.popitem(last=False)
                    cleaned += len(cache[oldest][1])
                    cache[oldest][1].clear()
            else:
                read += len(touched - valid)
                valid |= touched
    flushed = sum(len(d) for _, d in cache.values())
    if cleaned_out is not None:
        cleaned_out.append(cleaned * sector)
    return read * sector, evicted * sector, flushed * sector


def stream(schedule, problem, backward=False):
    """Every byte range of every launch, blocks one after another (resident_blocks=1)."""
    out = []
    for launch in tile_requests(schedule, problem, backward):
        addr, nbytes, write, _ = launch.rows()
        out += list(zip(addr.tolist(), nbytes.tolist(), write.tolist()))
    return out


@pytest.mark.parametrize("lines", [1, 3, 16, 64])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
def test_cache_equals_reference_lru(kind, causal, lines):
    """One set of ``lines`` ways is a fully associative LRU: the Python reference, sector for sector."""
    schedule, problem = _schedule(kind, (8, 16)), Problem(2, 1, 37, 29, 5, causal=causal)
    r = simulate_dram(schedule, problem, l2_bytes=lines * 128, ways=lines, resident_blocks=1)
    assert r.config["sets"] == 1
    read, evicted, flushed = reference_cache(stream(schedule, problem), lines)
    assert (r.read_bytes, r.write_evicted_bytes, r.write_flush_bytes) == (read, evicted, flushed)
    assert r.write_bytes == evicted + flushed


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_backward_cache_equals_reference_lru(kind, causal):
    """The backward's stream through one 16-way set, and through a dirty limit: the Python reference."""
    schedule, problem = _schedule(kind, (8, 16)), Problem(2, 1, 37, 29, 5, causal=causal)
    r = simulate_dram(schedule, problem, l2_bytes=16 * 128, ways=16, resident_blocks=1, backward=True,
                      dirty_limit_bytes=5 * 32)
    cleaned = []
    read, evicted, flushed = reference_cache(stream(schedule, problem, backward=True), 16, dirty_limit=5,
                                             cleaned_out=cleaned)
    assert (r.read_bytes, r.write_evicted_bytes, r.write_cleaned_bytes, r.write_flush_bytes) == (
        read, evicted, cleaned[0], flushed)


@pytest.mark.parametrize("kind", BACKWARD_KINDS)
def test_backward_residency_from_its_footprints(kind):
    """The backward's launches hold the blocks their own shared memory allows ("d" uses none)."""
    schedule, problem = _schedule(kind, (64, 64)), Problem(1, 1, 256, 256, 128)
    blocks = default_resident_blocks(schedule, problem, "h200", backward=True)
    assert list(blocks) == [p for p, _, _ in BACKWARD_LAUNCHES[kinds.get(kind).backward]]
    h200 = KNOWN_GPUS["h200"]
    assert blocks["d"] == h200.sms * min(h200.max_blocks_per_sm, h200.max_warps_per_sm // (schedule.threads // 32))
    big = "dkdv" if kind != "standard" else "p"
    assert blocks_per_sm(schedule, problem, big, "h200", backward=True) < blocks["d"] // h200.sms


@pytest.mark.parametrize("limit", [0, 5, 40])
@pytest.mark.parametrize("lines", [3, 64])
@pytest.mark.parametrize("kind", KINDS)
def test_dirty_limit_equals_reference(kind, lines, limit):
    """A dirty limit (in sectors) writes back the longest-dirty lines, as the Python reference does."""
    schedule, problem = _schedule(kind, (8, 16)), Problem(2, 1, 37, 29, 5, causal=True)
    r = simulate_dram(schedule, problem, l2_bytes=lines * 128, ways=lines, resident_blocks=1,
                      dirty_limit_bytes=limit * 32)
    cleaned = []
    read, evicted, flushed = reference_cache(stream(schedule, problem), lines, dirty_limit=limit, cleaned_out=cleaned)
    assert (r.read_bytes, r.write_evicted_bytes, r.write_cleaned_bytes, r.write_flush_bytes) == (
        read, evicted, cleaned[0], flushed)
    assert r.write_flush_bytes <= limit * 32
    if limit == 0:
        assert r.write_evicted_bytes == r.write_flush_bytes == 0  # written through, every write
    assert r.write_bytes == evicted + cleaned[0] + flushed


@pytest.mark.parametrize("resident", [1, 7, None])
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("case", range(len(CASES)))
def test_large_cache_reads_compulsory_misses(kind, causal, case, resident):
    """A cache far larger than the working set reads each sector once, unless a full write came first."""
    blocks, shape = CASES[case]
    schedule, problem = _schedule(kind, blocks), Problem(**shape, causal=causal)
    r = simulate_dram(schedule, problem, l2_bytes=HUGE, resident_blocks=resident, gpu="h200")
    read, evicted, flushed = reference_cache(stream(schedule, problem), lines=HUGE // 128)
    assert evicted == 0 and r.write_evicted_bytes == 0
    assert r.read_bytes == read
    assert r.write_bytes == r.write_flush_bytes == flushed


def test_large_cache_reads_inputs_once():
    """flash2, N a multiple of every block: DRAM reads are exactly Q, K and V, writes exactly O and L."""
    problem = Problem(1, 2, 256, 256, 32)
    r = simulate_dram(_schedule("flash2", (32, 64)), problem, l2_bytes=HUGE, gpu="h200")
    assert r.read_bytes == 3 * 2 * 256 * 32 * 4
    assert r.write_bytes == 2 * 256 * (32 + 1) * 4
    assert r.l2_read_hit_rate == pytest.approx(1 - r.read_bytes / r.requested_read_bytes)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("kind", KINDS)
def test_one_line_cache_reads_every_request(kind, causal):
    """With one line, every read request misses: DRAM reads = requested bytes rounded up to sectors."""
    schedule = _schedule(kind, (16, 8))
    problem = Problem(2, 2, 48, 40, 8, causal=causal)  # rows of 32 bytes, S rows of 160: sector-aligned
    r = simulate_dram(schedule, problem, l2_bytes=128, ways=1, gpu="h200")
    assert r.read_bytes == r.requested_read_sector_bytes
    if not causal:  # every range is whole sectors: rounding changes nothing
        assert r.read_bytes == simulate_counts(schedule, problem).bytes("hbm_reads")
    assert r.write_bytes == r.requested_write_sector_bytes  # each written sector written back once


# -- hand-made streams -------------------------------------------------------------------------
A, B, C = 0, 128, 256  # three lines


@pytest.mark.parametrize("policy, misses", [("lru", 4), ("fifo", 5)])
def test_replacement_policy(policy, misses):
    # 2 ways, 1 set: A B A C A B. LRU keeps A (used again) and evicts B; FIFO evicts A (oldest in).
    reqs = [(x, 128, False) for x in (A, B, A, C, A, B)]
    r = simulate_requests(reqs, l2_bytes=256, ways=2, policy=policy)
    assert r.read_bytes == misses * 128
    assert r.requested_read_bytes == 6 * 128
    assert r.l2_read_hit_rate == pytest.approx(1 - misses / 6)


def test_write_back_at_eviction_and_flush():
    # write A whole (no fetch), read B, read C: C evicts A (least recently used) -> A written back
    r = simulate_requests([(A, 128, True), (B, 128, False), (C, 128, False)], l2_bytes=256, ways=2)
    assert (r.read_bytes, r.write_evicted_bytes, r.write_flush_bytes) == (256, 128, 0)
    # touch A again before C: B is evicted (clean), A stays dirty and is flushed at the end
    r = simulate_requests([(A, 128, True), (B, 128, False), (A, 4, False), (C, 128, False)], l2_bytes=256, ways=2)
    assert (r.read_bytes, r.write_evicted_bytes, r.write_flush_bytes) == (256, 0, 128)
    assert r.write_bytes == 128
    r = simulate_requests([(A, 128, True)], l2_bytes=256, ways=2, flush_at_end=False)
    assert (r.write_bytes, r.write_flush_bytes) == (0, 128)


def test_dirty_limit_writes_back_the_oldest_dirty_line():
    # limit 8 sectors = two whole lines: writing C writes A back (oldest dirty); A stays cached, clean
    reqs = [(A, 128, True), (B, 128, True), (C, 128, True), (A, 128, False)]
    r = simulate_requests(reqs, l2_bytes=4096, dirty_limit_bytes=256)
    assert (r.write_cleaned_bytes, r.write_evicted_bytes, r.write_flush_bytes) == (128, 0, 256)
    assert r.read_bytes == 0  # A was written whole: valid, and still cached after its write-back
    # rewriting a cleaned line makes it dirty again, now the youngest: B goes next
    r = simulate_requests(reqs[:3] + [(A, 32, True)], l2_bytes=4096, dirty_limit_bytes=256)
    assert r.write_cleaned_bytes == 128 + 128 and r.write_flush_bytes == 128 + 32


def test_partial_sector_write_then_read():
    # 4 bytes written: the sector is dirty but not valid, so reading its other bytes goes to DRAM
    r = simulate_requests([(A, 4, True), (A, 32, False), (A + 32, 32, True), (A + 32, 32, False)], l2_bytes=256)
    assert r.read_bytes == 32  # the second sector was written whole: its read hits
    assert r.write_flush_bytes == 64
    assert r.requested_write_sector_bytes == 64 and r.requested_write_bytes == 36


def test_ragged_ranges_round_to_sectors():
    r = simulate_requests([(A + 30, 4, False), (A + 60, 70, False)], l2_bytes=4096)
    assert r.requested_read_bytes == 74
    assert r.requested_read_sector_bytes == (2 + 4) * 32  # bytes 30..33; 60..129 crosses into line 1
    assert r.read_bytes == 5 * 32  # the sector 32..63 is touched by both, fetched once


def test_per_tensor_attribution():
    r = simulate_requests([(A, 128, False, 1), (B, 64, True, 3)], l2_bytes=4096)
    assert r.per_tensor["K"]["read_bytes"] == 128
    assert r.per_tensor["O"]["write_flush_bytes"] == 64


def test_set_index_modulo_conflicts():
    # 2 sets of 1 way: with a modulo index lines 0 and 2 share set 0 and evict each other
    reqs = [(x, 128, False) for x in (A, C, A, C)]
    assert simulate_requests(reqs, l2_bytes=256, ways=1, set_index="modulo").read_bytes == 4 * 128


# -- launches, residency, slices ----------------------------------------------------------------
def test_cold_launches_read_what_the_previous_kernel_wrote():
    """standard at a size that fits in L2: warm, softmax finds S in L2; cold, it reads S from DRAM."""
    schedule, problem = _schedule("standard", (16, 16)), Problem(1, 1, 64, 64, 16)
    warm = simulate_dram(schedule, problem, gpu="h200")
    cold = simulate_dram(schedule, problem, gpu="h200", cold_launches=True)
    s_bytes = 64 * 64 * 4
    warm_sm, cold_sm = (next(x for x in r.per_launch if x["phase"] == "softmax") for r in (warm, cold))
    assert warm_sm["read_bytes"] == 0
    assert cold_sm["read_bytes"] == s_bytes
    assert cold.write_flush_bytes == cold.write_bytes  # nothing evicted: everything flushed per launch
    assert [x["phase"] for x in cold.per_launch] == ["qk", "softmax", "pv"]


def test_slices_one_scales_a_slice():
    schedule, problem = _schedule("flash2", (16, 16)), Problem(2, 3, 64, 64, 16)
    exact = simulate_dram(schedule, problem, l2_bytes=HUGE, gpu="h200")
    scaled = simulate_dram(schedule, problem, l2_bytes=HUGE, gpu="h200", slices="one")
    assert scaled.config["slice_scale"] == 6
    for f in ("requested_read_bytes", "requested_write_bytes", "read_bytes", "write_bytes"):
        assert getattr(scaled, f) == getattr(exact, f), f


@pytest.mark.parametrize("gpu", ["h100", "h200"])
def test_default_residency(gpu):
    d128 = Problem(1, 1, 4096, 4096, 128)
    flash2 = Schedule("flash2", block_q=64, block_kv=64, thread_q=4, thread_kv=4)  # ~113 KB of SRAM, 256 threads
    assert blocks_per_sm(flash2, d128, "main", gpu) == 2
    std = Schedule("standard", block_q=64, block_kv=64, thread_q=4, thread_kv=4)
    res = default_resident_blocks(std, d128, gpu)
    assert res["softmax"] == 132 * 8  # 8 warps a block, 64 a SM
    assert res["qk"] == 132 * 3  # 64 KB of Q and K tiles + 1 KB reserved, 228 KB a SM
    r = simulate_dram(std, d128, resident_blocks={"qk": 5}, gpu=gpu)
    assert r.config["resident_blocks"]["qk"] == 5 and r.config["resident_blocks"]["pv"] == res["pv"]


def test_the_machine_is_named_never_assumed():
    """No silent H100: the L2 size and the SMs come from ``gpu`` (a name or the device's facts) or are given."""
    schedule, problem = _schedule("flash2", (8, 8)), Problem(1, 1, 16, 16, 4)
    with pytest.raises(TypeError, match="l2_bytes: say which machine"):
        simulate_dram(schedule, problem)
    with pytest.raises(TypeError, match="resident_blocks: say which machine"):
        simulate_dram(schedule, problem, l2_bytes=HUGE)
    with pytest.raises(ValueError, match="gpu: unknown machine 'a100'; known: h100, h200"):
        simulate_dram(schedule, problem, gpu="a100")
    with pytest.raises(TypeError):
        simulate_requests([(0, 128, False)])
    # explicit numbers need no machine
    assert simulate_dram(schedule, problem, l2_bytes=HUGE, resident_blocks=3).config["gpu"] is None
    h100, h200 = (simulate_dram(schedule, problem, gpu=g) for g in ("h100", "h200"))
    assert h100.config["l2_bytes"] == 52_428_800 and h200.config["l2_bytes"] == 62_914_560
    assert h200.config["gpu"] == KNOWN_GPUS["h200"].name and h200.config["sms"] == 132
    # a record read from a device: its facts, not a table's
    device = dataclasses.replace(KNOWN_GPUS["h200"], name="some GPU", l2_bytes=4 * 2**20, sms=7)
    r = simulate_dram(schedule, problem, gpu=device)
    assert r.config["l2_bytes"] == 4 * 2**20 and r.config["resident_blocks"] == {"main": 7 * 32}
    assert simulate_dram(schedule, problem, gpu=device, l2_bytes=HUGE).config["l2_bytes"] == HUGE


def test_h200_l2_holds_what_an_h100_l2_cannot():
    """A working set between 50 and 60 MiB: re-read from DRAM on an H100's L2, cached on an H200's."""
    mib = 2**20
    reqs = [(i * 128, 128, False) for i in range(55 * mib // 128)] * 2
    h100, h200 = (simulate_requests(reqs, KNOWN_GPUS[g].l2_bytes, set_index="modulo") for g in ("h100", "h200"))
    assert h200.read_bytes == 55 * mib  # the second pass hits
    assert h100.read_bytes == 2 * 55 * mib  # a cyclic pass over more than the L2 under LRU: every read misses


def test_bad_arguments():
    schedule, problem = _schedule("flash2", (8, 8)), Problem(1, 1, 16, 16, 4)
    with pytest.raises(ValueError, match="policy"):
        simulate_dram(schedule, problem, gpu="h200", policy="random")
    with pytest.raises(ValueError, match="multiple of sector"):
        simulate_dram(schedule, problem, gpu="h200", line=100)
    with pytest.raises(ValueError, match="slices"):
        simulate_dram(schedule, problem, gpu="h200", slices="some")
    with pytest.raises(ValueError, match="holds no"):
        simulate_dram(schedule, problem, gpu="h200", l2_bytes=64)
    with pytest.raises(ValueError, match="no phase"):
        simulate_dram(schedule, problem, gpu="h200", resident_blocks={"qk": 4})
    with pytest.raises(NotImplementedError, match="no request stream"):
        simulate_dram(types.SimpleNamespace(kind="nosuch"), problem, gpu="h200")
    with pytest.raises(ValueError, match="dirty_limit_bytes"):
        simulate_dram(schedule, problem, gpu="h200", dirty_limit_bytes=-1)


def test_report_as_dict():
    r = simulate_dram(_schedule("flash1", (8, 8)), Problem(1, 1, 16, 16, 4), gpu="h200")
    d = r.as_dict()
    assert d["dram_bytes"] == r.read_bytes + r.write_bytes
    assert set(d["per_tensor"]) <= set(TENSORS)
    assert np.isfinite(d["l2_read_hit_rate"])
