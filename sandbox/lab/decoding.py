"""Where split-KV beats flash2: few queries against a long K/V range (decoding).

For each (Nq, Nk) the study times flash2 and split-KV with several split counts on the GPU
(``sandbox.lab.timing.time_attention``: CUDA events, median of 10, inputs rotated out of L2) and
records both schedules' simulated HBM bytes, which hold on any machine. Without a GPU only the
IO columns are filled. ``python scripts/splitkv_figure.py --out DIR`` writes the CSV, a JSON
with provenance and the figure.
"""

import csv
import os

from sandbox.lab.info import environment
from sandbox.lab.records import atomic_write, atomic_write_json, text_of
from sandbox.lab.timing import time_attention
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.runtime import using_simulator
from sandbox.vocabulary.schedule import Schedule
from simulator.entry import simulate

#: Decoding-shaped problems: B = 1, H = 16, d = 64, fp32.
N_Q = (1, 16, 256)
N_KV = (1024, 4096, 16384, 65536)
SPLITS = (4, 16, 64)
HEADS = 16
HEAD_DIM = 64


def schedules(splits=SPLITS):
    """flash2 and split-KV with the same tiles: Br = 16 (few queries), Bc = 64, 16x16 threads."""
    tiles = dict(block_q=16, block_kv=64, thread_q=1, thread_kv=4)
    return [("flash2", Schedule("flash2", **tiles))] + [
        (f"splitkv x{s}", Schedule("splitkv", kv_splits=s, **tiles)) for s in splits
    ]


def run_study(out_dir, n_q=N_Q, n_kv=N_KV, splits=SPLITS, progress=print):
    """Time and count every (Nq, Nk, schedule); write ``splitkv.csv``/``.json`` and ``splitkv.png`` to ``out_dir``.

    Returns:
        list of row dicts (label, n_q, n_kv, kv_splits, hbm_bytes, ms or None).
    """
    gpu = not using_simulator()
    rows = []
    for nq in n_q:
        for nk in n_kv:
            problem = Problem(1, HEADS, nq, nk, HEAD_DIM)
            for label, schedule in schedules(splits):
                ms = time_attention(schedule, problem) if gpu else None
                rows.append(dict(label=label, n_q=nq, n_kv=nk, kv_splits=schedule.kv_splits,
                                 hbm_bytes=simulate(schedule, problem).hbm_bytes, ms=ms))
                progress(f"Nq={nq} Nk={nk} {label}: " + (f"{ms:.3f} ms" if ms is not None else "no GPU, IO only"))
    os.makedirs(out_dir, exist_ok=True)

    def write_csv(f):
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)

    atomic_write(os.path.join(out_dir, "splitkv.csv"), text_of(write_csv))
    atomic_write_json(os.path.join(out_dir, "splitkv.json"), {"provenance": environment(), "rows": rows}, indent=1,
                      default=str)
    plot(rows, os.path.join(out_dir, "splitkv.png"))
    return rows


def plot(rows, path):
    """Left: runtime against Nk per Nq (GPU rows only); right: HBM bytes relative to flash2."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(dict.fromkeys(r["label"] for r in rows))
    n_qs = sorted({r["n_q"] for r in rows})
    timed = any(r["ms"] is not None for r in rows)
    fig, axes = plt.subplots(2 if timed else 1, len(n_qs), figsize=(4 * len(n_qs), 7 if timed else 3.5), squeeze=False)
    for col, nq in enumerate(n_qs):
        base = {r["n_kv"]: r for r in rows if r["n_q"] == nq and r["label"] == "flash2"}
        for label in labels:
            sel = sorted((r for r in rows if r["n_q"] == nq and r["label"] == label), key=lambda r: r["n_kv"])
            nk = [r["n_kv"] for r in sel]
            ax = axes[-1, col]
            ax.plot(nk, [r["hbm_bytes"] / base[r["n_kv"]]["hbm_bytes"] for r in sel], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("Nk")
            ax.set_ylabel("HBM bytes / flash2's (simulated)")
            if timed:
                ax = axes[0, col]
                ax.plot(nk, [r["ms"] for r in sel], marker="o", label=label)
                ax.set_xscale("log", base=2)
                ax.set_yscale("log")
                ax.set_ylabel("ms (H100, median of 10)")
                ax.set_title(f"Nq = {nq}, B=1, H={HEADS}, d={HEAD_DIM}, fp32")
        if not timed:
            axes[0, col].set_title(f"Nq = {nq}, B=1, H={HEADS}, d={HEAD_DIM}")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
