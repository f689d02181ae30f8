"""Attention masks as predicates, written once for the kernels, the simulator and the reference.

A mask is a function ``mask(b, h, q_idx, kv_idx) -> bool``: True where query ``q_idx`` of batch
``b``, head ``h`` may attend to key ``kv_idx`` (the idea of PyTorch FlexAttention's
``mask_mod``). The same Python source is compiled three ways:

- into the kernels as a Numba CUDA device function (``Mask.device()``), which decide per tile
  whether any entry is allowed (empty tiles are skipped: no loads, no math) and per entry
  whether it enters the softmax;
- into a Numba CPU function (``Mask.cpu()``) that the simulator evaluates over every entry to
  classify tiles as empty, partial or full (:func:`tile_classes`) and count the allowed entries;
- into the dense boolean matrix the NumPy reference applies (:func:`dense`).

Write it with scalar arithmetic and comparisons (it must compile with Numba in ``nopython``
mode, for the CPU and for CUDA). Arrays it reads (a document layout, a block layout) are
captured as compile-time constants: on the GPU they live in constant memory (64 KB), so every
mask's captured arrays are limited to :data:`MAX_CAPTURED_BYTES` each. It must be a function of
its arguments only: the kernels, the simulator and the reference evaluate it separately.
:meth:`Mask.check` holds a predicate to all this before a launch.

Built-ins: :func:`causal`, :func:`sliding_window`, :func:`prefix_lm`, :func:`document`,
:func:`block_sparse`, and ``&`` / ``|`` / ``~`` to combine them. ``causal=True`` in
``attention`` is the same predicate as ``mask=causal()``, with a faster tile bound. A command
line names a built-in by a spec, ``"sliding_window:256"`` (:func:`from_spec`, :data:`SPECS`).

    >>> from sandbox import masks
    >>> m = masks.sliding_window(4) & masks.causal()
    >>> m(0, 0, 10, 7), m(0, 0, 10, 5), m(0, 0, 10, 11)
    (True, False, False)
"""

import functools
import inspect
import types as pytypes

import numpy as np

#: Largest array a mask captures (bytes): it becomes CUDA constant memory (64 KB in all).
MAX_CAPTURED_BYTES = 32 * 1024
#: All the arrays one mask captures together (bytes): CUDA's constant memory.
CONSTANT_MEMORY_BYTES = 64 * 1024
#: :meth:`Mask.check` evaluates the predicate at every (b, h, q_idx, kv_idx) of a problem up to
#: this many entries (a 16 MiB boolean array, kept for the simulator and the reference); above
#: it, at :data:`SAMPLED_POINTS` random points and the box's corners.
DENSE_CHECK_ENTRIES = 1 << 24
#: Random points :meth:`Mask.check` evaluates on a problem of more than DENSE_CHECK_ENTRIES entries.
SAMPLED_POINTS = 1 << 20


class Mask:
    """A predicate ``fn(b, h, q_idx, kv_idx) -> bool``, with its compiled forms (built on first use).

    Args:
        fn: the predicate (plain Python, Numba-compilable).
        name: shown in errors and figure legends (default: the function's name).

    Raises:
        TypeError: ``fn`` not callable, or not a function of four parameters.
    """

    def __init__(self, fn, name=None, _children=None, _combine=None):
        if not callable(fn):
            raise TypeError(f"mask: expected a function mask(b, h, q_idx, kv_idx) -> bool, got {type(fn).__name__}")
        if _combine is None:
            _check_arity(fn)
        self.fn = fn
        self.name = name or getattr(fn, "__name__", "mask")
        self._children = _children
        self._combine = _combine
        self._evaluated = None  # (box, dense bool array, checked): the last box evaluated, see evaluate()

    def __call__(self, b, h, q_idx, kv_idx):
        return self.fn(b, h, q_idx, kv_idx)

    def __repr__(self):
        return f"Mask({self.name})"

    def __and__(self, other):
        return _combined(self, as_mask(other), "and")

    def __or__(self, other):
        return _combined(self, as_mask(other), "or")

    def __invert__(self):
        return _combined(self, None, "not")

    # -- compiled forms -------------------------------------------------------------
    def _build(self, jit):
        """The predicate compiled by ``jit`` (numba.njit or cuda.jit(device=True)), children first."""
        if self._combine is None:
            return jit(self.fn)
        f = self._children[0]._build(jit)
        if self._combine == "not":
            return jit(lambda b, h, q, k: not f(b, h, q, k))
        g = self._children[1]._build(jit)
        if self._combine == "and":
            return jit(lambda b, h, q, k: f(b, h, q, k) and g(b, h, q, k))
        return jit(lambda b, h, q, k: f(b, h, q, k) or g(b, h, q, k))

    @functools.cached_property
    def _cpu(self):
        import numba
        from numba import int64, types

        # bounds-checked: an index past a captured array raises IndexError instead of reading garbage
        compiled = self._build(numba.njit(boundscheck=True))
        try:
            compiled.compile((int64, int64, int64, int64))
        except Exception as e:  # numba's TypingError and friends: say what and where, in one line
            raise TypeError(f"mask {self.name}: Numba cannot compile it as mask(b, h, q_idx, kv_idx) -> bool: "
                            f"{_first_line(e)}") from e
        ret = compiled.nopython_signatures[0].return_type
        if not isinstance(ret, types.Boolean):  # bool, or a constant bool (Literal[bool])
            raise TypeError(f"mask {self.name}: must return a bool, but returns {ret} (compare, e.g. `return x >= 0`)")
        return compiled

    def cpu(self):
        """The Numba CPU function (compiled and type-checked once; indexing is bounds-checked).

        Raises:
            TypeError: Numba cannot compile the predicate, or it does not return a bool.
        """
        return self._cpu

    @functools.cached_property
    def _device(self):
        from numba import cuda

        return self._build(cuda.jit(device=True))

    def device(self):
        """The Numba CUDA device function the kernels call (compiled on first kernel build)."""
        return self._device

    def check_device(self):
        """Compile the CUDA device function for ``(int64, int64, int64, int64)`` now, not inside a kernel build.

        Under Numba's CUDA simulator the device function is the Python function itself: nothing
        is compiled, and this returns at once.

        Raises:
            TypeError: Numba cannot compile the predicate for CUDA.
        """
        from numba import int64

        compile_device = getattr(self.device(), "compile_device", None)
        if compile_device is None:  # the simulator's device function: plain Python
            return self
        try:
            compile_device((int64, int64, int64, int64))
        except Exception as e:
            raise TypeError(f"mask {self.name}: Numba cannot compile it for CUDA as a device function "
                            f"mask(b, h, q_idx, kv_idx) -> bool: {_first_line(e)}") from e
        return self

    def captured_arrays(self):
        """The NumPy arrays the predicate reads from its closure and globals (those of combined masks too)."""
        found = {}
        _find_arrays(self, found, set())
        return list(found.values())

    def check_captured(self):
        """Hold the captured arrays to CUDA's constant memory.

        Raises:
            ValueError: an array over :data:`MAX_CAPTURED_BYTES`, or all of them over
                :data:`CONSTANT_MEMORY_BYTES`.
        """
        arrays = self.captured_arrays()
        for a in arrays:
            if a.nbytes > MAX_CAPTURED_BYTES:
                raise ValueError(
                    f"mask {self.name}: captures an array of {a.nbytes} bytes ({a.dtype} {a.shape}); a mask's captured "
                    f"arrays become CUDA constant memory, so each is limited to {MAX_CAPTURED_BYTES} bytes (use a "
                    f"smaller dtype, a coarser layout or coarser blocks)")
        total = sum(a.nbytes for a in arrays)
        if total > CONSTANT_MEMORY_BYTES:
            raise ValueError(
                f"mask {self.name}: captures {total} bytes of arrays in all; they become CUDA constant memory, "
                f"{CONSTANT_MEMORY_BYTES} bytes (use smaller layouts)")
        return self

    def evaluate(self, batch, heads, n_q, n_kv):
        """The predicate at every (b, h, q_idx, kv_idx): bool array (B, H, Nq, Nk), the mask alone (no causal).

        Boxes of up to :data:`DENSE_CHECK_ENTRIES` entries are evaluated once and kept (the last
        one only), so that the check, the simulator and the reference share one evaluation; the
        kept array is returned read-only (:func:`dense` gives a copy).

        Raises:
            TypeError: as :meth:`cpu`.
            ValueError: the predicate raised (an index past a captured array, for one), with the point.
        """
        box = (batch, heads, n_q, n_kv)
        cached = self._evaluated
        if cached is not None and cached[0] == box:
            return cached[1]
        out = self._evaluate_box(box)
        if out.size <= DENSE_CHECK_ENTRIES:
            out.flags.writeable = False
            self._evaluated = (box, out, False)
        return out

    def _evaluate_box(self, box):
        out = np.zeros(box, np.bool_)
        at = np.zeros(4, np.int64)
        pred = self.cpu()
        over_box = point_loops()[0]
        self._run(over_box, pred, _kernels()[1], (out.reshape(-1),), np.array(box, np.int64), at,
                  where=lambda: tuple(at))
        return out

    def _run(self, fn, pred, *args, where):
        """fn(pred, *args), its exceptions as ValueError naming the mask and the point ``where()``."""
        try:
            fn(pred, *args)
        except Exception as e:
            b, h, q, k = (int(x) for x in where())
            raise ValueError(
                f"mask {self.name} raised {type(e).__name__} at (b={b}, h={h}, q_idx={q}, kv_idx={k}): {e}"
            ) from e

    def check(self, problem):
        """Validate against ``problem`` before any launch.

        In order: the predicate compiles for the CPU and returns a bool; its captured arrays fit
        CUDA's constant memory; it compiles as a CUDA device function (on a GPU); the Python
        function runs at the corners of the (b, h, q_idx, kv_idx) box; the compiled predicate
        runs, twice, at every point of the box (bounds-checked) and gives the same answers. A box
        of more than :data:`DENSE_CHECK_ENTRIES` entries is sampled instead: the corners and
        :data:`SAMPLED_POINTS` random points (seeded), each evaluated twice.

        Raises:
            TypeError: not compilable (for the CPU or for CUDA), non-bool result.
            ValueError: it raised (an index past a captured array, for one), it is not
                deterministic, its captured arrays overflow constant memory, or a built-in's
                layout does not cover the problem.
        """
        self.cpu()
        self.check_captured()
        self.check_device()
        for b, h, q, k in _probe_points(problem):
            try:
                r = self.fn(b, h, q, k)
            except Exception as e:
                raise ValueError(
                    f"mask {self.name} raised {type(e).__name__} at (b={b}, h={h}, q_idx={q}, kv_idx={k}): {e}"
                ) from e
            if not isinstance(r, (bool, np.bool_)):
                raise TypeError(f"mask {self.name}: must return a bool, returned {type(r).__name__} {r!r} "
                                f"at (b={b}, h={h}, q_idx={q}, kv_idx={k})")
        box = (problem.batch, problem.heads, problem.n_q, problem.n_kv)
        if int(np.prod(box, dtype=object)) <= DENSE_CHECK_ENTRIES:
            cached = self._evaluated
            if cached is not None and cached[0] == box and cached[2]:
                return self  # this box is checked already
            first = self.evaluate(*box)
            second = self._evaluate_box(box)
            pts = None
        else:
            pts = sampled_points(box)
            first, second = self._evaluate_points(pts), self._evaluate_points(pts)
        differ = np.flatnonzero(first != second)
        if differ.size:
            i = int(differ[0])
            at = tuple(int(x) for x in (np.unravel_index(i, box) if pts is None else pts[i]))
            raise ValueError(
                f"mask {self.name} is not deterministic: at (b={at[0]}, h={at[1]}, q_idx={at[2]}, kv_idx={at[3]}) "
                f"it returned {bool(first.flat[i])}, then {bool(second.flat[i])}; the kernels, the simulator and "
                f"the reference evaluate it separately, so it must depend on its arguments only"
            )
        if pts is None:
            self._evaluated = (box, first, True)
        return self

    def _evaluate_points(self, pts):
        out = np.zeros(len(pts), np.bool_)
        at = np.zeros(4, np.int64)
        at_points = point_loops()[1]
        self._run(at_points, self.cpu(), _kernels()[1], (out,), pts, at, where=lambda: tuple(at))
        return out


def _first_line(e):
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def _find_arrays(obj, found, seen):
    """Collect into ``found`` (id -> array) the arrays a predicate ``obj`` reads: its closure cells and the
    globals its code names, following the masks and Numba-compiled helpers it calls."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, Mask):
        _find_arrays(obj.fn, found, seen)
        for child in obj._children or ():
            if child is not None:
                _find_arrays(child, found, seen)
        return
    obj = getattr(obj, "py_func", obj)  # a Numba dispatcher: its Python function
    code = getattr(obj, "__code__", None)
    if code is None:
        return
    names = set()
    stack = [code]
    while stack:  # names of nested code (lambdas, comprehensions) too
        c = stack.pop()
        names.update(c.co_names)
        stack.extend(x for x in c.co_consts if isinstance(x, pytypes.CodeType))
    values = []
    for cell in getattr(obj, "__closure__", None) or ():
        try:
            values.append(cell.cell_contents)
        except ValueError:  # an empty cell
            pass
    g = getattr(obj, "__globals__", {})
    values += [g[n] for n in names if n in g]
    for v in values:
        if isinstance(v, np.ndarray):
            found[id(v)] = v
        elif isinstance(v, pytypes.ModuleType):  # mod.arr
            for n in names:
                a = getattr(v, n, None)
                if isinstance(a, np.ndarray):
                    found[id(a)] = a
        elif isinstance(v, Mask) or hasattr(v, "py_func"):  # what Numba compiles with it: masks, jitted helpers
            _find_arrays(v, found, seen)


def find_captured(*fns):
    """The NumPy arrays the functions ``fns`` read from their closures and globals (and from the masks and
    Numba-compiled helpers they call), each once: what a mask or a score_mod compiles in as constants."""
    found, seen = {}, set()
    for fn in fns:
        if fn is not None:
            _find_arrays(fn, found, seen)
    return list(found.values())


def _check_arity(fn):
    try:
        params = [p for p in inspect.signature(fn).parameters.values()
                  if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    except (TypeError, ValueError):
        return  # builtins without a signature: Numba will say
    if len(params) != 4:
        names = ", ".join(p.name for p in params)
        raise TypeError(
            f"mask: expected a predicate of four arguments mask(b, h, q_idx, kv_idx) -> bool, "
            f"got {getattr(fn, '__name__', 'a function')}({names})"
        )


def _combined(a, b, op):
    name = f"~{a.name}" if op == "not" else f"({a.name} {'&' if op == 'and' else '|'} {b.name})"
    if op == "not":
        fn = lambda bb, h, q, k: not a.fn(bb, h, q, k)  # noqa: E731
    elif op == "and":
        fn = lambda bb, h, q, k: a.fn(bb, h, q, k) and b.fn(bb, h, q, k)  # noqa: E731
    else:
        fn = lambda bb, h, q, k: a.fn(bb, h, q, k) or b.fn(bb, h, q, k)  # noqa: E731
    return Mask(fn, name=name, _children=(a, b), _combine=op)


def _probe_points(problem):
    bs = sorted({0, problem.batch - 1})
    hs = sorted({0, problem.heads - 1})
    qs = sorted({0, problem.n_q // 2, problem.n_q - 1})
    ks = sorted({0, problem.n_kv // 2, problem.n_kv - 1})
    return [(b, h, q, k) for b in bs for h in hs for q in qs for k in ks]


def sampled_points(box):
    """int64 (n, 4): the corners of ``box`` and :data:`SAMPLED_POINTS` random points of it (the same each time)."""
    corners = np.array([(b, h, q, k) for b in {0, box[0] - 1} for h in {0, box[1] - 1}
                        for q in {0, box[2] - 1} for k in {0, box[3] - 1}], np.int64)
    rng = np.random.default_rng(0)
    rand = np.stack([rng.integers(0, n, SAMPLED_POINTS, dtype=np.int64) for n in box], axis=1)
    return np.concatenate([corners, rand])


def as_mask(mask):
    """``mask`` as a :class:`Mask` (a plain function is wrapped; None stays None)."""
    if mask is None or isinstance(mask, Mask):
        return mask
    return Mask(mask)


# -- evaluation over a problem (the simulator's and the reference's side) ------------------

@functools.lru_cache(maxsize=None)
def point_loops():
    """The Numba loops that evaluate a mask or a score_mod over a box or at points: (over_box, at_points).

    ``over_box(f, visit, args, box, at)`` calls ``visit(f, args, i, b, h, q_idx, kv_idx)`` at every
    point of ``box`` (int64 (4,): B, H, Nq, Nk) in C order, ``i`` the point's flat index;
    ``at_points(f, visit, args, pts, at)`` calls it at each row ``i`` of ``pts`` (int64 (n, 4)).
    ``f`` is the Numba CPU function, ``visit`` a Numba function that calls it and keeps or compares
    the answer, ``args`` a tuple of what ``visit`` reads and writes (arrays, a score; no functions).
    Both record the point in ``at`` (int64 (4,)) before each call, so that an exception can be
    placed, and stop at the first call that returns True.

    Returns:
        The two loops; each returns True if a call returned True, else False.
    """
    import numba

    @numba.njit(cache=False)
    def over_box(f, visit, args, box, at):
        i = 0
        for b in range(box[0]):
            at[0] = b
            for h in range(box[1]):
                at[1] = h
                for q in range(box[2]):
                    at[2] = q
                    for k in range(box[3]):
                        at[3] = k
                        if visit(f, args, i, b, h, q, k):
                            return True
                        i += 1
        return False

    @numba.njit(cache=False)
    def at_points(f, visit, args, pts, at):
        for i in range(pts.shape[0]):
            b, h, q, k = pts[i, 0], pts[i, 1], pts[i, 2], pts[i, 3]
            at[0] = b
            at[1] = h
            at[2] = q
            at[3] = k
            if visit(f, args, i, b, h, q, k):
                return True
        return False

    return over_box, at_points


@functools.lru_cache(maxsize=None)
def _kernels():
    """Numba functions of a mask's evaluation: (classify tiles, fill: the visit of :func:`point_loops` that
    keeps the predicate's answer at the point's index). classify records in ``at`` where it is before
    calling the predicate, so that an exception can be placed."""
    import numba

    @numba.njit(cache=False)
    def classify(pred, b, h, n_q, n_kv, br, bc, causal, allowed_out, at):
        """allowed_out[i, j] = allowed entries of tile (i, j) for (b, h)."""
        tr, tc = allowed_out.shape
        at[0] = b
        at[1] = h
        for i in range(tr):
            for j in range(tc):
                a = 0
                for q in range(i * br, min(n_q, (i + 1) * br)):
                    for k in range(j * bc, min(n_kv, (j + 1) * bc)):
                        at[2] = q
                        at[3] = k
                        if (not causal or k <= q) and pred(b, h, q, k):
                            a += 1
                allowed_out[i, j] = a

    @numba.njit(cache=False)
    def fill(pred, args, i, b, h, q, k):
        args[0][i] = pred(b, h, q, k)
        return False

    return classify, fill


def tile_allowed(mask, problem, block_q, block_kv):
    """Allowed entries per (b, h, Q block, K/V block): int64 array (B, H, Tr, Tc), causal included.

    A tile is empty (skipped by the kernels and the simulator) where this is 0, full where it
    equals the tile's area, partial otherwise. Up to :data:`DENSE_CHECK_ENTRIES` entries it sums
    the mask's dense evaluation (:meth:`Mask.evaluate`, shared with :meth:`Mask.check`); above, it
    evaluates the predicate tile by tile without keeping the entries.

    Raises:
        ValueError: the predicate raised (with the point).
    """
    mask = as_mask(mask)
    tr, tc = -(-problem.n_q // block_q), -(-problem.n_kv // block_kv)
    if problem.batch * problem.heads * problem.n_q * problem.n_kv <= DENSE_CHECK_ENTRIES:
        d = dense(mask, problem.batch, problem.heads, problem.n_q, problem.n_kv, causal=problem.causal)
        padded = np.zeros((problem.batch, problem.heads, tr * block_q, tc * block_kv), np.bool_)
        padded[:, :, :problem.n_q, :problem.n_kv] = d
        tiles = padded.reshape(problem.batch, problem.heads, tr, block_q, tc, block_kv)
        return tiles.sum(axis=(3, 5), dtype=np.int64)
    out = np.zeros((problem.batch, problem.heads, tr, tc), np.int64)
    pred = mask.cpu()
    classify = _kernels()[0]
    at = np.zeros(4, np.int64)
    for b in range(problem.batch):
        for h in range(problem.heads):
            mask._run(classify, pred, b, h, problem.n_q, problem.n_kv, block_q, block_kv, problem.causal, out[b, h],
                      at, where=lambda: tuple(at))
    return out


def tile_classes(mask, schedule, problem):
    """(empty, partial, full) tile counts of ``schedule``'s tiling of ``problem`` under ``mask`` (summed over b, h)."""
    a = tile_allowed(mask, problem, schedule.block_q, schedule.block_kv)
    q_len = np.minimum(schedule.block_q, problem.n_q - np.arange(a.shape[2]) * schedule.block_q)
    kv_len = np.minimum(schedule.block_kv, problem.n_kv - np.arange(a.shape[3]) * schedule.block_kv)
    area = q_len[:, None] * kv_len[None, :]
    empty = int((a == 0).sum())
    full = int((a == area).sum())
    return empty, a.size - empty - full, full


def dense(mask, batch, heads, n_q, n_kv, causal=False):
    """The boolean matrix (B, H, Nq, Nk) of ``mask`` (and the causal mask if ``causal``).

    Raises:
        ValueError: the predicate raised (an index past a captured array, for one), with the point.
    """
    mask = as_mask(mask)
    out = mask.evaluate(batch, heads, n_q, n_kv)
    if causal:
        return out & (np.arange(n_kv)[None, :] <= np.arange(n_q)[:, None])
    return out if out.flags.writeable else out.copy()  # the kept evaluation stays untouched


# -- built-ins ----------------------------------------------------------------------------

def causal():
    """Top-left causal: query i sees keys j <= i (the same as ``causal=True``)."""

    def causal_mask(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    return Mask(causal_mask, name="causal")


def sliding_window(window):
    """Keys within ``window`` positions of the query, on both sides: |q_idx - kv_idx| <= window.

    The blog post's windowed attention; combine with :func:`causal` for the one-sided (local) form.
    """
    w = _nonneg_int(window, "window")

    def sliding_window_mask(b, h, q_idx, kv_idx):
        return abs(q_idx - kv_idx) <= w

    return Mask(sliding_window_mask, name=f"window{w}")


def prefix_lm(prefix):
    """Prefix-LM: the first ``prefix`` keys are visible to every query; after them, causal."""
    p = _nonneg_int(prefix, "prefix")

    def prefix_lm_mask(b, h, q_idx, kv_idx):
        return kv_idx < p or kv_idx <= q_idx

    return Mask(prefix_lm_mask, name=f"prefix{p}")


def document(lengths):
    """Document (segment) masking for packed sequences: a query sees only keys of its own document.

    Args:
        lengths: lengths of the consecutive documents packed into the sequence (the same
            packing for queries and keys). Positions past their sum belong to no document
            and see nothing.
    """
    lengths = np.asarray(lengths)
    if lengths.ndim != 1 or lengths.size == 0 or not np.issubdtype(lengths.dtype, np.integer) or (lengths <= 0).any():
        raise ValueError(f"lengths: expected a non-empty 1-D sequence of positive ints, got {lengths!r}")
    ends = np.cumsum(lengths).astype(np.int64)
    _check_small(ends, "lengths")
    n_docs = ends.size

    def document_mask(b, h, q_idx, kv_idx):
        dq = n_docs
        dk = n_docs
        for i in range(n_docs - 1, -1, -1):
            if q_idx < ends[i]:
                dq = i
            if kv_idx < ends[i]:
                dk = i
        return dq == dk and dq < n_docs

    return Mask(document_mask, name=f"document{n_docs}")


def block_sparse(layout, block_q, block_kv):
    """Block-sparse attention from a block layout: query block ``q_idx // block_q`` sees key block
    ``kv_idx // block_kv`` where ``layout`` is True.

    Args:
        layout: bool array (Tq, Tk) for every head, or (H, Tq, Tk) per head.
        block_q, block_kv: the layout's block sizes (they need not be the schedule's).

    Positions beyond the layout see nothing.
    """
    lay = np.asarray(layout)
    if lay.dtype != np.bool_ or lay.ndim not in (2, 3) or 0 in lay.shape:
        raise ValueError(f"layout: expected a non-empty bool array (Tq, Tk) or (H, Tq, Tk), got {lay.dtype} {lay.shape}")
    bq, bk = _pos_int(block_q, "block_q"), _pos_int(block_kv, "block_kv")
    lay3 = (lay[None] if lay.ndim == 2 else lay).astype(np.uint8)
    _check_small(lay3, "layout")
    per_head = lay.ndim == 3
    n_h, n_tq, n_tk = lay3.shape

    def block_sparse_mask(b, h, q_idx, kv_idx):
        i = q_idx // bq
        j = kv_idx // bk
        hh = h if per_head else 0
        return i < n_tq and j < n_tk and hh < n_h and lay3[hh, i, j] != 0

    frac = float(lay.mean())
    return Mask(block_sparse_mask, name=f"blocksparse{frac:.2f}")


def random_block_layout(n_q_blocks, n_kv_blocks, density, seed=0):
    """A (Tq, Tk) bool layout with round(density·Tq·Tk) blocks set (at least one), chosen at random."""
    if not 0 < density <= 1:
        raise ValueError(f"density: expected 0 < density <= 1, got {density}")
    rng = np.random.default_rng(seed)
    n = max(1, round(density * n_q_blocks * n_kv_blocks))
    lay = np.zeros(n_q_blocks * n_kv_blocks, np.bool_)
    lay[rng.permutation(lay.size)[:n]] = True
    return lay.reshape(n_q_blocks, n_kv_blocks)


def _nonneg_int(x, name):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 0:
        raise ValueError(f"{name}: expected a non-negative int, got {x!r}")
    return int(x)


def _pos_int(x, name):
    if isinstance(x, bool) or not isinstance(x, (int, np.integer)) or x < 1:
        raise ValueError(f"{name}: expected a positive int, got {x!r}")
    return int(x)


def _check_small(arr, name):
    if arr.nbytes > MAX_CAPTURED_BYTES:
        raise ValueError(
            f"{name}: {arr.nbytes} bytes; a mask's captured arrays become CUDA constant memory, "
            f"so they are limited to {MAX_CAPTURED_BYTES} bytes (use coarser blocks)"
        )


# -- masks by name, as a command line gives them ---------------------------------------------

#: The built-in masks a spec can name (:func:`from_spec`): name -> (its form, what its arguments are).
SPECS = {
    "sliding_window": ("sliding_window:W", "keys within W positions of the query, e.g. sliding_window:256"),
    "prefix_lm": ("prefix_lm:P", "the first P keys seen by every query, causal after them, e.g. prefix_lm:512"),
    "document": ("document:L1,L2,...", "packed documents of these lengths, e.g. document:1000,3096"),
    "block_sparse": ("block_sparse:DENSITY[:SEED]",
                     "random_block_layout over the schedule's Br × Bc blocks with this density (0 < DENSITY <= 1) "
                     "and seed (default 0), e.g. block_sparse:0.5:7"),
}


def _spec_error(spec, why):
    forms = ", ".join(form for form, _ in SPECS.values())
    return ValueError(f"mask spec {spec!r}: {why}; expected one of {forms}")


def _spec_int(spec, text, what, least):
    try:
        value = int(text)
    except ValueError:
        raise _spec_error(spec, f"{what} {text!r} is not an integer") from None
    if value < least:
        raise _spec_error(spec, f"{what} {value} is under {least}")
    return value


def parse_spec(spec):
    """A mask spec's name and arguments, checked (nothing is built): ``"sliding_window:W"``,
    ``"prefix_lm:P"``, ``"document:L1,L2,..."``, ``"block_sparse:DENSITY[:SEED]"`` (:data:`SPECS`).

    Returns:
        (name, arguments): the ints W or P, the tuple of lengths, or (density, seed).

    Raises:
        ValueError: an unknown name or a bad argument, listing the accepted forms.

    Example:
        >>> parse_spec("document:1000,3096")
        ('document', (1000, 3096))
    """
    text = "".join(str(spec).split())
    name, _, rest = text.partition(":")
    if name not in SPECS:
        raise _spec_error(spec, f"unknown mask {name!r}")
    if not rest:
        raise _spec_error(spec, f"{name} takes arguments")
    if name in ("sliding_window", "prefix_lm"):
        return name, _spec_int(spec, rest, "W" if name == "sliding_window" else "P", 0)
    if name == "document":
        return name, tuple(_spec_int(spec, x, "a length", 1) for x in rest.split(","))
    density, _, seed = rest.partition(":")
    try:
        value = float(density)
    except ValueError:
        raise _spec_error(spec, f"DENSITY {density!r} is not a number") from None
    if not 0 < value <= 1:
        raise _spec_error(spec, f"DENSITY {value} is outside 0 < DENSITY <= 1")
    return name, (value, _spec_int(spec, seed, "SEED", 0) if seed else 0)


def from_spec(spec, n_q, n_kv, block_q, block_kv):
    """The :class:`Mask` a spec names (:func:`parse_spec`), for a problem of ``n_q`` queries and ``n_kv``
    keys tiled in ``block_q`` × ``block_kv`` blocks (the blocks of block_sparse's random layout).

    Raises:
        ValueError: a bad spec (listing the accepted forms), or a layout over constant memory.

    Example:
        >>> m = from_spec("sliding_window:4", 16, 16, 8, 8)
        >>> m(0, 0, 10, 6), m(0, 0, 10, 5)
        (True, False)
    """
    name, arg = parse_spec(spec)
    if name == "sliding_window":
        return sliding_window(arg)
    if name == "prefix_lm":
        return prefix_lm(arg)
    if name == "document":
        return document(arg)
    density, seed = arg
    layout = random_block_layout(-(-n_q // block_q), -(-n_kv // block_kv), density, seed)
    return block_sparse(layout, block_q, block_kv)
