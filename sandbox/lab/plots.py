"""Figures drawn from sweep files (never from the kernels). Each function writes PNG and SVG and returns the paths.

A figure says what its data holds: the title lists the setting every row shares, and each
line (or bar) is one combination of whatever else the sweep varies, so that no line mixes
points of different settings. A sweep a figure cannot show (a column it needs is missing, too
few points along its axis, ...) is refused with a ValueError saying why.
"""

import os

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

from sandbox.lab.colors import kind_color  # noqa: E402
from sandbox.lab.experiments import (  # noqa: E402
    PAPER_GPT2_MEDIUM_GB,
    PAPER_GPT2_MEDIUM_GFLOPS,
    PAPER_GPT2_MEDIUM_MS,
    PAPER_GPT2_MEDIUM_SETTING,
)
from sandbox.lab.grouping import COLUMNS as GROUPED_COLUMNS  # noqa: E402
from sandbox.lab.sweep import POINT_COLUMNS, load  # noqa: E402
from simulator import theory  # noqa: E402

#: Line styles of the lines of one kind (one per combination of the other varying columns).
STYLES = ("o-", "s--", "^:", "D-.", "v-", "P--", "X:", "*-.")

#: Schedule columns that may simply follow a figure's x axis (the paper's block rule makes Br, Bc
#: follow M; the default register tile follows the blocks). They do not split lines when they do.
FOLLOWERS = ("block_q", "block_kv", "thread_q", "thread_kv", "sram_bytes", "n_kv")

#: Most bars :func:`gpt2_medium` draws.
MAX_BARS = 12


# -- reading ------------------------------------------------------------------------------
def load_sweep(path):
    """(provenance, rows) of a sweep file (JSON or CSV), for the figures.

    Raises:
        ValueError: the file is not a sweep file, or it has no rows.
        OSError: it cannot be read.
    """
    try:
        prov, rows = load(path)
        rows = list(rows)
    except KeyError as e:
        raise ValueError(f"{path} is not a sweep file: it has no {e.args[0]!r} "
                         f"(sweep files are written by the sweep command)") from None
    except (ValueError, TypeError, AttributeError) as e:
        msg = " ".join(str(e).split())
        raise ValueError(msg if str(path) in msg else f"{path} is not a sweep file: {msg}") from None
    if not rows:
        raise ValueError(f"{path} has no rows")
    return (prov if isinstance(prov, dict) else {}), rows


def _require(figure, rows, columns):
    """The rows that have every column ``columns`` names (infeasible points have empty results)."""
    missing = [c for c in POINT_COLUMNS + tuple(columns) if any(c not in r for r in rows)]
    if missing:
        raise ValueError(f"{figure}: the data has no column {', '.join(missing)}; "
                         f"figures are drawn from sweep files (the sweep command's CSV or JSON)")
    done = [r for r in rows if all(r[c] is not None for c in columns)]
    if not done:
        raise ValueError(f"{figure}: no row of the sweep has {', '.join(columns)}")
    return done


# -- what the data holds ------------------------------------------------------------------
def _bytes(n):
    for unit, size in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= size and n % size == 0:
            return f"{n // size} {unit}"
    return f"{n} B"


_FORMAT = {
    "kind": str, "batch": lambda v: f"B = {v}", "heads": lambda v: f"H = {v}", "n_q": lambda v: f"Nq = {v}",
    "n_kv": lambda v: f"Nk = {v}", "head_dim": lambda v: f"d = {v}", "dtype": str,
    "causal": lambda v: "causal" if v else "non-causal", "block_q": lambda v: f"Br = {v}",
    "block_kv": lambda v: f"Bc = {v}", "thread_q": lambda v: f"tile rows {v}", "thread_kv": lambda v: f"tile cols {v}",
    "sram_bytes": lambda v: f"M = {_bytes(v)}",
}
#: Pairs named together when a row holds both: (first, second, format of the two when equal, when not).
_PAIRS = (
    ("n_q", "n_kv", "N = {}", "Nq = {}, Nk = {}"),
    ("block_q", "block_kv", "Br = Bc = {}", "Br = {}, Bc = {}"),
    ("thread_q", "thread_kv", "tile {0}×{0}", "tile {}×{}"),
)


def describe(row, columns):
    """``columns`` of ``row`` in the paper's notation, e.g. "flash2, N = 4096, d = 64, Br = Bc = 64"."""
    parts, done = [], set()
    for c in columns:
        if c in done:
            continue
        pair = next((p for p in _PAIRS if c in p[:2] and p[0] in columns and p[1] in columns), None)
        if pair:
            a, b = row[pair[0]], row[pair[1]]
            parts.append(pair[2].format(a) if a == b else pair[3].format(a, b))
            done.update(pair[:2])
        else:
            parts.append(_FORMAT[c](row[c]))
            done.add(c)
    return ", ".join(parts)


_NAMES = {"kind": "kind", "batch": "B", "heads": "H", "n_q": "Nq", "n_kv": "Nk", "head_dim": "d", "dtype": "dtype",
          "causal": "the mask", "block_q": "Br", "block_kv": "Bc", "thread_q": "tile rows", "thread_kv": "tile columns",
          "sram_bytes": "M"}


def _name_list(columns):
    names = [_NAMES[c] for c in columns]
    for pair, name in ((("thread_q", "thread_kv"), "the register tile"), (("n_q", "n_kv"), "N")):
        if all(c in columns for c in pair):
            names = [n for n in names if n not in (_NAMES[pair[0]], _NAMES[pair[1]])] + [name]
    return names


def _names(columns):
    """The columns' names in the paper's notation, e.g. "Br, Bc"."""
    return ", ".join(_name_list(columns))


class Lines:
    """Rows split into lines along ``x``: one line per combination of the other columns that vary.

    Attributes:
        fixed: point columns with one value over all rows (the title's setting).
        split: point columns that vary and split the rows into lines.
        follow: point columns that vary along ``x`` within a line (e.g. Br, Bc under the block rule).
        lines: (label, rows sorted along x) per line, in order of first appearance. A label names
            the line's split columns, and in parentheses the followers constant along it.
    """

    def __init__(self, figure, rows, x, min_points=2):
        x = tuple(x)
        if x == ("n_q",) and all(r["n_q"] == r["n_kv"] for r in rows):
            x = ("n_q", "n_kv")  # N
        varying = [c for c in POINT_COLUMNS if c not in x and len({r[c] for r in rows}) > 1]
        self.fixed = [c for c in POINT_COLUMNS if c not in x and c not in varying]
        split = list(varying)
        for c in FOLLOWERS:  # a column that only follows x does not split lines
            if c in split and self._unique_along_x(rows, x, [s for s in split if s != c]):
                split.remove(c)
        if not self._unique_along_x(rows, x, split):
            raise ValueError(f"{figure}: the sweep has two rows for one point")
        groups = {}
        for r in rows:
            groups.setdefault(tuple(r[c] for c in split), []).append(r)
        followers = [c for c in varying if c not in split]
        self.split = split
        self.follow = [c for c in followers if any(len({r[c] for r in rs}) > 1 for rs in groups.values())]
        per_line = [c for c in followers if c not in self.follow]
        self.lines = []
        for rs in groups.values():
            label = describe(rs[0], split) + (f" ({describe(rs[0], per_line)})" if per_line else "")
            self.lines.append((label, sorted(rs, key=lambda r: tuple(r[c] for c in x))))
        xs = {tuple(r[c] for c in x) for r in rows}
        if len(xs) < min_points:
            raise ValueError(f"{figure} draws lines along {_names(x)} and this sweep has "
                             f"{'one value' if len(xs) == 1 else 'no values'} of it: "
                             f"sweep at least {min_points}")

    @staticmethod
    def _unique_along_x(rows, x, split):
        seen = set()
        for r in rows:
            key = tuple(r[c] for c in split) + tuple(r[c] for c in x)
            if key in seen:
                return False
            seen.add(key)
        return True

    def setting(self, rows, x_name):
        """The title's second line: the shared setting, and what follows x."""
        text = describe(rows[0], self.fixed)
        if self.follow:
            text += f"; {_names(self.follow)} follow{'s' if len(_name_list(self.follow)) == 1 else ''} {x_name}"
        return text

    def styles(self, rows):
        """(color, line style) of each line: color by kind (``sandbox.lab.colors``), style by the other columns."""
        count, out = {}, []
        for _, rs in self.lines:
            kind = rs[0]["kind"]
            i = count[kind] = count.get(kind, -1) + 1
            out.append((kind_color(kind), STYLES[i % len(STYLES)]))
        return out


def _title(ax, what, setting, fontsize=9):
    ax.set_title(f"{what}\n{setting}" if setting else what, fontsize=fontsize)


def _save(fig, out_dir, name, prov):
    os.makedirs(out_dir, exist_ok=True)
    footer = " | ".join(str(prov[k]) for k in ("backend", "date") if prov.get(k))
    if prov.get("sandbox"):
        footer += f" | sandbox {prov['sandbox']}"
    fig.text(0.01, -0.04, footer, fontsize=6, color="gray")
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "svg")]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _hbm(r):
    return r["hbm_reads"] + r["hbm_writes"]


def _per_head(r):
    return r["batch"] * r["heads"]


# -- figures ------------------------------------------------------------------------------
def hbm_vs_sram(rows, prov, out_dir):
    """Log-log HBM accesses per head vs M, one line per kind (and per other varying column),
    with Θ(N²d²/M), Proposition 3, Saha & Ye and 4Nd for the sweep's one N and d."""
    rows = _require("hbm_vs_sram", rows, ("hbm_reads", "hbm_writes"))
    lines = Lines("hbm_vs_sram", rows, x=("sram_bytes",))
    n, d = _one_square_shape("hbm_vs_sram", rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for (label, rs), (color, style) in zip(lines.lines, lines.styles(rows)):
        m = [theory.sram_elements(r["sram_bytes"], r["dtype"]) for r in rs]
        ax.plot(m, [_hbm(r) / _per_head(r) for r in rs], style, color=color,
                label=f"{label or rs[0]['kind']} (simulated)")
    ms = sorted({theory.sram_elements(r["sram_bytes"], r["dtype"]) for r in rows})
    ax.plot(ms, [theory.flash_hbm_theta(n, d, m) for m in ms], "k--",
            label="N²d²/M (Θ, Thm 2; Prop 3 bound for M∈[d,Nd])")
    ax.plot(ms, [theory.saha_ye_bound(n, d, m) for m in ms], "k:", label="min(N²d/√M, N²d²/M) (Saha & Ye)")
    ax.plot(ms, [theory.io_lower_bound_trivial(n, d)] * len(ms), color="gray", lw=1, label="4Nd (read Q,K,V, write O)")
    if ms[0] <= theory.saha_ye_crossover(d) <= ms[-1]:
        ax.axvline(theory.saha_ye_crossover(d), color="gray", lw=0.8, ls="-.")
        ax.annotate(" M = d²", (theory.saha_ye_crossover(d), 0.02), xycoords=("data", "axes fraction"),
                    fontsize=8, color="gray")
    ax.set(xscale="log", yscale="log", xlabel="SRAM size M (elements)", ylabel="HBM accesses per head (elements)")
    _title(ax, "HBM accesses vs SRAM size M", lines.setting(rows, "M"))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "hbm_vs_sram", prov)


def backward_hbm_vs_sram(rows, prov, out_dir):
    """Log-log HBM bytes per head of the backward pass vs M (solid), the same schedules' forward
    (dashed) for contrast, and the backward's lower bound of Li, Liang, Shi, Song et al.,
    Θ(min((N²d² + Nd³)/M, (N²d + Nd²)/√M)), scaled by the constant that makes it meet the data
    (the smallest ratio of a point to the bound), for the sweep's one N and d."""
    rows = _require("backward_hbm_vs_sram", rows, ("hbm_bytes", "hbm_bytes_backward"))
    lines = Lines("backward_hbm_vs_sram", rows, x=("sram_bytes",))
    n, d = _one_square_shape("backward_hbm_vs_sram", rows)
    m_of = lambda r: theory.sram_elements(r["sram_bytes"], r["dtype"])  # noqa: E731
    ratio = min(r["hbm_bytes_backward"] / _per_head(r) / theory.backward_lower_bound(n, d, m_of(r)) for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, ((label, rs), (color, style)) in enumerate(zip(lines.lines, lines.styles(rows))):
        m = [m_of(r) for r in rs]
        label = label or rs[0]["kind"]
        # kinds that share a backward draw the same points: a smaller marker for each later line shows them all
        ax.plot(m, [r["hbm_bytes_backward"] / _per_head(r) for r in rs], style[0] + "-", color=color,
                ms=max(2.5, 7 - 2 * i), label=f"{label}: backward (simulated)")
        ax.plot(m, [r["hbm_bytes"] / _per_head(r) for r in rs], style[0] + "--", color=color, lw=0.8, ms=3,
                mfc="none", label=f"{label}: forward (simulated)")
    ms = sorted({m_of(r) for r in rows})
    ax.plot(ms, [ratio * theory.backward_lower_bound(n, d, m) for m in ms], "k:", lw=1.5,
            label=f"{ratio:.3g} × min((N²d² + Nd³)/M, (N²d + Nd²)/√M)\n"
                  "(Θ, Li, Liang, Shi, Song et al.; scaled to meet the data)")
    if ms[0] <= theory.saha_ye_crossover(d) <= ms[-1]:
        ax.axvline(theory.saha_ye_crossover(d), color="gray", lw=0.8, ls="-.")
        ax.annotate(" M = d²", (theory.saha_ye_crossover(d), 0.02), xycoords=("data", "axes fraction"),
                    fontsize=8, color="gray")
    ax.set(xscale="log", yscale="log", xlabel="SRAM size M (elements)", ylabel="HBM bytes per head")
    _title(ax, "Backward HBM traffic vs SRAM size M", lines.setting(rows, "M"))
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "backward_hbm_vs_sram", prov)


def _one_square_shape(figure, rows):
    """(N, d) of a sweep with one Nq = Nk and one d: the bounds a figure draws are for one shape."""
    shapes = sorted({(r["n_q"], r["n_kv"], r["head_dim"]) for r in rows})
    if len(shapes) > 1:
        raise ValueError(f"{figure} draws the bounds for one N and d, and this sweep has "
                         + "; ".join(describe(dict(zip(("n_q", "n_kv", "head_dim"), s)), ("n_q", "n_kv", "head_dim"))
                                     for s in shapes) + ": sweep one N and d (or plot hbm_vs_n)")
    (n, n_kv, d), = shapes
    if n != n_kv:
        raise ValueError(f"{figure} draws the bounds for Nq = Nk, and this sweep has Nq = {n}, Nk = {n_kv}")
    return n, d


def hbm_vs_n(rows, prov, out_dir):
    """HBM accesses vs N, and beside it the extra device memory each kind allocates; one line per
    kind and per combination of whatever else the sweep varies."""
    rows = _require("hbm_vs_n", rows, ("hbm_reads", "hbm_writes", "extra_hbm_bytes"))
    lines = Lines("hbm_vs_n", rows, x=("n_q",))
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for (label, rs), (color, style) in zip(lines.lines, lines.styles(rows)):
        ns = [r["n_q"] for r in rs]
        ax.plot(ns, [_hbm(r) for r in rs], style, color=color, label=label or rs[0]["kind"])
        ax2.plot(ns, [r["extra_hbm_bytes"] for r in rs], style, color=color, label=label or rs[0]["kind"])
    ax.set(xscale="log", yscale="log", xlabel="N", ylabel="HBM accesses (elements)", title="HBM accesses")
    ax2.set(xscale="log", yscale="log", xlabel="N", ylabel="bytes beyond Q, K, V, O",
            title="extra memory: S, P (standard); ℓ, m, L (flash)")
    ax.legend(fontsize=7)
    setting = lines.setting(rows, "N")
    fig.suptitle(f"HBM accesses and extra memory vs N\n{setting}" if setting else "HBM accesses and extra memory vs N",
                 fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, "hbm_vs_n", prov)


def block_size(rows, prov, out_dir):
    """HBM traffic and forward runtime vs block size Bc, for one setting (the FlashAttention
    paper's Figure 2, middle, when the sweep is its flash1, N = 1024, d = 64)."""
    rows = _require("block_size", rows, ("hbm_bytes",))
    lines = Lines("block_size", rows, x=("block_kv",))
    if lines.split:
        raise ValueError(f"block_size draws one bar per Bc for one setting, and this sweep also varies "
                         f"{_names(lines.split)}: sweep one of each")
    rs = lines.lines[0][1]
    fig, ax = plt.subplots(figsize=(6, 4))
    bcs = [str(r["block_kv"]) for r in rs]
    ax.bar(bcs, [r["hbm_bytes"] / 1e9 for r in rs], color="tab:blue", alpha=0.7)
    ax.set(xlabel="block size Bc", ylabel="HBM traffic (GB)")
    _title(ax, "HBM traffic and forward runtime vs block size Bc", lines.setting(rows, "Bc"))
    timed = [(str(r["block_kv"]), r["runtime_ms"]) for r in rs if r.get("runtime_ms") is not None]
    ax2 = ax.twinx()
    if timed:
        ax2.plot([t[0] for t in timed], [t[1] for t in timed], "o-", color="tab:orange")
        ax2.set_ylabel("forward runtime (ms)", color="tab:orange")
    else:
        ax2.set_yticks([])
        ax.text(0.5, 0.9, "runtime: not timed in this sweep", transform=ax.transAxes, ha="center", fontsize=8,
                color="gray")
    return _save(fig, out_dir, "block_size", prov)


def gpt2_medium(rows, prov, out_dir):
    """The FlashAttention paper's Figure 2 (left) for a sweep: GFLOPs, HBM reads + writes and runtime,
    forward and backward stacked, one bar per point, beside the paper's A100 figures when the sweep
    is in the paper's setting. The runtime panel is filled where the sweep was timed on a GPU."""
    rows = _require("gpt2_medium", rows, ("hbm_bytes",))
    if len(rows) > MAX_BARS:
        raise ValueError(f"gpt2_medium draws one bar per point, at most {MAX_BARS}, and this sweep has {len(rows)}")
    split = [c for c in POINT_COLUMNS if len({r[c] for r in rows}) > 1]
    fixed = [c for c in POINT_COLUMNS if c not in split]
    if len({tuple(r[c] for c in split) for r in rows}) < len(rows):
        raise ValueError("gpt2_medium: the sweep has two rows for one point")
    order = sorted(range(len(rows)), key=lambda i: (rows[i]["causal"], i))  # full, then causal
    rows = [rows[i] for i in order]
    labels = [describe(r, split).replace(", ", "\n") or r["kind"] for r in rows]
    colors = [kind_color(r["kind"]) for r in rows]
    paper = PAPER_GPT2_MEDIUM_SETTING
    in_paper_setting = all(c in fixed and rows[0][c] == v for c, v in paper.items())
    timed = any(r.get("runtime_ms") is not None for r in rows)
    panels = [  # (what, unit, forward column, backward column, scale, the paper's figures)
        ("GFLOPs (matmul, simulated)", "GFLOPs", "flops", "flops_backward", 1e-9, PAPER_GPT2_MEDIUM_GFLOPS),
        ("HBM reads + writes (simulated)", "GB", "hbm_bytes", "hbm_bytes_backward", 1e-9, PAPER_GPT2_MEDIUM_GB),
        ("runtime (measured)", "ms", "runtime_ms", "runtime_ms_backward", 1.0, PAPER_GPT2_MEDIUM_MS),
    ]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6))
    for ax, (what, unit, fwd_col, bwd_col, scale, paper_values) in zip(axes, panels):
        fwd = [(r.get(fwd_col) or 0) * scale for r in rows]
        bwd = [(r.get(bwd_col) or 0) * scale for r in rows]
        ax.bar(labels, fwd, color=colors)
        top = ax.bar(labels, bwd, bottom=fwd, color=colors, alpha=0.45, hatch="//")
        shown = fwd_col != "runtime_ms" or timed
        ax.bar_label(top, labels=[f"{f + b:.4g}" if shown and f + b else "" for f, b in zip(fwd, bwd)], fontsize=6)
        tops = [f + b for f, b in zip(fwd, bwd)]
        if in_paper_setting:
            bars = ax.bar(["paper\nstandard", "paper\nflash"], [paper_values["standard"], paper_values["flash"]],
                          color=["gray", "lightgray"])
            ax.bar_label(bars, fmt="%.1f", fontsize=6)
            tops += list(paper_values.values())
        if not shown:
            ax.text(0.5, 0.9, "runtime: not timed in this sweep (a GPU fills it)", transform=ax.transAxes,
                    ha="center", fontsize=7, color="gray")
        ax.set_ylim(0, max(tops) * 1.2 or 1)
        ax.set_ylabel(unit)
        ax.set_title(what, fontsize=9)
        ax.tick_params(axis="x", labelsize=6)
    handles = [Patch(facecolor="dimgray", label="forward (ours)"),
               Patch(facecolor="dimgray", alpha=0.45, hatch="//", label="backward (ours)")]
    if in_paper_setting:
        handles += [Patch(facecolor="gray", label="paper: standard, forward + backward, A100 (Fig. 2 left)"),
                    Patch(facecolor="lightgray", label="paper: FlashAttention, forward + backward, A100")]
    fig.legend(handles=handles, fontsize=7, loc="lower center", ncol=4)
    what = "Forward and backward: GFLOPs, HBM traffic, runtime" + (
        " (the paper's GPT-2 medium setting)" if in_paper_setting else "")
    fig.suptitle(f"{what}\n{describe(rows[0], fixed)}", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, out_dir, "gpt2_medium", prov)


def sram_vs_tile(rows, prov, out_dir):
    """SRAM reads against the thread register tile: register blocking cuts shared-memory traffic."""
    rows = _require("sram_vs_tile", rows, ("sram_reads",))
    lines = Lines("sram_vs_tile", rows, x=("thread_q", "thread_kv"))
    area = lambda r: r["thread_q"] * r["thread_kv"]  # noqa: E731
    fig, ax = plt.subplots(figsize=(6, 4))
    for (label, rs), (color, style) in zip(lines.lines, lines.styles(rows)):
        rs = sorted(rs, key=area)
        ax.plot([area(r) for r in rs], [r["sram_reads"] for r in rs], style, color=color, label=label or None)
    ax.set(xscale="log", yscale="log", xlabel="register tile per thread (rows × columns of S)",
           ylabel="SRAM reads (elements)")
    # one labelled tick per tile of the sweep, and no minor ticks (their labels would overlap)
    tiles = sorted({(r["thread_q"], r["thread_kv"]) for r in rows}, key=lambda t: t[0] * t[1])
    ax.set_xticks([tq * tkv for tq, tkv in tiles], [f"{tq}×{tkv}" for tq, tkv in tiles])
    ax.xaxis.set_minor_locator(NullLocator())
    _title(ax, "SRAM reads vs the thread register tile", lines.setting(rows, "the tile"))
    if len(lines.lines) > 1:
        ax.legend(fontsize=7)
    return _save(fig, out_dir, "sram_vs_tile", prov)


def gqa_l2(rows, prov, out_dir):
    """Bytes against the group size H / H_kv (log-log), forward and backward side by side: on top all
    tensors, below K and V alone; per kind the L2 model's DRAM bytes (solid) and the bytes requested
    (dashed, the simulator's tile counts), and below the floor of K and V read once per K/V head."""
    if any(c not in r for r in rows for c in GROUPED_COLUMNS):
        raise ValueError("gqa_l2: the data has no columns of the gqa_l2 experiment; "
                         "python -m sandbox sweep --experiment gqa_l2 writes them")
    settings = {(r["batch"], r["heads"], r["n"], r["head_dim"], r["dtype"], r["block_q"], r["block_kv"], r["gpu"])
                for r in rows}
    if len(settings) > 1:
        raise ValueError(f"gqa_l2 draws one problem, and this data has {len(settings)}: run one grid per file")
    if len({r["group"] for r in rows}) < 2:
        raise ValueError("gqa_l2 draws lines along H / H_kv and this data has one value of it: sweep at least 2")
    directions = [d for d in ("fwd", "bwd") if any(r["direction"] == d for r in rows)]
    fig, axes = plt.subplots(2, len(directions), figsize=(5.5 * len(directions), 7.5), squeeze=False, sharex=True)
    groups = sorted({r["group"] for r in rows})
    r0 = rows[0]
    for col, direction in enumerate(directions):
        top, bottom = axes[0, col], axes[1, col]
        kinds_here = list(dict.fromkeys(r["kind"] for r in rows if r["direction"] == direction))
        for i, kind in enumerate(kinds_here):
            rs = sorted((r for r in rows if r["direction"] == direction and r["kind"] == kind), key=lambda r: r["group"])
            g, color = [r["group"] for r in rs], kind_color(kind)
            ms = max(2.5, 7 - 1.5 * i)  # kinds that share a backward draw the same points: all stay visible
            top.plot(g, [r["dram_bytes"] for r in rs], "o-", color=color, ms=ms, label=f"{kind}: DRAM (L2 model)")
            top.plot(g, [r["requested_bytes"] for r in rs], "s--", color=color, lw=0.8, ms=3, mfc="none",
                     label=f"{kind}: requested (tile counts)")
            bottom.plot(g, [r["dram_kv_read_bytes"] for r in rs], "o-", color=color, ms=ms,
                        label=f"{kind}: K, V from DRAM (L2 model)")
            bottom.plot(g, [r["requested_kv_bytes"] for r in rs], "s--", color=color, lw=0.8, ms=3, mfc="none",
                        label=f"{kind}: K, V requested")
        itemsize = np.dtype(r0["dtype"]).itemsize
        once = [2 * r0["batch"] * (r0["heads"] // grp) * r0["n"] * r0["head_dim"] * itemsize for grp in groups]
        bottom.plot(groups, once, "k:", lw=1.5, label="K, V read once per K/V head (2·B·H_kv·N·d elements)")
        name = "forward" if direction == "fwd" else "backward"
        top.set(xscale="log", yscale="log", ylabel="bytes, all tensors")
        top.set_title(f"{name}: DRAM bytes and bytes requested", fontsize=9)
        bottom.set(xscale="log", yscale="log", xlabel="group size H / H_kv (query heads per K/V head)",
                   ylabel="bytes, K and V reads")
        bottom.set_title(f"{name}: K and V", fontsize=9)
        bottom.set_xticks(groups, [str(grp) for grp in groups])
        bottom.xaxis.set_minor_locator(NullLocator())
        for ax in (top, bottom):
            ax.legend(fontsize=6)
    l2 = _bytes(r0["l2_bytes"])
    setting = (f"B = {r0['batch']}, H = {r0['heads']}, N = {r0['n']}, d = {r0['head_dim']}, {r0['dtype']}, "
               f"Br = {r0['block_q']}, Bc = {r0['block_kv']}; {r0['gpu']}'s L2 ({l2})")
    fig.suptitle(f"Grouped K/V heads: reuse across a group's query heads in L2\n{setting}", fontsize=10)
    fig.tight_layout()
    return _save(fig, out_dir, "gqa_l2", prov)


#: The figures by name: the experiments' (sandbox/lab/experiments.py), each drawn from any sweep it fits.
PLOTS = {"hbm_vs_sram": hbm_vs_sram, "backward_hbm_vs_sram": backward_hbm_vs_sram, "hbm_vs_n": hbm_vs_n,
         "block_size": block_size, "gpt2_medium": gpt2_medium, "sram_vs_tile": sram_vs_tile, "gqa_l2": gqa_l2}
