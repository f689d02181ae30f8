"""Figures drawn from sweep files (never from the kernels). Each function writes PNG and SVG and returns the paths."""

import os

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from sandbox.experiments import EXPERIMENTS, PAPER_GPT2_MEDIUM_GB  # noqa: E402
from simulator import theory  # noqa: E402

COLORS = {"standard": "tab:red", "flash1": "tab:blue", "flash2": "tab:green"}


def _save(fig, out_dir, name, prov):
    os.makedirs(out_dir, exist_ok=True)
    fig.text(0.01, -0.04, f"{prov.get('backend', '')} | {prov.get('date', '')} | sandbox {prov.get('sandbox', '')}",
             fontsize=6, color="gray")
    paths = [os.path.join(out_dir, f"{name}.{ext}") for ext in ("png", "svg")]
    for p in paths:
        fig.savefig(p, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return paths


def _hbm(r):
    return r["hbm_reads"] + r["hbm_writes"]


def _per_head(r):
    return r["batch"] * r["heads"]


def hbm_vs_sram(rows, prov, out_dir):
    """Log-log HBM accesses vs M per kind, with Θ(N²d²/M), Proposition 3, Saha & Ye and 4Nd."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    n, d = rows[0]["n_q"], rows[0]["head_dim"]
    for kind in COLORS:
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["sram_bytes"])
        if rs:
            m = [theory.sram_elements(r["sram_bytes"], r["dtype"]) for r in rs]
            ax.plot(m, [_hbm(r) / _per_head(r) for r in rs], "o-", color=COLORS[kind], label=f"{kind} (simulated)")
    ms = sorted({theory.sram_elements(r["sram_bytes"], r["dtype"]) for r in rows})
    ax.plot(ms, [theory.flash_hbm_theta(n, d, m) for m in ms], "k--", label="N²d²/M (Θ, Thm 2; Prop 3 bound for M∈[d,Nd])")
    ax.plot(ms, [theory.saha_ye_bound(n, d, m) for m in ms], "k:", label="min(N²d/√M, N²d²/M) (Saha & Ye)")
    ax.plot(ms, [theory.io_lower_bound_trivial(n, d)] * len(ms), color="gray", lw=1, label="4Nd (read Q,K,V, write O)")
    ax.axvline(theory.saha_ye_crossover(d), color="gray", lw=0.8, ls="-.")
    ax.annotate(" M = d²", (theory.saha_ye_crossover(d), 0.02), xycoords=("data", "axes fraction"), fontsize=8, color="gray")
    ax.set(xscale="log", yscale="log", xlabel="SRAM size M (elements)", ylabel="HBM accesses per head (elements)",
           title=EXPERIMENTS["hbm_vs_sram"].title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return _save(fig, out_dir, "hbm_vs_sram", prov)


def hbm_vs_n(rows, prov, out_dir):
    """HBM accesses vs N per kind, and beside it the extra device memory each kind allocates."""
    fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for kind in COLORS:
        rs = sorted((r for r in rows if r["kind"] == kind), key=lambda r: r["n_q"])
        if rs:
            ns = [r["n_q"] for r in rs]
            ax.plot(ns, [_hbm(r) for r in rs], "o-", color=COLORS[kind], label=kind)
            ax2.plot(ns, [r["extra_hbm_bytes"] for r in rs], "o-", color=COLORS[kind], label=kind)
    ax.set(xscale="log", yscale="log", xlabel="N", ylabel="HBM accesses (elements)", title="HBM accesses")
    ax2.set(xscale="log", yscale="log", xlabel="N", ylabel="bytes beyond Q, K, V, O",
            title="extra memory: S, P (standard); ℓ, m, L (flash)")
    ax.legend(fontsize=8)
    fig.suptitle(EXPERIMENTS["hbm_vs_n"].title, fontsize=10)
    return _save(fig, out_dir, "hbm_vs_n", prov)


def block_size(rows, prov, out_dir):
    """The paper's Fig. 2 (middle): HBM accesses and forward runtime vs block size Bc."""
    rs = sorted(rows, key=lambda r: r["block_kv"])
    fig, ax = plt.subplots(figsize=(6, 4))
    bcs = [r["block_kv"] for r in rs]
    ax.bar([str(b) for b in bcs], [r["hbm_bytes"] / 1e9 for r in rs], color="tab:blue", alpha=0.7)
    ax.set(xlabel="block size Bc", ylabel="HBM traffic (GB)", title=EXPERIMENTS["block_size"].title)
    timed = [(str(r["block_kv"]), r["runtime_ms"]) for r in rs if r["runtime_ms"] is not None]
    ax2 = ax.twinx()
    if timed:
        ax2.plot([t[0] for t in timed], [t[1] for t in timed], "o-", color="tab:orange")
        ax2.set_ylabel("forward runtime (ms)", color="tab:orange")
    else:
        ax2.set_yticks([])
        ax.text(0.5, 0.9, "runtime: no GPU in this run", transform=ax.transAxes, ha="center", fontsize=8, color="gray")
    return _save(fig, out_dir, "block_size", prov)


def gpt2_medium(rows, prov, out_dir):
    """Standard vs flash HBM traffic in the GPT-2 medium setting, forward and backward, beside the paper's figures."""
    fig, ax = plt.subplots(figsize=(8, 4.2))
    labels, fwd, bwd, colors = [], [], [], []
    for causal in (False, True):
        for kind in COLORS:
            for r in rows:
                if r["kind"] == kind and r["causal"] == causal:
                    labels.append(f"{kind}\n{'causal' if causal else 'full'}")
                    fwd.append(r["hbm_bytes"] / 1e9)
                    bwd.append((r["hbm_bytes_backward"] or 0) / 1e9)
                    colors.append(COLORS[kind])
    ax.bar(labels, fwd, color=colors, label="forward (ours, simulated)")
    top = ax.bar(labels, bwd, bottom=fwd, color=colors, alpha=0.45, hatch="//", label="backward (ours, simulated)")
    ax.bar_label(top, labels=[f"{f + b:.1f}" for f, b in zip(fwd, bwd)], fontsize=7)
    paper = ax.bar(["paper\nstandard", "paper\nflash"], [PAPER_GPT2_MEDIUM_GB["standard"], PAPER_GPT2_MEDIUM_GB["flash"]],
                   color=["gray", "lightgray"], label="paper: forward + backward, A100 (Fig. 2 left)")
    ax.bar_label(paper, fmt="%.1f", fontsize=7)
    ax.set_ylim(0, max(f + b for f, b in zip(fwd, bwd)) * 1.2)
    ax.set(ylabel="HBM reads + writes (GB)", title=EXPERIMENTS["gpt2_medium"].title)
    ax.title.set_fontsize(9)
    ax.legend(fontsize=7, loc="upper right")
    ax.tick_params(axis="x", labelsize=7)
    return _save(fig, out_dir, "gpt2_medium", prov)


def sram_vs_tile(rows, prov, out_dir):
    """SRAM reads against the thread register tile: register blocking cuts shared-memory traffic."""
    rs = sorted(rows, key=lambda r: r["thread_q"])
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot([r["thread_q"] for r in rs], [r["sram_reads"] for r in rs], "o-", color="tab:green")
    ax.set(xscale="log", yscale="log", xlabel="register tile t (t×t per thread)", ylabel="SRAM reads (elements)",
           title=EXPERIMENTS["sram_vs_tile"].title)
    ax.title.set_fontsize(9)
    return _save(fig, out_dir, "sram_vs_tile", prov)


PLOTS = {"hbm_vs_sram": hbm_vs_sram, "hbm_vs_n": hbm_vs_n, "block_size": block_size,
         "gpt2_medium": gpt2_medium, "sram_vs_tile": sram_vs_tile}
