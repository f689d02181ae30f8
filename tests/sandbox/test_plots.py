"""Figures from sweep files: titles and lines from the data, refusals of sweeps a figure can't show."""

import json

import matplotlib.pyplot as plt
import numpy as np
import pytest

from sandbox.lab import plots
from sandbox.lab.colors import kind_colors
from sandbox.lab.experiments import EXPERIMENTS
from sandbox.lab.sweep import SweepSpec, load, run_sweep


def sweep(tmp_path, name="s", **axes):
    """A small sweep's rows, as a figure reads them back from its JSON."""
    axes = {"n": (64, 128), "head_dim": (16,), **axes}
    run_sweep(SweepSpec(**axes), str(tmp_path / f"{name}.csv"), argv=["test"])
    return load(str(tmp_path / f"{name}.json"))


@pytest.fixture
def drawn(monkeypatch):
    """The figures a plot function draws, instead of files."""
    figures = []

    def keep(fig, out_dir, name, prov):
        figures.append(fig)
        return [name]

    monkeypatch.setattr(plots, "_save", keep)
    yield figures
    for fig in figures:
        plt.close(fig)


def texts(fig):
    """Every title, legend label and note of a figure."""
    out = [fig._suptitle.get_text()] if fig._suptitle else []
    for ax in fig.axes:
        out.append(ax.get_title())
        out += [t.get_text() for t in ax.texts]
        if ax.get_legend():
            out += [t.get_text() for t in ax.get_legend().get_texts()]
    return " | ".join(out)


def test_every_experiment_has_a_figure():
    assert set(plots.PLOTS) == set(EXPERIMENTS)


def test_hbm_vs_n_one_line_per_setting_titled_from_the_data(tmp_path, drawn):
    """Two kinds x two M x two N (the README's sweep, small): four lines, none zigzags, and the
    title holds the sweep's own d and dtype, not the hbm_vs_n experiment's."""
    prov, rows = sweep(tmp_path, kinds=("flash1", "flash2"), sram=(8192, 16384))
    plots.hbm_vs_n(rows, prov, str(tmp_path))
    fig, = drawn
    ax = fig.axes[0]
    assert len(ax.lines) == 4
    for line in ax.lines:
        assert list(line.get_xdata()) == [64, 128]  # one point per N, in order
    text = texts(fig)
    assert "d = 16" in text and "float32" in text and "N = 64" not in text
    assert "d = 64" not in text and "Br = Bc = 64" not in text
    assert "flash1, M = 8 KiB" in text and "flash2, M = 16 KiB" in text
    # the lines' values are the rows' own
    by_label = {t.get_text(): line for t, line in zip(ax.get_legend().get_texts(), ax.lines)}
    flash1_8k = next(line for label, line in by_label.items() if label.startswith("flash1, M = 8 KiB"))
    expect = [r["hbm_reads"] + r["hbm_writes"] for r in sorted(rows, key=lambda r: r["n_q"])
              if r["kind"] == "flash1" and r["sram_bytes"] == 8192]
    assert list(flash1_8k.get_ydata()) == expect


def test_hbm_vs_sram_setting_from_the_data(tmp_path, drawn):
    prov, rows = sweep(tmp_path, kinds=("flash2",), n=(96,), sram=(4096, 8192, 16384), causal=(True,))
    plots.hbm_vs_sram(rows, prov, str(tmp_path))
    text = texts(drawn[0])
    assert "N = 96, d = 16" in text and "causal" in text and "Br, Bc" in text and "follow M" in text
    assert "4096" not in text


def test_sram_vs_tile_ticks_are_the_tiles(tmp_path, drawn):
    prov, rows = sweep(tmp_path, kinds=("flash2",), n=(64,), blocks=((16, 16),), thread_tiles=(1, 2, 4))
    plots.sram_vs_tile(rows, prov, str(tmp_path))
    ax = drawn[0].axes[0]
    drawn[0].canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1×1", "2×2", "4×4"]
    assert len(ax.xaxis.get_minorticklocs()) == 0  # no "3×10⁰" labels between them
    assert "Br = Bc = 16" in texts(drawn[0]) and "N = 64" in texts(drawn[0])


def test_gpt2_medium_legend_shows_forward_and_backward_not_a_kind(tmp_path, drawn):
    prov, rows = sweep(tmp_path, n=(64,), causal=(False, True), dtype=("float16",))
    plots.gpt2_medium(rows, prov, str(tmp_path))
    ax = drawn[0].axes[0]
    handles = drawn[0].legends[0].legend_handles
    colors = {plt.matplotlib.colors.to_rgba(c)[:3] for c in kind_colors().values()}
    assert [h.get_label() for h in handles] == ["forward (ours)", "backward (ours)"]
    assert not {tuple(h.get_facecolor()[:3]) for h in handles} & colors
    assert handles[1].get_hatch() == "//" and handles[0].get_hatch() is None
    # not the paper's setting: no paper bars, and the title says the sweep's own
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert not any("paper" in label for label in labels) and len(labels) == 6
    assert "N = 64, d = 16, float16" in texts(drawn[0]) and "batch 64" not in texts(drawn[0])
    # three panels: GFLOPs, HBM bytes, runtime; the simulator's sweep is not timed, and says so
    assert [a.get_ylabel() for a in drawn[0].axes] == ["GFLOPs", "GB", "ms"]
    assert "not timed in this sweep" in texts(drawn[0])
    fwd_flops = [p.get_height() for p in ax.patches[:6]]
    assert fwd_flops == pytest.approx([r["flops"] * 1e-9 for r in sorted(rows, key=lambda r: r["causal"])])


def test_gpt2_medium_draws_the_timed_runtimes_forward_and_backward(tmp_path, drawn):
    prov, rows = sweep(tmp_path, kinds=("standard", "flash2"), n=(64,), dtype=("float16",))
    for i, r in enumerate(rows):
        r["runtime_ms"], r["runtime_ms_backward"] = 1.0 + i, 3.0 + i
    plots.gpt2_medium(rows, prov, str(tmp_path))
    ax = drawn[0].axes[2]
    assert "not timed" not in texts(drawn[0])
    heights = [p.get_height() for p in ax.patches]
    assert heights == [1.0, 2.0, 3.0, 4.0]  # forward bars, then the backward's stacked on them
    assert [p.get_y() for p in ax.patches[2:]] == [1.0, 2.0]
    assert all(r["flops_backward"] > r["flops"] for r in rows)  # the backward's five products to two


@pytest.mark.parametrize(
    "figure, axes, message",
    [
        ("block_size", {"kinds": ("flash1", "flash2"), "n": (64,), "blocks": ((16, 16), (16, 32))},
         "block_size draws one bar per Bc for one setting, and this sweep also varies kind"),
        ("hbm_vs_sram", {"kinds": ("flash2",), "sram": (8192, 16384)}, "bounds for one N and d"),
        ("hbm_vs_n", {"kinds": ("flash2",), "n": (64,), "blocks": ((16, 16), (32, 32))},
         "lines along N and this sweep has one value of it"),
        ("sram_vs_tile", {"kinds": ("flash2",), "n": (64,), "blocks": ((16, 16),)}, "sweep at least 2"),
    ],
)
def test_a_sweep_that_does_not_fit_is_refused(tmp_path, figure, axes, message):
    prov, rows = sweep(tmp_path, **axes)
    with pytest.raises(ValueError, match=message):
        plots.PLOTS[figure](rows, prov, str(tmp_path))
    assert not list(tmp_path.glob(f"{figure}.*"))


def test_gpt2_medium_refuses_more_bars_than_it_can_label(tmp_path):
    prov, rows = sweep(tmp_path, n=(64, 128, 256, 512, 1024), head_dim=(8,))
    with pytest.raises(ValueError, match="at most 12, and this sweep has 15"):
        plots.gpt2_medium(rows, prov, str(tmp_path))


def test_load_sweep_names_what_is_wrong(tmp_path):
    no_prov = tmp_path / "no_prov.json"
    no_prov.write_text(json.dumps({"rows": []}))
    with pytest.raises(ValueError, match=r"no_prov.json is not a sweep file: it has no 'provenance'"):
        plots.load_sweep(str(no_prov))
    junk = tmp_path / "junk.json"
    junk.write_text("[1, 2")
    with pytest.raises(ValueError, match="junk.json is not a sweep file"):
        plots.load_sweep(str(junk))
    empty = tmp_path / "empty.json"
    empty.write_text(json.dumps({"provenance": {}, "rows": []}))
    with pytest.raises(ValueError, match="empty.json has no rows"):
        plots.load_sweep(str(empty))
    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match=r"other.csv is not a sweep's CSV \(no columns kind, batch, heads, n_q"):
        plots.load_sweep(str(other))
    with pytest.raises(ValueError, match="hbm_vs_n: the data has no column kind, batch, heads, n_q"):
        plots.hbm_vs_n([{"a": 1, "b": 2}] * 2, {}, str(tmp_path))


def test_describe_uses_the_papers_notation():
    row = {"kind": "flash2", "n_q": 8, "n_kv": 16, "block_q": 64, "block_kv": 64, "thread_q": 2, "thread_kv": 8,
           "sram_bytes": 232448, "causal": True, "head_dim": np.int64(64)}
    assert plots.describe(row, ("kind", "n_q", "n_kv", "head_dim", "causal", "block_q", "block_kv",
                                "thread_q", "thread_kv", "sram_bytes")) == \
        "flash2, Nq = 8, Nk = 16, d = 64, causal, Br = Bc = 64, tile 2×8, M = 227 KiB"
