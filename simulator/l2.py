"""An L2 cache between SRAM and HBM: how much of a schedule's global-memory traffic reaches DRAM.

``simulator/counts.py`` counts what the algorithm moves between HBM and SRAM. On a GPU each of
those accesses goes to the L2 cache first, and only its misses and write-backs reach DRAM. This
module replays the same accesses, the tile-level request stream of ``simulator/streams.py`` in the
order the GPU issues thread blocks, through a sector-level model of the L2, and reports the DRAM
bytes. The total it requests is, byte for byte, ``simulate_counts(schedule, problem).hbm_bytes``
(tested per tensor), or with ``backward=True`` ``simulate_backward_counts``', so the L2 sits on
top of the same algorithm.

Residency and interleaving (the approximation)
    ``resident_blocks`` blocks are in flight at once (default: SMs × blocks per SM, the latter
    from the ``gpu``'s shared memory per SM, warp and block limits; registers are not known
    here, pass the measured residency where they limit it). The first ``resident_blocks`` blocks
    start together; rounds then visit the resident blocks in slot order and each executes its
    next step whole; a block that finishes hands its slot to the next block in issue order. So
    blocks advance in lockstep at tile-step granularity: blocks that run at the same time touch
    the same K/V tiles at about the same time, as on the GPU, but the real drift between SMs,
    the L1 caches (which filter some re-reads before L2) and the order of requests inside a step
    are not modelled.

Cache model
    ``l2_bytes`` of ``line``-byte lines in ``ways``-way sets, ``l2_bytes // (line·ways)`` sets;
    with ``set_index="hash"`` the lines of a 32 KiB chunk go to consecutive sets, from an offset
    hashed from the chunk's address (GPUs hash L2 addresses too, so that power-of-two strides such
    as S's rows do not pile into a few sets; keeping chunks contiguous keeps the model's own
    memory accesses local); ``"modulo"``: the line's address modulo the number of sets. Each
    line keeps a valid and a dirty bit per ``sector``-byte sector (at most 8 a line).
    Replacement is LRU (timestamp of the last access) or FIFO (timestamp of the allocation),
    within the set. Set-associative rather than fully associative: a set is a short scan, and
    with hashed sets 16 ways behave close to a fully associative LRU except near capacity,
    where sets that overflow thrash on cyclic access patterns (a cliff real L2s show too).

    - read: sectors of the range not valid are read from DRAM (one sector each) and become valid;
    - write: write-allocate without a fetch; the touched sectors become dirty, and those the range
      covers whole become valid (a partially written sector is read from DRAM only if it is
      later read);
    - eviction: the victim's dirty sectors are written to DRAM (``write_evicted_bytes``);
    - end: dirty sectors left are counted as ``write_flush_bytes`` (at the end of every launch
      with ``cold_launches=True``, which also empties the cache before the next launch, as
      Nsight Compute's default ``--cache-control all`` does; else once, after the last launch).
      ``write_bytes`` includes them when ``flush_at_end`` (the default); a profiler measures a
      kernel's DRAM writes while it runs, so compare its ``dram__bytes_write`` with
      ``write_evicted_bytes``.

Write-back while resident (``dirty_limit_bytes``)
    A GPU does not keep a whole L2 of dirty data: on an H100 (50 MiB of L2) a 64 or 128 MiB write
    stream (``kernels/l2probe.py``, ``sandbox.lab.ncu``'s probes) ends with about 21-23 MiB of it
    still in L2, the rest written to DRAM while the kernel runs, though reads of the same sizes stay
    cached as a 50 MiB LRU predicts. With a limit, the model keeps the lines in the order they became dirty; when a write
    takes the dirty sectors past the limit, the lines dirtied longest ago are written back
    (``write_cleaned_bytes``) and stay cached, clean. Without it (the default) dirty lines leave
    only when evicted. The limit is a fitted number, not a mechanism: the probes measure it.

Complexity
    The cache loop costs O(ways) per (request row, line) pair, i.e. about requested bytes / line ×
    ways operations: flash2 at N = 16K, d = 128, fp32, 64×64 blocks requests 4.3 GB (34 M line
    visits, K and V re-read once per Q block) and takes a fraction of a second to a couple of
    seconds on one core. Generating the stream is O(number of tile requests)
    (``simulator/streams.py``). Memory is O(requests + l2 lines).

    ``slices="one"`` simulates a single (b, h) slice and multiplies by B·H. The slices are
    disjoint in address space, so this is exact for the requested bytes, and for DRAM when the
    slices run one after another (each slice has at least ``resident_blocks`` blocks per launch,
    true for flash2 and standard at long N) and a slice's data is not reused by the next (never
    is). It is not valid for flash1 with B·H > 1 (all its slices, one block each, run at once
    and share the L2). The split of the writes between eviction and flush is that of one slice
    times B·H; their sum is the robust number.

The machine is always named: ``gpu`` (a :class:`sandbox.vocabulary.gpus.DeviceFacts`, as the lab reads it
from the device, or a name in ``sandbox.vocabulary.gpus.KNOWN_GPUS``) gives the L2 size, the SMs and their
limits, or ``l2_bytes`` and ``resident_blocks`` are given explicitly. This module never reads a
device itself.

Example:
    >>> from sandbox import Problem, Schedule
    >>> r = simulate_dram(Schedule("flash2", block_q=64, block_kv=64), Problem(1, 1, 1024, 1024, 64), gpu="h200")
    >>> r.read_bytes == 3 * 1024 * 64 * 4   # K and V re-read per Q block, all hits after the first
    True
"""

import dataclasses
from types import MappingProxyType

import numpy as np
from numba import njit

from sandbox.vocabulary.gpus import known_gpu
from sandbox.vocabulary.footprints import sram_offsets
from sandbox.vocabulary.schedule import sram_buffers
from simulator.streams import BACKWARD_FOOTPRINTS, NCOLS, TENSORS, Launch, backward_trait, launches, tile_requests
from simulator.streams import NO_TRI as _NO_TRI  # as the compiled cache loop reads it

# statistics columns, per (launch, tensor)
_REQ_R, _REQ_W, _SEC_R, _SEC_W, _MISS_R, _EVICT_W, _FLUSH_W, _CLEAN_W = range(8)
_NSTATS = 8
# geometry columns (_Cache.geom)
_G_SETS, _G_WAYS, _G_LINE, _G_SECTOR, _G_LRU, _G_HASH, _G_DIRTY_LIMIT = range(7)
# write-back queue state (_Cache.qstate): head, tail (ring positions, monotonic), dirty sectors now
_Q_HEAD, _Q_TAIL, _Q_DIRTY = range(3)

POLICIES = ("lru", "fifo")
SET_INDEX = ("hash", "modulo")
_MIX = np.uint64(0xFF51AFD7ED558CCD)
_HASH_CHUNK_LINES = 256
_SHIFT = np.uint64(33)


# -- the cache --------------------------------------------------------------------------------
@njit(cache=True)
def _popcount(mask):
    x = np.int64(mask)
    c = 0
    while x:
        x &= x - 1
        c += 1
    return c


@njit(cache=True)
def _set_of(line_no, n_sets, hashed):
    """The set of a line: "hash" keeps a 32 KiB chunk's lines in consecutive sets, at a hashed offset per chunk."""
    if n_sets == 1:
        return 0
    if not hashed:
        return line_no % n_sets
    x = np.uint64(line_no // _HASH_CHUNK_LINES)
    x ^= x >> _SHIFT
    x *= _MIX
    x ^= x >> _SHIFT
    return np.int64((x + np.uint64(line_no)) % np.uint64(n_sets))


@njit(cache=True)
def _compact(queue, epoch, qstate):
    """Drop the queue's stale entries (lines cleaned or evicted since they were queued), keeping the order."""
    cap = queue.shape[0]
    head, tail = qstate[_Q_HEAD], qstate[_Q_TAIL]
    keep = np.empty((tail - head, 2), dtype=np.int64)
    n = 0
    for pos in range(head, tail):
        w, e = queue[pos % cap, 0], queue[pos % cap, 1]
        if epoch[w] == e:
            keep[n, 0], keep[n, 1] = w, e
            n += 1
    for i in range(n):
        queue[i, 0], queue[i, 1] = keep[i, 0], keep[i, 1]
    qstate[_Q_HEAD], qstate[_Q_TAIL] = 0, n


@njit(cache=True)
def _clean_oldest(dirty, owner, queue, epoch, qstate, stats, launch):
    """Write back the dirty sectors of the line dirtied longest ago (it stays cached, clean); False if none."""
    cap = queue.shape[0]
    while qstate[_Q_HEAD] < qstate[_Q_TAIL]:
        pos = qstate[_Q_HEAD] % cap
        w, e = queue[pos, 0], queue[pos, 1]
        qstate[_Q_HEAD] += 1
        if epoch[w] != e:  # stale: cleaned or evicted since
            continue
        n = _popcount(dirty[w])
        stats[launch, owner[w], _CLEAN_W] += n
        qstate[_Q_DIRTY] -= n
        dirty[w] = 0
        epoch[w] += 1
        return True
    return False


@njit(cache=True)
def _touch(start, nbytes, write, tensor, tags, stamps, valid, dirty, owner, clock, geom, stats, launch,
           queue, epoch, qstate):
    """One contiguous byte range through the cache, line by line."""
    n_sets, ways, line, sector, lru, hashed = geom[0], geom[1], geom[2], geom[3], geom[4], geom[5]
    limit = geom[_G_DIRTY_LIMIT]
    end = start + nbytes
    for ln in range(start // line, (end - 1) // line + 1):
        lb = ln * line
        s = max(start, lb) - lb
        e = min(end, lb + line) - lb
        s0, s1 = s // sector, (e - 1) // sector  # touched sectors s0..s1
        touched = ((1 << (s1 + 1)) - 1) ^ ((1 << s0) - 1)
        f0, f1 = (s + sector - 1) // sector, e // sector  # sectors covered whole: f0..f1-1
        full = ((1 << f1) - 1) ^ ((1 << f0) - 1) if f1 > f0 else 0
        # -- find the line in its set; on a miss, a victim: an empty way, else the oldest stamp
        base = _set_of(ln, n_sets, hashed) * ways
        way = -1
        for w in range(base, base + ways):
            if tags[w] == ln:
                way = w
                break
        victim = -1
        if way < 0:
            oldest = np.int64(1) << 62
            for w in range(base, base + ways):
                if tags[w] < 0:
                    victim = w
                    break
                if stamps[w] < oldest:
                    victim, oldest = w, stamps[w]
        if way < 0:
            way = victim
            if tags[way] >= 0:  # evict: its dirty sectors go to DRAM
                n_dirty = _popcount(dirty[way])
                stats[launch, owner[way], _EVICT_W] += n_dirty
                if limit >= 0 and n_dirty:
                    qstate[_Q_DIRTY] -= n_dirty
                    epoch[way] += 1  # its queue entry is stale now
            tags[way] = ln
            valid[way] = 0
            dirty[way] = 0
            owner[way] = tensor
            stamps[way] = clock[0]
        elif lru:
            stamps[way] = clock[0]
        clock[0] += 1
        if write:
            stats[launch, tensor, _SEC_W] += _popcount(touched)
            was = dirty[way]
            dirty[way] |= touched
            valid[way] |= full
            if limit >= 0:  # at most ``limit`` dirty sectors: write back the longest-dirty lines
                qstate[_Q_DIRTY] += _popcount(dirty[way]) - _popcount(was)
                if was == 0:
                    if qstate[_Q_TAIL] - qstate[_Q_HEAD] == queue.shape[0]:
                        _compact(queue, epoch, qstate)
                    pos = qstate[_Q_TAIL] % queue.shape[0]
                    queue[pos, 0], queue[pos, 1] = way, epoch[way]
                    qstate[_Q_TAIL] += 1
                while qstate[_Q_DIRTY] > limit and _clean_oldest(dirty, owner, queue, epoch, qstate, stats, launch):
                    pass
        else:
            stats[launch, tensor, _SEC_R] += _popcount(touched)
            stats[launch, tensor, _MISS_R] += _popcount(touched & ~valid[way])
            valid[way] |= touched


@njit(cache=True)
def _request(req, r, tags, stamps, valid, dirty, owner, clock, geom, stats, launch, queue, epoch, qstate):
    addr, rows, row_bytes, stride, tri, elem, tensor, write = (
        req[r, 0], req[r, 1], req[r, 2], req[r, 3], req[r, 4], req[r, 5], req[r, 6], req[r, 7])
    for i in range(rows):
        n = row_bytes
        if tri != _NO_TRI:  # a causal S/P tile's row (streams.request_bytes sums the same rule)
            n = min(row_bytes, max(0, tri + i) * elem)
        if n > 0:
            stats[launch, tensor, _REQ_W if write else _REQ_R] += n
            _touch(addr + i * stride, n, write, tensor, tags, stamps, valid, dirty, owner, clock, geom, stats, launch,
                   queue, epoch, qstate)


@njit(cache=True)
def _next_block(block_ptr, b):
    """The first block from ``b`` on with at least one step (blocks with none exit at once), or -1."""
    n_blocks = block_ptr.shape[0] - 1
    while b < n_blocks and block_ptr[b] == block_ptr[b + 1]:
        b += 1
    return b if b < n_blocks else -1


@njit(cache=True)
def _run_launch(req, step_ptr, block_ptr, resident, tags, stamps, valid, dirty, owner, clock, geom, stats, launch,
                queue, epoch, qstate):
    """Blocks in issue order, ``resident`` at a time, round-robin one step each (module docstring)."""
    n_slots = max(1, resident)
    slot_block = np.full(n_slots, -1, dtype=np.int64)
    slot_step = np.zeros(n_slots, dtype=np.int64)
    nxt, active = 0, 0
    for s in range(n_slots):
        b = _next_block(block_ptr, nxt)
        if b < 0:
            break
        slot_block[s], slot_step[s] = b, block_ptr[b]
        nxt, active = b + 1, active + 1
    while active > 0:
        for s in range(n_slots):
            b = slot_block[s]
            if b < 0:
                continue
            st = slot_step[s]
            for r in range(step_ptr[st], step_ptr[st + 1]):
                _request(req, r, tags, stamps, valid, dirty, owner, clock, geom, stats, launch, queue, epoch, qstate)
            st += 1
            if st < block_ptr[b + 1]:
                slot_step[s] = st
                continue
            # -- the block is done: its slot takes the next block in issue order
            b = _next_block(block_ptr, nxt)
            if b < 0:
                slot_block[s] = -1
                active -= 1
            else:
                slot_block[s], slot_step[s] = b, block_ptr[b]
                nxt = b + 1


@njit(cache=True)
def _flush(tags, valid, dirty, owner, stats, launch, invalidate, epoch, qstate):
    """Count the dirty sectors left (written back at the end); empty the cache if ``invalidate``."""
    for w in range(tags.shape[0]):
        if tags[w] >= 0:
            stats[launch, owner[w], _FLUSH_W] += _popcount(dirty[w])
            dirty[w] = 0
            epoch[w] += 1
            if invalidate:
                tags[w] = -1
                valid[w] = 0
    qstate[_Q_HEAD] = qstate[_Q_TAIL] = qstate[_Q_DIRTY] = 0


class _Cache:
    """Cache state: one entry per way of every set (tags -1 when empty)."""

    def __init__(self, l2_bytes, sector, line, ways, policy, set_index, dirty_limit_bytes=None):
        for name, v in (("l2_bytes", l2_bytes), ("sector", sector), ("line", line), ("ways", ways)):
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ValueError(f"{name}: expected a positive int, got {v!r}")
        if dirty_limit_bytes is not None and (isinstance(dirty_limit_bytes, bool) or
                                              not isinstance(dirty_limit_bytes, (int, np.integer)) or
                                              dirty_limit_bytes < 0):
            raise ValueError(f"dirty_limit_bytes: expected None or an int >= 0, got {dirty_limit_bytes!r}")
        if line % sector or line // sector > 8:
            raise ValueError(f"line={line} must be a multiple of sector={sector}, at most 8 sectors")
        if policy not in POLICIES:
            raise ValueError(f"policy: expected one of {POLICIES}, got {policy!r}")
        if set_index not in SET_INDEX:
            raise ValueError(f"set_index: expected one of {SET_INDEX}, got {set_index!r}")
        if l2_bytes < line:
            raise ValueError(f"l2_bytes={l2_bytes} holds no {line}-byte line")
        ways = min(int(ways), l2_bytes // line)
        self.n_sets, self.ways = l2_bytes // (line * ways), ways
        self.capacity = self.n_sets * ways * line
        limit = -1 if dirty_limit_bytes is None else int(dirty_limit_bytes) // sector
        self.geom = np.array([self.n_sets, ways, line, sector, policy == "lru", set_index == "hash", limit],
                             dtype=np.int64)
        n = self.n_sets * ways
        # the write-back queue (used with a dirty limit only): (way, epoch) of lines in the order they
        # became dirty; an entry is stale once its way's epoch moved on (cleaned, evicted, flushed)
        self.queue = np.zeros((2 * n if limit >= 0 else 1, 2), dtype=np.int64)
        self.epoch = np.zeros(n, dtype=np.int64)
        self.qstate = np.zeros(3, dtype=np.int64)
        self.tags = np.full(n, -1, dtype=np.int64)
        self.stamps = np.zeros(n, dtype=np.int64)
        self.valid = np.zeros(n, dtype=np.uint8)  # sector bit masks (at most 8 sectors a line)
        self.dirty = np.zeros(n, dtype=np.uint8)
        self.owner = np.zeros(n, dtype=np.uint8)  # tensor of the line, for the write-back statistics
        self.clock = np.zeros(1, dtype=np.int64)

    def run(self, launch_stream, resident, stats, launch):
        _run_launch(launch_stream.requests, launch_stream.step_ptr, launch_stream.block_ptr, int(resident),
                    self.tags, self.stamps, self.valid, self.dirty, self.owner, self.clock, self.geom, stats, launch,
                    self.queue, self.epoch, self.qstate)

    def flush(self, stats, launch, invalidate):
        _flush(self.tags, self.valid, self.dirty, self.owner, stats, launch, invalidate, self.epoch, self.qstate)


# -- the report -------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DramReport:
    """What reaches DRAM, in bytes (see the module docstring for the model).

    Attributes:
        read_bytes: sectors read from DRAM × sector.
        write_evicted_bytes: dirty sectors written back when their line was evicted × sector.
        write_cleaned_bytes: dirty sectors written back while their line stayed cached, to keep the
            dirty data under ``dirty_limit_bytes`` × sector (0 without a limit).
        write_flush_bytes: dirty sectors left at the end (of each launch with ``cold_launches``) × sector.
        write_bytes: ``write_evicted_bytes + write_cleaned_bytes`` (+ ``write_flush_bytes`` when
            ``flush_at_end``).
        requested_read_bytes, requested_write_bytes: what the algorithm asks of global memory
            (equal to ``simulate_counts(...)``'s HBM reads and writes in bytes).
        requested_read_sector_bytes, requested_write_sector_bytes: the same rounded up to whole
            sectors per row range (what a load/store unit sends to L2 without L1 hits).
        l2_read_hit_rate: read sectors found in L2 / read sectors requested.
        per_tensor: tensor -> dict of the fields above that apply (requested_read_bytes,
            requested_write_bytes, read_bytes, write_evicted_bytes, write_cleaned_bytes,
            write_flush_bytes).
        per_launch: one dict per launch: phase, grid, resident_blocks, the totals above, and its
            own per_tensor.
        config: the model's parameters (l2_bytes, capacity, sets, ways, line, sector, policy, ...).
    """

    read_bytes: int
    write_bytes: int
    write_evicted_bytes: int
    write_cleaned_bytes: int
    write_flush_bytes: int
    requested_read_bytes: int
    requested_write_bytes: int
    requested_read_sector_bytes: int
    requested_write_sector_bytes: int
    l2_read_hit_rate: float
    per_tensor: object
    per_launch: tuple
    config: object

    @property
    def dram_bytes(self):
        """DRAM bytes read plus written."""
        return self.read_bytes + self.write_bytes

    @property
    def requested_bytes(self):
        """Global-memory bytes requested (= simulate_counts(...).hbm_bytes)."""
        return self.requested_read_bytes + self.requested_write_bytes

    def as_dict(self):
        """Plain dict (for JSON)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["per_tensor"] = {k: dict(v) for k, v in self.per_tensor.items()}
        d["config"] = dict(self.config)
        d["per_launch"] = [{**x, "per_tensor": {k: dict(v) for k, v in x["per_tensor"].items()}}
                           for x in self.per_launch]
        d["dram_bytes"] = self.dram_bytes
        return d


def _totals(stats, sector, flush_at_end):
    """Byte totals of a (tensors, stats) block."""
    col = stats.sum(axis=0) if stats.ndim == 2 else stats
    evicted, flushed = int(col[_EVICT_W]) * sector, int(col[_FLUSH_W]) * sector
    cleaned = int(col[_CLEAN_W]) * sector
    sec_r = int(col[_SEC_R])
    return {
        "read_bytes": int(col[_MISS_R]) * sector,
        "write_bytes": evicted + cleaned + (flushed if flush_at_end else 0),
        "write_evicted_bytes": evicted,
        "write_cleaned_bytes": cleaned,
        "write_flush_bytes": flushed,
        "requested_read_bytes": int(col[_REQ_R]),
        "requested_write_bytes": int(col[_REQ_W]),
        "requested_read_sector_bytes": sec_r * sector,
        "requested_write_sector_bytes": int(col[_SEC_W]) * sector,
        "l2_read_hit_rate": (sec_r - int(col[_MISS_R])) / sec_r if sec_r else float("nan"),
    }


_TENSOR_FIELDS = ("requested_read_bytes", "requested_write_bytes", "read_bytes", "write_evicted_bytes",
                  "write_cleaned_bytes", "write_flush_bytes")


def _per_tensor(stats, sector, flush_at_end):
    """tensor -> its _TENSOR_FIELDS, for the tensors with any, from a (tensors, stats) or (launches, tensors,
    stats) block."""
    out = {}
    for t, name in enumerate(TENSORS):
        tot = _totals(stats[..., t, :], sector, flush_at_end)
        if any(tot[k] for k in _TENSOR_FIELDS):
            out[name] = MappingProxyType({k: tot[k] for k in _TENSOR_FIELDS})
    return MappingProxyType(out)


def _report(stats, launches, residency, sector, flush_at_end, scale, config):
    stats = stats * scale
    per_launch = tuple(
        MappingProxyType({"phase": ln.phase, "grid": ln.grid, "resident_blocks": residency[ln.phase],
                          **_totals(stats[i], sector, flush_at_end),
                          "per_tensor": _per_tensor(stats[i], sector, flush_at_end)})
        for i, ln in enumerate(launches))
    return DramReport(**_totals(stats.sum(axis=0), sector, flush_at_end),
                      per_tensor=_per_tensor(stats, sector, flush_at_end), per_launch=per_launch,
                      config=MappingProxyType(config))


# -- entry points -----------------------------------------------------------------------------
def _smem_bytes(schedule, problem, phase, backward):
    """Shared memory of one block of ``phase`` (its footprint, sandbox/vocabulary/footprints.py)."""
    buffers = sram_buffers(schedule, problem.head_dim, problem.dtype, backward=backward, head_dim_v=problem.head_dim_v)
    name = BACKWARD_FOOTPRINTS[backward_trait(schedule)].get(phase, phase) if backward else phase
    return 0 if name is None else sram_offsets(buffers[name])[1]


def blocks_per_sm(schedule, problem, phase, gpu, backward=False):
    """Thread blocks of ``phase`` (of the backward pass with ``backward``) an SM of ``gpu`` holds at
    once: shared memory, warps, the block limit (not registers). ``gpu``: a DeviceFacts or a name in
    ``sandbox.vocabulary.gpus.KNOWN_GPUS``."""
    gpu = known_gpu(gpu)
    smem = _smem_bytes(schedule, problem, phase, backward)
    warps = -(-schedule.threads // 32)
    return max(1, min(gpu.max_blocks_per_sm, gpu.max_warps_per_sm // warps,
                      gpu.smem_per_sm // (smem + gpu.smem_reserved_per_block)))


def default_resident_blocks(schedule, problem, gpu, backward=False):
    """phase -> blocks in flight on ``gpu``: its SMs × :func:`blocks_per_sm`."""
    gpu = known_gpu(gpu)
    return {phase: gpu.sms * blocks_per_sm(schedule, problem, phase, gpu, backward)
            for phase, _, _ in launches(schedule, backward, grouped=backward and problem.group > 1)}


_NAME_THE_MACHINE = ("say which machine the L2 model describes: gpu= a name in sandbox.vocabulary.gpus.KNOWN_GPUS or the "
                     "device's facts (sandbox.lab.info.device_facts()), or {}")


def _residency(schedule, problem, resident_blocks, gpu, backward=False):
    """phase -> blocks in flight: ``resident_blocks`` (an int, or a dict for some phases) over ``gpu``'s default."""
    phases = [phase for phase, _, _ in launches(schedule, backward, grouped=backward and problem.group > 1)]
    if resident_blocks is not None and not isinstance(resident_blocks, dict):
        return {phase: int(resident_blocks) for phase in phases}
    given = dict(resident_blocks or {})
    unknown = set(given) - set(phases)
    if unknown:
        raise ValueError(f"resident_blocks: no phase {sorted(unknown)} in {schedule.kind} (its phases: {phases})")
    if set(given) != set(phases):
        if gpu is None:
            raise TypeError("resident_blocks: " + _NAME_THE_MACHINE.format("resident_blocks= for every phase"))
        given = {**default_resident_blocks(schedule, problem, gpu, backward), **given}
    return {phase: int(given[phase]) for phase in phases}


def simulate_dram(schedule, problem, l2_bytes=None, sector=32, line=128, ways=16, resident_blocks=None,
                  policy="lru", *, gpu=None, cold_launches=False, flush_at_end=True, slices="all",
                  set_index="hash", dirty_limit_bytes=None, backward=False):
    """DRAM traffic of ``schedule`` on ``problem`` behind an L2 cache (model: the module docstring).

    Args:
        schedule, problem: as for ``simulate_counts`` (a kind with a request stream in the table; no mask).
        backward: the backward pass's launches (``simulate_backward_counts``' traffic) instead of
            the forward's.
        l2_bytes: L2 capacity, default ``gpu``'s. Rounded down to whole sets.
        sector: bytes per sector, the unit of DRAM reads and write-backs (32).
        line: bytes per line, the unit of allocation and replacement (128).
        ways: associativity; the set of a line is a hash of its address (``set_index``).
        resident_blocks: thread blocks in flight, an int for every launch or a dict phase -> int;
            phases not given: :func:`default_resident_blocks` on ``gpu``.
        policy: "lru" or "fifo".
        gpu: the machine modelled: a :class:`sandbox.vocabulary.gpus.DeviceFacts` (``sandbox.lab.info.device_facts()``
            reads the current device's) or a name in ``sandbox.vocabulary.gpus.KNOWN_GPUS`` ("h100", "h200").
            Needed unless ``l2_bytes`` and ``resident_blocks`` (every phase) are given.
        cold_launches: empty the cache (counting its dirty sectors as flushed) after every launch,
            as Nsight Compute does between profiled kernels; else the L2 carries over between
            standard's three kernels, as in a plain run.
        flush_at_end: count the dirty sectors left at the end in ``write_bytes``.
        slices: "all" (every (b, h), exact) or "one" (one slice × B·H; when valid: module docstring).
        set_index: "hash" or "modulo".
        dirty_limit_bytes: the most dirty data the cache holds (None: no limit but its size); a write
            past it writes back the lines dirtied longest ago, which stay cached, clean (module
            docstring, "Write-back while resident"). With ``slices="one"`` it applies to the one slice.

    Returns:
        :class:`DramReport`.

    Raises:
        ValueError: bad cache parameters, an unknown ``gpu`` name. TypeError: neither ``gpu`` nor
        ``l2_bytes`` (or ``resident_blocks``) given. NotImplementedError: a kind without a request stream
        (or, with ``backward``, without a backward pass).
    """
    if slices not in ("all", "one"):
        raise ValueError(f"slices: expected 'all' or 'one', got {slices!r}")
    if slices == "one" and problem.group > 1:
        raise ValueError("slices='one' scales one (b, h) slice by B·H, but with grouped K/V heads "
                         f"({problem.heads_kv} K/V heads for {problem.heads} query heads) the slices share "
                         "K and V in the L2; use slices='all'")
    gpu = None if gpu is None else known_gpu(gpu)
    if l2_bytes is None:
        if gpu is None:
            raise TypeError("l2_bytes: " + _NAME_THE_MACHINE.format("l2_bytes="))
        l2_bytes = gpu.l2_bytes
    cache = _Cache(l2_bytes, sector, line, ways, policy, set_index, dirty_limit_bytes)
    sim_problem = problem
    if slices == "one" and problem.bh > 1:
        sim_problem = dataclasses.replace(problem, batch=1, heads=1, heads_kv=1)
    residency = _residency(schedule, problem, resident_blocks, gpu, backward)
    launches = tile_requests(schedule, sim_problem, backward)
    stats = np.zeros((len(launches), len(TENSORS), _NSTATS), dtype=np.int64)
    for i, ln in enumerate(launches):
        cache.run(ln, residency[ln.phase], stats, i)
        if cold_launches:
            cache.flush(stats, i, invalidate=True)
    if not cold_launches:
        cache.flush(stats, len(launches) - 1, invalidate=False)
    config = {"l2_bytes": int(l2_bytes), "capacity_bytes": cache.capacity, "sets": cache.n_sets, "ways": cache.ways,
              "line": line, "sector": sector, "policy": policy, "set_index": set_index,
              "gpu": None if gpu is None else gpu.name, "sms": None if gpu is None else gpu.sms,
              "resident_blocks": dict(residency), "cold_launches": cold_launches, "flush_at_end": flush_at_end,
              "slices": slices, "slice_scale": problem.bh // sim_problem.bh, "dirty_limit_bytes": dirty_limit_bytes,
              "backward": bool(backward)}
    return _report(stats, launches, residency, sector, flush_at_end, problem.bh // sim_problem.bh, config)


def simulate_requests(requests, l2_bytes, sector=32, line=128, ways=16, policy="lru", *,
                      flush_at_end=True, set_index="hash", dirty_limit_bytes=None):
    """A hand-made stream through an ``l2_bytes`` cache: ``requests`` is a list of (addr, nbytes, write[, tensor]).

    The requests run in order (one block, one request per step). Tensor indices refer to
    :data:`TENSORS` (default 0). Returns a :class:`DramReport`.

    Example:
        >>> r = simulate_requests([(0, 128, False), (0, 128, False)], l2_bytes=1024, ways=2)
        >>> r.read_bytes, r.l2_read_hit_rate
        (128, 0.5)
    """
    cache = _Cache(l2_bytes, sector, line, ways, policy, set_index, dirty_limit_bytes)
    req = np.zeros((len(requests), NCOLS), dtype=np.int64)
    for i, rq in enumerate(requests):
        addr, nbytes, write = rq[:3]
        req[i] = (addr, 1, nbytes, 0, _NO_TRI, 1, rq[3] if len(rq) > 3 else 0, int(bool(write)))
    stream = Launch("requests", (1,), req, np.arange(len(requests) + 1, dtype=np.int64),
                    np.array([0, len(requests)], dtype=np.int64))
    stats = np.zeros((1, len(TENSORS), _NSTATS), dtype=np.int64)
    cache.run(stream, 1, stats, 0)
    cache.flush(stats, 0, invalidate=False)
    config = {"l2_bytes": int(l2_bytes), "capacity_bytes": cache.capacity, "sets": cache.n_sets, "ways": cache.ways,
              "line": line, "sector": sector, "policy": policy, "set_index": set_index, "flush_at_end": flush_at_end,
              "dirty_limit_bytes": dirty_limit_bytes}
    return _report(stats, [stream], {"requests": 1}, sector, flush_at_end, 1, config)
