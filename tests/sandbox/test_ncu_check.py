"""The ncu check (sandbox.lab.ncu, its child and specs, and its way in, ``python -m sandbox ncu``) without a GPU: ncu's CSV, units, kernels summed per config, no-ncu exit, dry run,
exit statuses, config checks, the machine modelled, and the whole parent pipeline against a stand-in ncu that
writes what a real one would."""

import argparse
import contextlib
import csv
import dataclasses
import json
import os
import shutil
import stat
import sys
import textwrap
import time

import numpy as np
import pytest

from sandbox.cli import ncu_main, ncu_parser
from sandbox.lab import ncu, ncu_results, ncu_specs, records


@pytest.fixture
def ncu_check():
    return ncu


def parse_args(argv):
    return ncu_parser().parse_args(argv)


# A details page as `ncu --csv` prints it: ncu's own lines first, quoted fields, kernel names with
# commas, thousands separators, and units scaled by ncu (this sample mixes --print-units auto and base).
SAMPLE = textwrap.dedent('''\
    ==PROF== Connected to process 4242 (/opt/venv/bin/python3.12)
    ==PROF== Profiling "kernel" - 0: 0%....50%....100% - 9 passes
    ==PROF== Profiling "qk" - 1: 0%....50%....100% - 9 passes
    "ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","Mbyte","1.05"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_write.sum","Kbyte","262.14"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum","byte","8,650,752"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_bytes_pipe_lsu_mem_global_op_st.sum","byte","266,240"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","smsp__inst_executed_op_shared_ld.sum","inst","1,234,567"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","usecond","412.35"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","launch__occupancy_limit_shared_mem","block","2"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","launch__occupancy_limit_warps","block","8"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","launch__sm_count","SM","132"
    "0","4242","python3.12","127.0.0.1","kernels::flash2::make_flash2::<locals>::kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","lts__t_sector_hit_rate.pct","%","93.25"
    "1","4242","python3.12","127.0.0.1","qk(Array<float, 4, C, mutable, aligned>, Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(16, 16, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","524,288"
    "1","4242","python3.12","127.0.0.1","qk(Array<float, 4, C, mutable, aligned>, Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(16, 16, 1)","0","9.0","Command line profiler metrics","l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum","Gbyte","0.0335"
    "1","4242","python3.12","127.0.0.1","qk(Array<float, 4, C, mutable, aligned>, Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(16, 16, 1)","0","9.0","Command line profiler metrics","launch__occupancy_limit_shared_mem","block","3"
    "1","4242","python3.12","127.0.0.1","qk(Array<float, 4, C, mutable, aligned>, Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(16, 16, 1)","0","9.0","Command line profiler metrics","launch__sm_count","SM","132"
    "2","4242","python3.12","127.0.0.1","softmax(Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","4,194,304"
    "2","4242","python3.12","127.0.0.1","softmax(Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum","byte","8,388,608"
    "2","4242","python3.12","127.0.0.1","softmax(Array<float, 4, C, mutable, aligned>)","1","7","(256, 1, 1)","(1024, 1, 1)","0","9.0","Command line profiler metrics","gpu__time_duration.sum","msecond","1.5"
    "3","4242","python3.12","127.0.0.1","kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","dram__bytes_read.sum","byte","n/a"
    "3","4242","python3.12","127.0.0.1","kernel(Array<float, 4, C, mutable, aligned>, float)","1","7","(256, 1, 1)","(16, 1, 1)","0","9.0","Command line profiler metrics","l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum","Kbyte","4,456.448"
    ==PROF== Disconnected from process 4242
''')


@pytest.mark.parametrize("value, unit, expected", [
    ("1,234,567", "byte", (1234567.0, "byte")),
    ("1.5", "Kbyte", (1500.0, "byte")),
    ("2", "Mbyte", (2e6, "byte")),
    ("0.25", "Gbyte", (2.5e8, "byte")),
    ("3", "KiB", (3072.0, "byte")),
    ("1,024", "Kinst", (1024e3, "inst")),
    ("12", "sector", (12.0, "sector")),
    ("412.5", "usecond", (412.5e-6, "second")),
    ("2,000", "nsecond", (2e-6, "second")),
    ("93.25", "%", (93.25, "%")),
    ("n/a", "byte", (None, "byte")),
])
def test_unit_conversion(ncu_check, value, unit, expected):
    got = ncu_results.to_base_units(value, unit)
    assert got[1] == expected[1]
    assert got[0] == (None if expected[0] is None else pytest.approx(expected[0]))


def test_parse_details_csv(ncu_check):
    kernels = ncu_results.parse_ncu_csv(SAMPLE)
    assert [k.id for k in kernels] == [0, 1, 2, 3]
    f2 = kernels[0]
    assert "make_flash2" in f2.name and f2.grid == (16, 1, 1) and f2.block == (256, 1, 1)
    assert f2.metrics["dram_rd_bytes"] == pytest.approx(1.05e6)
    assert f2.metrics["dram_wr_bytes"] == pytest.approx(262140)
    assert f2.metrics["global_ld_bytes"] == 8650752
    assert f2.metrics["global_st_bytes"] == 266240
    assert f2.metrics["shared_ld_inst"] == 1234567
    assert f2.metrics["time"] == pytest.approx(412.35e-6)
    assert f2.metrics["lts__t_sector_hit_rate.pct"] == 93.25  # not one of ours: kept under its own name
    assert kernels[1].grid == (16, 16, 1) and kernels[1].metrics["global_ld_bytes"] == pytest.approx(33.5e6)
    assert kernels[3].metrics["dram_rd_bytes"] is None
    assert kernels[3].metrics["global_ld_bytes"] == pytest.approx(4456448)


def test_parse_without_results(ncu_check):
    assert ncu_results.parse_ncu_csv("==PROF== Connected\n==ERROR== no kernels were profiled\n") == []


def test_kernels_summed_per_config(ncu_check):
    kernels = ncu_results.parse_ncu_csv(SAMPLE)
    entries = [{"spec": "flash2:1024:64:0"}, {"spec": "standard:1024:64:0"}]
    grids = [[(16, 1, 1)], [(16, 16, 1), (1024, 1, 1), (16, 1, 1)]]
    flash2, standard = ncu_results.assign_kernels(kernels, entries, grids)
    assert [k.id for k in flash2] == [0] and [k.id for k in standard] == [1, 2, 3]
    total = ncu_results.sum_metrics(standard)
    assert total["global_ld_bytes"] == pytest.approx(33.5e6 + 8388608 + 4456448)
    assert total["dram_rd_bytes"] == 524288 + 4194304  # kernel 3's n/a is skipped
    assert total["time"] == pytest.approx(1.5e-3)
    assert "sm_count" not in total  # launch facts are not summed
    assert ncu_results.measured_residency(flash2, ["main"]) == {"main": 132 * 2}
    assert ncu_results.measured_residency(standard, ["qk", "softmax", "pv"]) == {"qk": 132 * 3}


def test_kernels_of_a_failed_config_are_not_used(ncu_check):
    """A config whose kernels are missing gets None; matching resumes at the next config's first grid."""
    k0, k1, k2, k3 = ncu_results.parse_ncu_csv(SAMPLE)
    std = [(16, 16, 1), (1024, 1, 1), (16, 1, 1)]
    # the second config's kernels never came (the child was stopped)
    first, second = ncu_results.assign_kernels([k1, k2, k3], [{}, {}], [std, std])
    assert [k.id for k in first] == [1, 2, 3] and second is None
    # standard's qk is missing: its three slots would take a flash2 grid
    assert ncu_results.assign_kernels([k0, k2, k3], [{}], [std]) == [None]
    # a stray kernel before a flash2 config: the first config fails, the second finds its kernel
    first, second = ncu_results.assign_kernels([k1, k0], [{}, {}], [[(16, 1, 1)], [(16, 1, 1)]])
    assert first is None and [k.id for k in second] == [0]


def test_exit_2_without_ncu(ncu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(ncu_check, "NCU_SEARCH_GLOBS", ())
    assert ncu_main(["--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("ncu not found")
    assert not (tmp_path / "out").exists()


def test_dry_run_prints_the_command(ncu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(ncu_check, "NCU_SEARCH_GLOBS", ())
    out = tmp_path / "out"
    assert ncu_main(["--dry-run", "--kinds", "flash2", "standard", "--n", "1024", "--d", "64",
                           "--causal", "both", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    cmd = lines[0].split()
    assert cmd[0] == "ncu"
    for flag in ("--clock-control none", "--cache-control all", "--profile-from-start off", "--csv",
                 "--print-units base", "--target-processes all"):
        assert flag in lines[0]
    metrics = cmd[cmd.index("--metrics") + 1].split(",")
    assert set(ncu_results.METRICS.values()) == set(metrics)
    for m in ("l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum", "dram__bytes_write.sum",
              "l1tex__data_pipe_lsu_wavefronts_mem_shared_op_st.sum", "lts__t_bytes.sum"):
        assert m in metrics
    assert cmd[cmd.index("--log-file") + 1] == str(out / "ncu_raw.csv")
    child = cmd[cmd.index("--log-file") + 2:]
    assert child[1:3] == ["-m", "sandbox.lab.ncu_child"]
    specs = child[child.index("--specs") + 1:]
    # the calibration probes, then cheapest first (flash1 last); the CSV keeps the order asked for
    assert specs == ["probe:spin:10000000", "probe:spin:40000000", "probe:stream:64", "probe:stream:128",
                     "probe:rewrite:2000", "flash2:1024:64:0", "standard:1024:64:0", "flash2:1024:64:1", "standard:1024:64:1"]
    assert not out.exists()  # a dry run writes nothing


# -- the parent end to end, with a stand-in for ncu ---------------------------------------------
FAKE_NCU = '''#!{python}
"""Stand-in for ncu: writes a manifest and a --csv details log as the real profiled child would,
with measured = the sector model x 1.01 (global; the simulator's bytes where a masked row has no sector model) and
the simulator x 0.9 (DRAM; 1 MB read where a masked row has no prediction) on each config's first kernel; the
probes see 20 MB/s of background DRAM writes, and a write stream leaves 24 MiB dirty in L2."""
import json, sys
from sandbox.lab import ncu_child, ncu_results, ncu_specs as nc  # the child's PYTHONPATH has the package
argv = sys.argv[1:]
log = argv[argv.index("--log-file") + 1]
module = argv.index("sandbox.lab.ncu_child")
args = ncu_child.parse_args(argv[module + 1:])
args.cache_control = argv[argv.index("--cache-control") + 1]  # ncu's own, which the model follows
head = '"ID","Process ID","Process Name","Host Name","Kernel Name","Context","Stream","Block Size","Grid Size","Device","CC","Section Name","Metric Name","Metric Unit","Metric Value"'
rows, kid = ["==PROF== Connected to process 1 (python)", head], 0
with open(args.manifest, "w") as man:
    man.write(json.dumps({{"environment": {{"device": "fake"}}}}) + "\\n")
    for s in args.specs:
        cfg = nc.parse_spec(s)
        grids = nc.expected_grids(cfg, args)
        entry = {{"spec": s, "phases": [], "kernels": len(grids), "build": getattr(cfg, "build", None)}}
        man.write(json.dumps(entry) + "\\n")
        if isinstance(cfg, nc.Probe):
            t = 1e-8 * cfg.arg if cfg.name != "stream" else 1e-5
            wr = 2e7 * t + (cfg.arg * 2**20 - 24 * 2**20 if cfg.name == "stream" else 0)
            values = {{"dram__bytes_write.sum": round(wr), "gpu__time_duration.sum": round(t * 1e9)}}
            for name, v in values.items():
                unit = "nsecond" if name.startswith("gpu__") else "byte"
                rows.append(",".join('"%s"' % x for x in (kid, 1, "python", "host", "write_spin(float)", 1, 7,
                            "(256, 1, 1)", str(tuple(grids[0])), 0, "9.0", "Command line profiler metrics", name,
                            unit, "{{:,}}".format(v))))
            kid += 1
            continue
        pred = ncu_results.predict(cfg, args, "h200")
        ld = pred["sim_hbm_read_bytes"] if pred["sim_l1_ld_bytes"] is None else pred["sim_l1_ld_bytes"]
        st = pred["sim_hbm_write_bytes"] if pred["sim_l1_st_bytes"] is None else pred["sim_l1_st_bytes"]
        for n, g in enumerate(grids):
            first = n == 0
            values = {{
                "l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum": round(ld * 1.01) if first else 0,
                "l1tex__t_bytes_pipe_lsu_mem_global_op_st.sum": round(st * 1.01) if first else 0,
                "dram__bytes_read.sum": round((pred["sim_dram_rd_bytes"] or 10**6 / 0.9) * 0.9) if first else 0,
                "dram__bytes_write.sum": round((pred["sim_dram_wr_evicted_bytes"] or 0) * 0.9) if first else 0,
                "gpu__time_duration.sum": 1000,
            }}
            for name, v in values.items():
                unit = "nsecond" if name.startswith("gpu__") else "byte"
                rows.append(",".join('"%s"' % x for x in (kid, 1, "python", "host", "kernel(float)", 1, 7,
                            "(256, 1, 1)", str(tuple(g)), 0, "9.0", "Command line profiler metrics", name, unit,
                            "{{:,}}".format(v))))
            kid += 1
with open(log, "w") as f:
    f.write("\\n".join(rows) + "\\n")
print("fake ncu: profiled", kid, "kernels")
'''


def test_end_to_end_with_a_stand_in_ncu(ncu_check, tmp_path, capsys):
    fake = tmp_path / "ncu"
    fake.write_text(FAKE_NCU.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(fake), "--kinds", "flash2", "standard", "--n", "128", "--d", "16",
                         "--causal", "both", "--gpu", "h200", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    assert "not measured" not in stdout and "ncu_summary.csv" in stdout
    assert [ln for ln in stdout.splitlines() if ln.startswith("wrote ")][0].endswith("(ok)")
    assert stdout.rstrip().splitlines()[-1].startswith("verdicts: ")  # the summary comes last
    with open(out / "ncu_check.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["causal"]) for r in rows] == [("flash2", "0"), ("flash2", "1"), ("standard", "0"),
                                                         ("standard", "1")]
    for r in rows:
        assert r["status"] == "ok" and (r["direction"], r["build"]) == ("fwd", "plain")
        assert float(r["l1_ratio"]) == pytest.approx(1.01, abs=1e-4) and r["l1_within_2pct"] == "1"
        # the sector model is the simulator's bytes, but for standard's L (one sector for 4 bytes): at this
        # size that is 0.6-1.2% more, enough to take 1.01 past 2% of the bytes moved for causal standard
        assert float(r["global_ratio"]) == pytest.approx(1.01 * int(r["sim_l1_bytes"]) / int(r["sim_hbm_bytes"]),
                                                         abs=1e-4)
        assert (r["sim_l1_bytes"] == r["sim_hbm_bytes"]) == (r["kind"] == "flash2")
        within = abs(float(r["global_ratio"]) - 1) <= 0.02
        assert r["global_within_2pct"] == str(int(within)) and r["verdict"] == ("ok" if within else "explained")
        seconds = 1e-6 * (3 if r["kind"] == "standard" else 1)
        assert float(r["ncu_time_ms"]) == pytest.approx(1e3 * seconds)
        # the prediction: the model (dirty limit 24 MiB: nothing cleaned at this size) + 20 MB/s x the time
        assert float(r["background_dram_wr_bytes"]) == pytest.approx(2e7 * seconds)
        assert float(r["sim_dram_wr_cleaned_bytes"]) == 0
        pred = float(r["sim_dram_bytes"]) + 2e7 * seconds
        assert float(r["pred_dram_bytes"]) == pytest.approx(pred)
        measured = float(r["ncu_dram_rd_bytes"]) + float(r["ncu_dram_wr_bytes"])
        assert measured == pytest.approx(0.9 * float(r["sim_dram_bytes"]), abs=2)
        assert float(r["dram_ratio"]) == pytest.approx(measured / pred)
        assert r["dram_within_15pct"] == "1" and r["dram_target"] == "1"
        assert float(r["dram_ratio_plain"]) == pytest.approx(measured / float(r["sim_dram_plain_bytes"]))
    assert rows[2]["kernels"] == "3"
    prov = json.loads((out / "ncu_check.json").read_text())
    assert prov["child_environment"] == {"device": "fake"}
    assert prov["model"]["cold_launches"] is True and "--clock-control none" in prov["ncu_command"]
    assert len(prov["kernels"]) == 5 + 2 * 1 + 2 * 3  # the probes, then the configs
    cal = prov["model"]["calibration"]
    assert cal["source"] == "probes"
    assert cal["background_write_bytes_per_s"] == pytest.approx(2e7, rel=1e-6)
    assert cal["dirty_limit_bytes"] == pytest.approx(24 * 2**20, abs=32)
    assert all(r["dirty_limit_bytes"] == str(cal["dirty_limit_bytes"]) for r in rows)
    probes = (out / "ncu_probes.csv").read_text()
    assert "probe:spin:10000000" in probes and "probe:stream:128" in probes
    assert os.path.getsize(out / "ncu_check.png") > 0
    assert len(os.listdir(out)) <= 8  # what a device run may bring back
    header, summary = records.read_commented_csv(out / "ncu_summary.csv")
    assert list(summary[0]) == list(ncu_results.SUMMARY_COLUMNS) and len(summary) == 4
    assert header["gpu"].startswith("NVIDIA H200") and "targets" in header
    assert [r["verdict"] for r in summary] == [r["verdict"] for r in rows]
    assert prov["summary"][0]["kind"] == "flash2" and "launches" in prov["rows"][0]
    assert [x["phase"] for x in prov["rows"][2]["launches"]] == ["qk", "softmax", "pv"]


def test_end_to_end_backward_and_fast_builds(ncu_check, tmp_path, capsys):
    """--backward both --builds plain fast-fma fast-tf32x3: the forward's and the backward's plain rows, the
    forward's fast builds' rows (explained by their store patterns), the fast backward's row (explained by
    its cp.async copies)."""
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(_fake_ncu(tmp_path)), "--kinds", "flash2", "standard", "splitkv", "--n", "128",
                   "--d", "64", "--backward", "both", "--builds", "plain,fast-fma", "fast-tf32x3", "--gpu", "h200",
                   "--no-probes", "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    rows = _csv_rows(out)
    got = [(r["kind"], r["direction"], r["build"], r["status"].split(":")[0]) for r in rows]
    assert got == [("flash2", "fwd", "plain", "ok"), ("flash2", "fwd", "fast-fma", "ok"),
                   ("flash2", "fwd", "fast-tf32x3", "ok"), ("flash2", "bwd", "plain", "ok"),
                   ("flash2", "bwd", "fast-tf32x3", "ok"),
                   ("standard", "fwd", "plain", "ok"), ("standard", "bwd", "plain", "ok"),
                   ("splitkv", "fwd", "plain", "ok")]
    by = {(r["kind"], r["direction"], r["build"]): r for r in rows}
    for key in [("flash2", "fwd", "fast-fma"), ("flash2", "fwd", "fast-tf32x3"), ("flash2", "bwd", "plain"),
                ("standard", "bwd", "plain")]:
        r = by[key]  # ncu's bytes are the sector model's, well above the bytes moved: explained, not missed
        assert r["verdict"] == "explained" and r["global_within_2pct"] == "0" and r["l1_within_2pct"] == "1", key
        # a fast build's tiles are the plain build's
        assert r["sim_hbm_bytes"] == by[(key[0], key[1], "plain")]["sim_hbm_bytes"]
    assert "main: O st ×4.00, L st ×4.00" == by[("flash2", "fwd", "fast-fma")]["sector_note"]
    assert "main: Q ld ×2.00, K ld ×2.00, O st ×2.00" == by[("flash2", "fwd", "fast-tf32x3")]["sector_note"]
    assert by[("standard", "bwd", "plain")]["sector_note"] == ("d: O ld ×8.00, dO ld ×8.00; dv: dV st ×4.00; "
                                                               "dk: dK st ×4.00")
    assert by[("flash2", "bwd", "plain")]["kernels"] == "3" and by[("standard", "bwd", "plain")]["kernels"] == "6"
    fast_bwd = by[("flash2", "bwd", "fast-tf32x3")]  # the fast backward (kernels/backward_tc.py): measured
    assert fast_bwd["sim_hbm_bytes"] == by[("flash2", "bwd", "plain")]["sim_hbm_bytes"]  # the plain one's tiles
    assert fast_bwd["kernels"] == "3"
    # fp32 without a mask: its tiles copied by cp.async into two stages, which ncu counts at 9/8 of their
    # bytes (the rest whole sectors: d's loads, the gradients staged through SRAM)
    copies = ", ".join(f"{t} ld ×1.12" for t in ("Q", "K", "V", "dO"))
    assert fast_bwd["sector_note"] == f"dkdv: {copies}; dq: {copies}", fast_bwd
    assert fast_bwd["verdict"] == "explained" and fast_bwd["l1_within_2pct"] == "1", fast_bwd
    assert "skipped" not in stdout  # a (kind, direction, build) no kind offers is not a row at all
    assert "sectors: ncu's global bytes / the sector model" in stdout
    specs = json.loads((out / "ncu_check.json").read_text())["ncu_command"].split("--specs ")[1].split()
    assert "flash2:128:64:0:bwd:plain" in specs and "flash2:128:64:0:fwd:fast-tf32x3" in specs
    assert "flash2:128:64:0:bwd:fast-tf32x3" in specs and not any(s.endswith(":bwd:fast-fma") for s in specs)


def _running(pid):
    """Is ``pid`` a live process (a zombie waiting to be reaped counts as gone)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _script(path, body):
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IEXEC)
    return path


def test_a_saved_run_is_analysed_again_without_ncu(ncu_check, tmp_path, capsys, monkeypatch):
    """--from-raw: a measured run's ncu_raw.csv and manifest.jsonl give the same rows, with no profiler."""
    args = ["--kinds", "flash2", "--n", "128", "--d", "16", "--backward", "both", "--gpu", "h200"]
    assert ncu_main(["--ncu", str(_fake_ncu(tmp_path)), *args, "--out", str(tmp_path / "run")]) == 0
    monkeypatch.setattr(ncu_check, "NCU_SEARCH_GLOBS", ())
    monkeypatch.setenv("PATH", "")
    capsys.readouterr()
    assert ncu_main([*args, "--from-raw", str(tmp_path / "run"), "--out", str(tmp_path / "again")]) == 0
    assert "verdicts: " in capsys.readouterr().out
    first, again = _csv_rows(tmp_path / "run"), _csv_rows(tmp_path / "again")
    # the same rows, but for the seconds the simulator took
    assert len(first) == 2 and {k for a, b in zip(first, again) for k in a if a[k] != b[k]} <= {"sim_seconds"}
    saved, prov = (json.loads((tmp_path / d / "ncu_check.json").read_text()) for d in ("run", "again"))
    assert prov["reanalysed_from"] == str(tmp_path / "run") and prov["date"] == saved["date"]
    assert prov["ncu_command"] == saved["ncu_command"] and prov["model"]["gpu"] == saved["model"]["gpu"]
    assert ncu_main([*args, "--from-raw", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2


def test_a_hung_profiler_is_stopped_with_its_children(ncu_check, tmp_path):
    """After --timeout the whole process group goes (ncu and the child it started); results say so."""
    pid_file = tmp_path / "child.pid"
    fake = _script(tmp_path / "ncu", f'[ "$1" = "--version" ] && exit 0\nsleep 60 &\necho $! > {pid_file}\nwait\n')
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(fake), "--kinds", "flash2", "--n", "128", "--d", "16", "--timeout", "1",
                         "--gpu", "h200", "--out", str(out)])
    assert rc == 1
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 5
    while _running(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _running(pid)
    with open(out / "ncu_check.csv") as f:
        (row,) = list(csv.DictReader(f))
    assert row["status"] == "not measured" and row["sim_hbm_bytes"] != "" and row["global_ratio"] == ""
    assert "timed out" in json.loads((out / "ncu_check.json").read_text())["status"]


def test_a_refused_metric_is_retried_with_the_essential_ones(ncu_check, tmp_path, capsys):
    real = tmp_path / "real_ncu"
    real.write_text(FAKE_NCU.format(python=sys.executable))
    real.chmod(real.stat().st_mode | stat.S_IEXEC)
    # refuses launch__sm_count (an optional metric) and hangs, as ncu does while the app runs on
    fake = _script(tmp_path / "ncu", f'''log=""; prev=""
for a in "$@"; do [ "$prev" = "--log-file" ] && log="$a"; prev="$a"; done
case "$*" in *launch__sm_count*) echo "==ERROR== Failed to find metric launch__sm_count" > "$log"; sleep 60;; esac
exec {real} "$@"
''')
    out = tmp_path / "out"
    assert ncu_main(["--ncu", str(fake), "--kinds", "flash2", "--n", "128", "--d", "16", "--gpu", "h200",
                           "--out", str(out)]) == 0
    assert "retrying with the essential metrics" in capsys.readouterr().out
    log = (out / "ncu_child.log").read_text()
    assert "Failed to find metric" in log and "launch__sm_count" not in log.rsplit("$ ", 1)[1]
    with open(out / "ncu_check.csv") as f:
        assert [r["status"] for r in csv.DictReader(f)] == ["ok"]


def test_a_failing_config_does_not_lose_the_others(ncu_check, monkeypatch):
    def broken(cfg, args, gpu, kernels, calibration=None, build=None):
        raise RuntimeError("model failed")

    monkeypatch.setattr(ncu_results, "make_row", broken)
    args = parse_args(["--kinds", "flash2", "--n", "128", "--d", "16"])
    (cfg,) = ncu_check.configs_from_args(args)
    row = ncu_check.row_or_error(cfg, args, "h200", None)
    assert row["status"] == "error: RuntimeError: model failed" and row["kind"] == "flash2"
    assert "error" in ncu_results.summary([row])


def test_calibration_from_probes(ncu_check):
    """Background rate = spin writes / spin time (pooled); dirty limit = stream size - its writes net of background."""
    args = parse_args([])
    k = lambda wr, t: [ncu_results.KernelResult(0, "write_spin", (1, 1, 1), (256, 1, 1),  # noqa: E731
                                              {"dram_wr_bytes": wr, "time": t}, {})]
    mib = 2**20
    cal = ncu_results.calibrate({
        ncu_specs.Probe("spin", 10**7): k(2e6, 0.1),
        ncu_specs.Probe("spin", 4 * 10**7): k(6e6, 0.3),
        ncu_specs.Probe("stream", 64): k(40 * mib + 2e7 * 1e-4, 1e-4),
        ncu_specs.Probe("stream", 128): k(106 * mib + 2e7 * 1e-5, 1e-5),
        ncu_specs.Probe("rewrite", 5): k(9e9, 1.0),  # a check of the model, not part of the fit
    }, args)
    assert cal["source"] == "probes"
    assert cal["background_write_bytes_per_s"] == pytest.approx(8e6 / 0.4)
    assert cal["dirty_limit_bytes"] == 23 * mib  # mean of 24 and 22 MiB
    assert [p["probe"] for p in cal["probes"]] == ["probe:spin:10000000", "probe:spin:40000000", "probe:stream:64",
                                                   "probe:stream:128", "probe:rewrite:5"]
    assert cal["probes"][-1]["write_rate_bytes_per_s"] == 9e9
    # without probe results the arguments stand (both None by default: the plain model)
    none = ncu_results.calibrate({ncu_specs.Probe("spin", 10): None}, args)
    assert none["source"] == "arguments" and none["dirty_limit_bytes"] is None
    assert none["background_write_bytes_per_s"] is None
    assert ncu_specs.parse_spec("probe:stream:64") == ncu_specs.Probe("stream", 64)
    with pytest.raises(ValueError, match="unknown probe"):
        ncu_specs.parse_spec("probe:nap:3")


# -- configs not measured, bad configs, the machine modelled -------------------------------------
def _fake_ncu(tmp_path):
    fake = tmp_path / "ncu"
    fake.write_text(FAKE_NCU.format(python=sys.executable))
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    return fake


def _csv_rows(out):
    with open(out / "ncu_check.csv") as f:
        return list(csv.DictReader(f))


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
def test_nothing_measured_fails(ncu_check, tmp_path, capsys, strict):
    """ncu ran and exited 0 but profiled no kernel: every config unmeasured is a failure, never "(ok)"."""
    fake = _script(tmp_path / "ncu", 'echo "==PROF== Disconnected"\n')
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(fake), "--kinds", "flash2", "--n", "128", "--d", "16", "--gpu", "h200",
                         "--no-probes", "--out", str(out)] + (["--strict"] if strict else []))
    stdout = capsys.readouterr().out
    assert rc == 1
    assert "(ok)" not in stdout
    assert "1 of 1 configs were not measured" in stdout
    assert [r["status"] for r in _csv_rows(out)] == ["not measured"]
    assert json.loads((out / "ncu_check.json").read_text())["status"] == "1 of 1 configs not measured"


@pytest.mark.parametrize("strict", [False, True], ids=["plain", "strict"])
def test_a_config_not_measured_is_reported(ncu_check, tmp_path, capsys, monkeypatch, strict):
    """One config's kernel missing from ncu's results: a line says so; --strict exits 1, else 0 without "(ok)"."""
    parse = ncu_results.parse_ncu_csv
    monkeypatch.setattr(ncu_check, "parse_ncu_csv", lambda text: parse(text)[:-1])  # the last kernel is lost
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(_fake_ncu(tmp_path)), "--kinds", "flash2", "--n", "128", "--d", "16",
                         "--causal", "both", "--gpu", "h200", "--no-probes", "--out", str(out)]
                        + (["--strict"] if strict else []))
    stdout = capsys.readouterr().out
    assert rc == (1 if strict else 0)
    assert "not measured: flash2 N=128 d=16 causal (not measured)" in stdout
    assert "1 of 2 configs were not measured" in stdout and "(ok)" not in stdout
    assert [r["status"] for r in _csv_rows(out)] == ["ok", "not measured"]


@pytest.mark.parametrize("bad, message", [
    (["--kinds", "nosuch"], "argument --kinds: invalid choice: 'nosuch'"),
    (["--n", "0"], "config flash2 N=0 d=64: --n and --d must be positive"),
    (["--d", "512"], "config flash2 N=1024 d=512: head_dim=512 exceeds the largest supported head_dim"),
    (["--block-q", "0"], "--block-q: expected a positive number, got 0"),
    (["--block-q", "512", "--block-kv", "512"], "config flash2 N=1024 d=64: thread layout 128x128 = 16384 threads"),
    (["--block-q", "128", "--block-kv", "128", "--thread-q", "8", "--thread-kv", "8", "--d", "128"],
     "config flash2 N=1024 d=128: schedule flash2 Br=128 Bc=128 needs 263680 bytes of SRAM"),
    (["--kinds", "flash1", "--build", "fast"], "--build: no kind of --kinds offers the forward fast-fma build "
                                               "(kind 'flash1' has no fast-fma build)"),
    (["--kinds", "flash2", "standard", "--builds", "plain,fast-tf32x3", "--d", "60"],
     "config flash2 fast-tf32x3 N=1024 d=60: the build cannot run it: fast=True, but the fast build cannot run"),
    (["--builds", "fast-avx"], "--builds: unknown build 'fast-avx' (the builds: plain, fast-fma, fast-tf32x3, fast-f16)"),
    (["--kinds", "splitkv", "--backward", "yes"], "--backward: no kind of --kinds offers the backward plain build "
                                                  "(kind 'splitkv' has no backward pass)"),
    (["--backward", "yes", "--builds", "fast-fma"], "--builds: no kind of --kinds offers the backward fast-fma build "
                                                    "(kind 'flash2' has no fast-fma backward)"),
    (["--backward", "yes", "--d", "256", "--block-q", "128", "--block-kv", "128", "--thread-q", "8", "--thread-kv", "8"],
     "config flash2 backward N=1024 d=256: schedule flash2 Br=128 Bc=128 needs 590848 bytes of SRAM for the "
     "backward pass"),
    (["--batch", "300", "--heads", "300"], "--batch x --heads = 90000: a grid dimension holds at most 65535"),
    (["--timeout", "0"], "--timeout: expected a positive number of seconds"),
    (["--gpu", "a100"], "argument --gpu: invalid choice: 'a100'"),
    (["--mask", "window:3"], "argument --mask: mask spec 'window:3': unknown mask 'window'; expected one of "
                             "sliding_window:W, prefix_lm:P, document:L1,L2,..., block_sparse:DENSITY[:SEED]"),
    (["--mask", "block_sparse:0.5", "--n", "16384"], "config flash2 N=16384 d=64 mask=block_sparse:0.5: layout: "
                                                     "65536 bytes"),
    (["--mask", "sliding_window:64", "--builds", "fast-fma"], "config flash2 fast-fma N=1024 d=64 "
                                                             "mask=sliding_window:64: the build cannot run it"),
])
def test_dry_run_validates_the_configs(ncu_check, tmp_path, capsys, bad, message):
    out = tmp_path / "out"
    argv = ["--dry-run", "--kinds", "flash2", "--n", "1024", "--d", "64", "--out", str(out)] + bad
    try:
        code = ncu_main(argv)
    except SystemExit as e:  # argparse's own checks
        code = e.code
    captured = capsys.readouterr()
    assert code == 2 and captured.out == ""
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists()


def test_the_l2_model_is_the_devices(ncu_check, tmp_path, capsys, monkeypatch):
    """The device query's facts (an H200: 60 MiB of L2) reach the model, not an H100's 50 MiB."""
    from sandbox.lab import info
    from sandbox.vocabulary.gpus import KNOWN_GPUS

    device = dataclasses.replace(KNOWN_GPUS["h200"], name="NVIDIA H200", sms=100, source="read from the device")
    monkeypatch.setattr(info, "device_facts", lambda: device)
    out = tmp_path / "out"
    assert ncu_main(["--ncu", str(_fake_ncu(tmp_path)), "--kinds", "flash2", "--n", "128", "--d", "16",
                           "--no-probes", "--out", str(out)]) == 0, capsys.readouterr()
    model = json.loads((out / "ncu_check.json").read_text())["model"]
    assert model["l2_bytes"] == 62_914_560 and model["sms_default"] == 100
    assert model["gpu"]["name"] == "NVIDIA H200" and model["gpu"]["source"] == "read from the device"
    args = parse_args(["--l2-bytes", "4096"])
    assert ncu_check.model_gpu(args).l2_bytes == 4096 and ncu_check.model_gpu(args).sms == 100


def test_without_a_device_the_machine_must_be_named(ncu_check, tmp_path, capsys, monkeypatch):
    from sandbox.lab import info

    monkeypatch.setattr(info, "device_facts", lambda: None)  # the CUDA simulator: nothing to read
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(_fake_ncu(tmp_path)), "--kinds", "flash2", "--n", "128", "--d", "16",
                         "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "--gpu h100|h200" in err[0]
    assert not out.exists()
    assert ncu_check.model_gpu(parse_args(["--gpu", "h100"])).l2_bytes == 50 * 2**20


def test_the_cli_and_the_script_are_ways_in(tmp_path, capsys):
    """``python -m sandbox ncu`` hands its arguments to the check; scripts/ncu_check.py calls ncu_main."""
    from sandbox.cli import main as cli_main

    out = tmp_path / "out"
    assert cli_main(["ncu", "--dry-run", "--kinds", "flash2", "--n", "128", "--d", "16", "--no-probes",
                     "--out", str(out)]) == 0
    (line,) = capsys.readouterr().out.strip().splitlines()
    assert line.startswith("ncu ") and line.endswith("--specs flash2:128:16:0")
    assert cli_main(["ncu", "--dry-run", "--n", "0"]) == 2
    assert capsys.readouterr().err.strip() == "ncu check: config standard N=0 d=64: --n and --d must be positive"
    assert ncu_main(["--dry-run", "--block-kv", "0"], prog="python scripts/ncu_check.py") == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.strip() == "ncu check: --block-kv: expected a positive number, got 0"
    assert ncu_main(["--bogus"], prog="python scripts/ncu_check.py") == 2
    assert capsys.readouterr().err.startswith("python scripts/ncu_check.py: error:")


def test_the_ncu_subcommand_speaks_with_the_clis_name(capsys):
    """``attention-sandbox ncu`` errors and help carry that name, as one line and exit 2 (or 0)."""
    from sandbox.cli import main

    assert main(["ncu", "--bogus"], prog="attention-sandbox") == 2
    err = capsys.readouterr().err
    assert err.startswith("attention-sandbox ncu: error:") and err.count("\n") == 1
    assert main(["ncu", "--help"], prog="attention-sandbox") == 0
    assert capsys.readouterr().out.startswith("usage: attention-sandbox ncu")


# -- rows of every direction and build: specs, the child's run path, the backward's hook, verdicts --------
def test_specs_name_the_direction_and_the_build():
    Config = ncu_specs.Config
    plain = Config("flash2", 1024, 64, True)
    assert plain.spec() == "flash2:1024:64:1" and plain.label() == "flash2 N=1024 d=64 causal"  # today's form
    for cfg in [Config("standard", 4096, 128, False, "bwd", "plain"), Config("flash2", 1024, 64, True, "fwd", "fast-fma"),
                Config("flash2", 64, 8, False, "bwd", "fast-tf32x3")]:
        assert ncu_specs.parse_spec(cfg.spec()) == cfg
    bwd = Config("standard", 4096, 128, False, "bwd", "plain")
    assert bwd.spec() == "standard:4096:128:0:bwd:plain" and bwd.label() == "standard backward N=4096 d=128"
    tc = Config("flash2", 1024, 64, False, "fwd", "fast-tf32x3")
    assert tc.math == "tf32x3" and not tc.backward and plain.math is None
    assert tc.label() == "flash2 fast-tf32x3 N=1024 d=64"
    for bad in ["flash2:1024:64:0:sideways:plain", "flash2:1024:64:0:fwd:fast-avx", "flash2:1024:64:0:bwd"]:
        with pytest.raises(ValueError, match="expected kind:N:d:causal"):
            ncu_specs.parse_spec(bad)
    args = parse_args(["--block-q", "64", "--block-kv", "32"])
    schedule = ncu_specs.make_schedule(tc, args)  # the tensor cores' thread tile, whatever --thread-q says
    assert (schedule.math, schedule.thread_q, schedule.thread_kv) == ("tf32x3", 2, 8)
    fma = ncu_specs.make_schedule(Config("flash2", 1024, 64, False, "fwd", "fast-fma"), args)
    assert (fma.math, fma.thread_q, fma.thread_kv) == ("fma", 4, 4)
    assert [p for p, _, _ in ncu_specs.launches(bwd, args)] == ["d", "p", "ds", "dv", "dk", "dq"]
    assert ncu_specs.expected_grids(bwd, args) == [(64, 1, 1), (128, 64, 1), (128, 64, 1), (128, 1, 1),
                                                   (128, 1, 1), (64, 1, 1)]


def test_rows_asked_for(ncu_check):
    """--backward and --builds give one row per (kind, direction, build) the kinds offer; --build stays."""
    args = parse_args(["--kinds", "standard", "flash1", "flash2", "splitkv", "--n", "1024", "--d", "64",
                       "--backward", "both", "--builds", "plain,fast-fma", "fast-tf32x3", "fast-fma"])
    got = [(c.kind, c.direction, c.build) for c in ncu_check.configs_from_args(args)]
    backward = [(k, "bwd", "plain") for k in ("standard", "flash1", "flash2")] + [("flash2", "bwd", "fast-tf32x3")]
    assert sorted(got) == sorted([(k, "fwd", "plain") for k in ("standard", "flash1", "flash2", "splitkv")]
                                 + [("flash2", "fwd", "fast-fma"), ("flash2", "fwd", "fast-tf32x3")] + backward)
    assert ncu_check.validate(ncu_check.configs_from_args(args), args) == {}
    assert ncu_check.builds_from_args(parse_args(["--build", "fast"])) == ["fast-fma"]
    assert ncu_check.builds_from_args(parse_args([])) == ["plain"]
    default = ncu_check.configs_from_args(parse_args([]))  # today's default: the forward's plain kernels
    assert {(c.direction, c.build) for c in default} == {("fwd", "plain")} and len(default) == 4 * 3 * 2


def test_dry_run_of_the_backward(ncu_check, monkeypatch, capsys, tmp_path):
    monkeypatch.setattr(shutil, "which", lambda *a, **k: None)
    monkeypatch.setattr(ncu_check, "NCU_SEARCH_GLOBS", ())
    assert ncu_main(["--dry-run", "--kinds", "flash2", "--n", "1024", "--d", "64", "--no-probes", "--backward", "both",
                     "--builds", "plain", "fast-fma", "--out", str(tmp_path)]) == 0
    captured = capsys.readouterr()
    (line,) = captured.out.strip().splitlines()
    assert line.endswith("--specs flash2:1024:64:0 flash2:1024:64:0:fwd:fast-fma flash2:1024:64:0:bwd:plain")
    assert captured.err.strip() == ""  # flash2 has no fast-fma backward: not a row


#: Small enough for Numba's CUDA simulator: 16×32 blocks, TX = 16 threads along a row, 64 threads.
SMALL = argparse.Namespace(batch=1, heads=1, dtype="float32", block_q=16, block_kv=32, thread_q=4, thread_kv=2,
                           kv_splits=1, seed=0)


def _inputs_of(cfg, count, seed=0):
    """The host inputs run_config draws for ``cfg`` (after the small problem's, which compiles)."""
    from sandbox.vocabulary.problem import Problem

    rng = np.random.default_rng(seed)
    schedule = ncu_specs.make_schedule(cfg, SMALL)
    m = 2 * max(schedule.block_q, schedule.block_kv)
    small = Problem(1, 1, m, m, cfg.d)
    for p in (small, ncu_specs.make_problem(cfg, SMALL)):
        host = [rng.standard_normal((p.batch, p.heads, p.n_q, p.head_dim), dtype=np.float32) for _ in range(count)]
    return host


@pytest.mark.parametrize("kind", ["flash2", "standard"])
def test_the_child_runs_a_backward_row(kind):
    """run_config, as the profiled child runs it (without the profiler): the backward's kernels launch and
    return dQ, dK, dV, which are the float64 reference's gradients."""
    from sandbox.lab import ncu_child
    from sandbox.vocabulary.reference import reference_attention_backward

    cfg = ncu_specs.Config(kind, 48, 16, True, "bwd", "plain")
    measured = []
    arrays, chosen = ncu_child.run_config(cfg, SMALL, np.random.default_rng(0), lambda: _once(measured))
    assert chosen.name == "plain" and measured == [1]  # one measured call, the problem's own
    dq, dk, dv = (x.copy_to_host() for x in arrays)
    q, k, v, dout = _inputs_of(cfg, 4)
    want = reference_attention_backward(q, k, v, dout, causal=True)
    for got, ref in zip((dq, dk, dv), want):
        assert got.shape == (1, 1, 48, 16)
        np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("build", ["fast-fma", "fast-tf32x3"])
def test_the_child_runs_a_fast_build(build):
    """A fast build's row runs kernels.builds.choose_build(fast=True)'s build and returns O and L."""
    from sandbox.lab import ncu_child
    from sandbox.vocabulary.reference import reference_attention

    cfg = ncu_specs.Config("flash2", 48, 16, False, "fwd", build)
    arrays, chosen = ncu_child.run_config(cfg, SMALL, np.random.default_rng(0))
    assert chosen.name == build and chosen.fast
    out, lse = (x.copy_to_host() for x in arrays)
    q, k, v = _inputs_of(cfg, 3)
    ref_out, ref_lse = reference_attention(q, k, v, return_lse=True)
    assert out.shape == (1, 1, 48, 16) and lse.shape == (1, 1, 48)
    np.testing.assert_allclose(out, ref_out, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(lse, ref_lse, rtol=1e-4, atol=1e-4)


@contextlib.contextmanager
def _once(calls):
    calls.append(1)
    yield


def test_a_fast_backward_row(ncu_check, monkeypatch):
    """A "bwd" fast-tf32x3 row runs kernels.builds.choose_backward_build(fast=True)'s build, handed to
    kernels.launch.run_backward; a head_dim it cannot run is skipped with the chooser's reason."""
    from sandbox.lab import ncu_child

    args = parse_args(["--kinds", "flash2", "--n", "128", "--d", "64", "60", "--backward", "yes",
                       "--builds", "fast-tf32x3"])
    configs = ncu_check.configs_from_args(args)
    skipped = ncu_check.validate(configs, args)
    (cfg, why), = skipped.items()
    assert cfg.d == 60 and why.endswith("head_dim=60 (needs a multiple of 8)")

    calls = []
    monkeypatch.setattr(ncu_child, "run_backward", lambda *a, **kw: calls.append(kw) or ("dq", "dk", "dv", None))
    monkeypatch.setattr(ncu_child, "run", lambda *a, **kw: ("out", "lse", None, None))
    monkeypatch.setattr(ncu_child, "device_inputs", lambda problem, rng, count: [None] * count)
    arrays, ran = ncu_child.run_config(configs[0], SMALL, np.random.default_rng(0))
    assert ran.name == "fast-tf32x3" and arrays == ("dq", "dk", "dv")
    assert [kw["chosen"].name for kw in calls] == ["fast-tf32x3"] * 2  # the small problem (compiling), then the measured one


def _kernel(kid, grid, **metrics):
    return ncu_results.KernelResult(kid, "kernel", grid, (256, 1, 1), metrics, {})


def _measured_row(cfg, scale_global, scale_dram, per_phase=False):
    """make_row with made-up counters: ncu's global bytes = the sector model's × scale_global (all on the
    first kernel), DRAM = the prediction × scale_dram, at 1 ms a kernel and no background writes."""
    args = parse_args(["--no-probes"])
    pred = ncu_results.predict(cfg, args, "h200")
    grids = ncu_specs.expected_grids(cfg, args)
    kernels = []
    for i, (g, launch) in enumerate(zip(grids, pred["launches"])):
        if per_phase:
            ld, st, dram = launch["sim_l1_ld_bytes"], launch["sim_l1_st_bytes"], launch["sim_dram_bytes"]
        else:
            ld, st, dram = ((pred["sim_l1_ld_bytes"], pred["sim_l1_st_bytes"], pred["sim_dram_bytes"]) if i == 0
                            else (0, 0, 0))
        kernels.append(_kernel(i, g, global_ld_bytes=ld * scale_global, global_st_bytes=st * scale_global,
                               dram_rd_bytes=dram * scale_dram, dram_wr_bytes=0, time=1e-3))
    return ncu_results.make_row(cfg, args, "h200", kernels, build=cfg.build)


def test_verdicts_from_made_up_counters():
    """The verdict follows the counters: ok, explained by the sectors, or missed; DRAM held for the target kinds."""
    Config = ncu_specs.Config
    fma = Config("flash2", 256, 64, False, "fwd", "fast-fma")
    row = _measured_row(fma, 1.0, 1.0)
    assert row["sim_l1_st_bytes"] > 3 * row["sim_hbm_write_bytes"]  # O stored in 4× its sectors
    assert (row["global_verdict"], row["dram_verdict"], row["verdict"]) == ("explained", "ok", "explained")
    assert row["l1_ratio"] == pytest.approx(1) and row["global_ratio"] > 1.02
    # the bytes moved, not the sectors: the store pattern the model predicts did not happen -> a miss
    hbm_only = row["sim_hbm_bytes"] / row["sim_l1_bytes"]
    assert _measured_row(fma, hbm_only, 1.0)["verdict"] == "miss (global)"
    plain = Config("flash2", 256, 64, False)
    assert _measured_row(plain, 1.019, 0.86)["verdict"] == "ok"
    assert _measured_row(plain, 1.03, 1.0)["verdict"] == "miss (global)"
    assert _measured_row(plain, 1.0, 1.2)["verdict"] == "miss (DRAM)"
    assert _measured_row(plain, 0.9, 0.5)["verdict"] == "miss (global, DRAM)"
    # splitkv's DRAM is reported, not held to the target
    split = _measured_row(Config("splitkv", 256, 64, False), 1.0, 1.5)
    assert (split["dram_verdict"], split["verdict"]) == ("reported", "ok")
    # the backward: d's rows and the transposed dK, dV stores; kernel by kernel in the row's launches
    bwd = _measured_row(Config("standard", 256, 64, True, "bwd", "plain"), 1.0, 1.0, per_phase=True)
    assert bwd["verdict"] == "explained"
    launches = {x["phase"]: x for x in bwd["launches"]}
    assert list(launches) == ["d", "p", "ds", "dv", "dk", "dq"]
    assert launches["d"]["sim_l1_ld_bytes"] == 8 * 2 * 256 * 64 * 4 and launches["d"]["sectors"] == {"O ld": 8, "dO ld": 8}
    assert all(x["l1_ratio"] == pytest.approx(1) and x["dram_ratio"] == pytest.approx(1) for x in bwd["launches"])
    assert launches["p"]["global_ratio"] == pytest.approx(1) and launches["dv"]["l1_st_ratio"] == pytest.approx(1)
    # a child that ran another build than the row's: an error, not a measurement
    args = parse_args(["--no-probes"])
    wrong = ncu_results.make_row(plain, args, "h200", [_kernel(0, (4, 1, 1), global_ld_bytes=1, global_st_bytes=1)],
                                 build="fast-fma")
    assert wrong["verdict"] == "error: the child ran build 'fast-fma'"
    # and the verdict of rows without a measurement is their status
    assert ncu_results.verdicts({"status": "not measured"})["verdict"] == "not measured"
    assert ncu_results.verdicts({"status": "ok", "global_ratio": None})["verdict"] == "not measured"


# -- a mask on every row: its spec, the child's mask=, the simulator's bytes under it, DRAM reported ------------
def test_specs_carry_the_mask():
    """A mask's spec rides last in the config's, colons and all; the spec strings without one are as before."""
    Config = ncu_specs.Config
    for spec, cfg in [("flash2:1024:64:1", Config("flash2", 1024, 64, True)),
                      ("standard:4096:128:0:bwd:plain", Config("standard", 4096, 128, False, "bwd", "plain"))]:
        assert ncu_specs.parse_spec(spec) == cfg and cfg.spec() == spec and cfg.mask == ""
    masked = [Config("flash2", 1024, 64, True, "fwd", "plain", "sliding_window:256"),
              Config("flash2", 4096, 64, False, "bwd", "fast-tf32x3", "block_sparse:0.5:7"),
              Config("standard", 4096, 64, True, "bwd", "plain", "document:1000,3096")]
    for cfg in masked:
        assert ncu_specs.parse_spec(cfg.spec()) == cfg
    assert masked[0].spec() == "flash2:1024:64:1:fwd:plain:sliding_window:256"
    assert masked[1].spec() == "flash2:4096:64:0:bwd:fast-tf32x3:block_sparse:0.5:7"
    assert masked[2].label() == "standard backward N=4096 d=64 causal mask=document:1000,3096"
    with pytest.raises(ValueError, match="mask spec 'window:3': unknown mask 'window'; expected one of"):
        ncu_specs.parse_spec("flash2:1024:64:0:fwd:plain:window:3")
    args = parse_args(["--kinds", "flash2", "--n", "256", "--mask", "prefix_lm:64", "--backward", "both"])
    assert {c.mask for c in ncu.configs_from_args(args)} == {"prefix_lm:64"}
    assert {c.mask for c in ncu.configs_from_args(parse_args([]))} == {""}
    several = ncu.configs_from_args(parse_args(["--kinds", "flash2", "--n", "256", "--d", "64", "--mask", "none",
                                                "sliding_window:8", "document:100,156", "none"]))
    assert [c.mask for c in several] == ["", "sliding_window:8", "document:100,156"]  # each row once
    mask = ncu_specs.make_mask(masked[1], parse_args(["--block-q", "64", "--block-kv", "32"]))
    assert mask.name == "blocksparse0.50" and ncu_specs.make_mask(Config("flash2", 64, 8, False), SMALL) is None


@pytest.mark.parametrize("kind, direction", [("flash2", "fwd"), ("flash2", "bwd"), ("standard", "bwd")])
def test_a_masked_rows_simulator_bytes(kind, direction):
    """A masked row's bytes are simulate(..., mask=m)'s (a sliding window skips tiles: fewer than without it);
    its sector model adds the same extra sectors as without the mask (d's rows and the dK, dV stores move every
    row whatever the mask); the L2 model predicts nothing for it."""
    from sandbox import simulate

    args = parse_args(["--no-probes"])
    cfg = ncu_specs.Config(kind, 512, 64, True, direction, "plain", "sliding_window:64")
    masked, free = (ncu_results.predict(c, args, "h200") for c in (cfg, dataclasses.replace(cfg, mask="")))
    schedule, problem = ncu_specs.make_schedule(cfg, args), ncu_specs.make_problem(cfg, args)
    m = ncu_specs.make_mask(cfg, args)
    assert masked["sim_hbm_bytes"] == simulate(schedule, problem, mask=m, backward=cfg.backward).hbm_bytes
    assert masked["sim_hbm_bytes"] < free["sim_hbm_bytes"]
    assert masked["sim_l1_bytes"] - masked["sim_hbm_bytes"] == free["sim_l1_bytes"] - free["sim_hbm_bytes"]
    assert masked["sector_note"] == free["sector_note"]
    assert masked["sim_dram_bytes"] is None and masked["sim_dram_plain_bytes"] is None
    assert [x["phase"] for x in masked["launches"]] == [x["phase"] for x in free["launches"]]
    assert ("their allowed entries only" in masked["sector_caveats"]) == (kind == "standard")  # S, P, dS tiles


def test_a_masked_rows_verdict():
    """Global bytes held to 2% of the simulator's bytes under the mask (and of its sector model); DRAM reported."""
    args = parse_args(["--no-probes"])
    cfg = ncu_specs.Config("flash2", 256, 64, False, "bwd", "plain", "document:100,156")
    pred = ncu_results.predict(cfg, args, "h200")
    grids = ncu_specs.expected_grids(cfg, args)
    kernels = [_kernel(i, g, global_ld_bytes=pred["sim_l1_ld_bytes"] if i == 0 else 0,
                       global_st_bytes=pred["sim_l1_st_bytes"] if i == 0 else 0, dram_rd_bytes=5e5, dram_wr_bytes=0,
                       time=1e-3) for i, g in enumerate(grids)]
    row = ncu_results.make_row(cfg, args, "h200", kernels, build="plain")
    assert (row["global_verdict"], row["dram_verdict"], row["verdict"]) == ("explained", "reported", "explained")
    assert row["mask"] == "document:100,156" and row["dram_target"] == 0 and row["pred_dram_bytes"] is None
    assert row["ncu_dram_bytes"] == 3 * 5e5 and row["dram_ratio"] is None
    assert all(x["global_ratio"] is None and x["pred_dram_bytes"] is None for x in row["launches"])
    table = ncu_results.summary([row])
    assert "flash2 N=256 d=64 mask=document:100,156" in table and "DRAM of the 1 masked row(s) reported" in table


def test_the_child_hands_the_mask_to_the_kernels(monkeypatch):
    """run_config builds the Mask once and passes it (the same object: one compile) to every run it makes."""
    from sandbox.lab import ncu_child
    from sandbox.vocabulary.masks import Mask

    calls = []
    monkeypatch.setattr(ncu_child, "run_backward",
                        lambda *a, **kw: calls.append(("bwd", kw)) or ("dq", "dk", "dv", None))
    monkeypatch.setattr(ncu_child, "run", lambda *a, **kw: calls.append(("fwd", kw)) or ("out", "lse", None, None))
    monkeypatch.setattr(ncu_child, "device_inputs", lambda problem, rng, count: [None] * count)
    for direction in ("fwd", "bwd"):
        cfg = ncu_specs.Config("flash2", 64, 16, True, direction, "plain", "sliding_window:8")
        ncu_child.run_config(cfg, SMALL, np.random.default_rng(0))
    assert [d for d, _ in calls] == ["fwd", "fwd", "fwd", "bwd", "fwd", "bwd"]  # (small, measured) per row
    (mask,) = {id(kw["mask"]) for _, kw in calls}
    assert isinstance(calls[0][1]["mask"], Mask) and calls[0][1]["mask"].name == "window8"


def test_end_to_end_with_a_mask(ncu_check, tmp_path, capsys):
    """--mask on the forward and the backward: each row carries the spec, is held to the simulator's bytes under
    the mask (ok, or explained by d's rows and the dK, dV stores), and its DRAM is reported."""
    out = tmp_path / "out"
    rc = ncu_main(["--ncu", str(_fake_ncu(tmp_path)), "--kinds", "flash2", "--n", "256", "--d", "16", "--causal",
                   "yes", "--backward", "both", "--mask", "sliding_window:32", "--gpu", "h200", "--no-probes",
                   "--out", str(out)])
    stdout = capsys.readouterr().out
    assert rc == 0, stdout
    rows = _csv_rows(out)
    assert [(r["direction"], r["mask"], r["verdict"], r["dram_verdict"]) for r in rows] == [
        ("fwd", "sliding_window:32", "ok", "reported"), ("bwd", "sliding_window:32", "explained", "reported")]
    assert all(r["pred_dram_bytes"] == "" and r["ncu_dram_bytes"] != "" for r in rows)
    _, summary = records.read_commented_csv(out / "ncu_summary.csv")
    assert [r["mask"] for r in summary] == ["sliding_window:32"] * 2
    assert "flash2 N=256 d=16 causal mask=sliding_window:32" in stdout
    specs = json.loads((out / "ncu_check.json").read_text())["ncu_command"].split("--specs ")[1].split()
    assert specs == ["flash2:256:16:1:fwd:plain:sliding_window:32", "flash2:256:16:1:bwd:plain:sliding_window:32"]
