"""The ncu check (sandbox.lab.ncu, its child and specs, and its way in, ``python -m sandbox ncu``) without a GPU: ncu's CSV, units, kernels summed per config, no-ncu exit, dry run,
exit statuses, config checks, the machine modelled, and the whole parent pipeline against a stand-in ncu that
writes what a real one would."""

import csv
import dataclasses
import json
import os
import shutil
import stat
import sys
import textwrap
import time

import pytest

from sandbox.cli import ncu_main, ncu_parser
from sandbox.lab import ncu, ncu_results, ncu_specs


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
with measured = simulated x 1.01 (global) and x 0.9 (DRAM) on each config's first kernel; the
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
        man.write(json.dumps({{"spec": s, "phases": [], "kernels": len(grids)}}) + "\\n")
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
        for n, g in enumerate(grids):
            first = n == 0
            values = {{
                "l1tex__t_bytes_pipe_lsu_mem_global_op_ld.sum": round(pred["sim_hbm_read_bytes"] * 1.01) if first else 0,
                "l1tex__t_bytes_pipe_lsu_mem_global_op_st.sum": round(pred["sim_hbm_write_bytes"] * 1.01) if first else 0,
                "dram__bytes_read.sum": round(pred["sim_dram_rd_bytes"] * 0.9) if first else 0,
                "dram__bytes_write.sum": round(pred["sim_dram_wr_evicted_bytes"] * 0.9) if first else 0,
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
    assert "not measured" not in stdout and stdout.rstrip().endswith("(ok)")
    with open(out / "ncu_check.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(r["kind"], r["causal"]) for r in rows] == [("flash2", "0"), ("flash2", "1"), ("standard", "0"),
                                                         ("standard", "1")]
    for r in rows:
        assert r["status"] == "ok"
        assert float(r["global_ratio"]) == pytest.approx(1.01, abs=1e-4)
        assert r["global_within_2pct"] == "1"
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
    (["--kinds", "flash1", "--build", "fast"], "config flash1 N=1024 d=64: --build fast cannot run it: kind 'flash1' "
                                               "has no fast build"),
    (["--batch", "300", "--heads", "300"], "--batch x --heads = 90000: a grid dimension holds at most 65535"),
    (["--timeout", "0"], "--timeout: expected a positive number of seconds"),
    (["--gpu", "a100"], "argument --gpu: invalid choice: 'a100'"),
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
