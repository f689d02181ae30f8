"""The README's main job: every experiment's sweep and figure, and a kernel check against NumPy."""

import os

from sandbox.lab.experiments import EXPERIMENTS
from sandbox.lab.plots import PLOTS
from sandbox.lab.records import atomic_write_json
from sandbox.lab.sweep import PAPER_KINDS
from sandbox.lab.verify import check_against_reference
from sandbox.vocabulary.problem import Problem
from sandbox.vocabulary.schedule import Schedule


def run_demo(out_dir, progress=None, argv=None, jobs=1):
    """Sweeps (simulator; on a GPU also kernel timings), figures, and a small kernel check.

    Args:
        out_dir: folder for ``data/`` (CSV + JSON per experiment), ``figures/`` (PNG + SVG) and
            ``kernel_check.json``.
        progress: iterable wrapper for progress bars, or None.
        jobs: processes for the experiments that split their points over several (gqa_l2's L2
            model); a script that calls this from its top level, with no
            ``if __name__ == "__main__":`` guard, can only take one.

    Returns:
        dict: "data" and "figures" (paths), "kernel_check" (per kind: errors, agreement).
    """
    data_dir, fig_dir = os.path.join(out_dir, "data"), os.path.join(out_dir, "figures")
    os.makedirs(data_dir, exist_ok=True)
    os.makedirs(fig_dir, exist_ok=True)
    result = {"data": [], "figures": [], "kernel_check": {}}
    for name, exp in EXPERIMENTS.items():
        csv_path = os.path.join(data_dir, f"{name}.csv")
        exp.run(csv_path, progress=progress, argv=argv, jobs=jobs)
        json_path = os.path.splitext(csv_path)[0] + ".json"
        prov, rows = exp.load(json_path)
        result["data"] += [csv_path, json_path]
        result["figures"] += PLOTS[name](rows, prov, fig_dir)
    # a small problem through all three kernels (the CUDA simulator without a GPU), against NumPy
    problem = Problem(batch=1, heads=2, n_q=19, n_kv=23, head_dim=8, causal=True)
    for kind in PAPER_KINDS:
        res = check_against_reference(Schedule(kind, block_q=8, block_kv=8, thread_q=2, thread_kv=2), problem)
        result["kernel_check"][kind] = {
            "max_abs_error": res["max_abs_error"],
            "max_abs_error_lse": res["max_abs_error_lse"],
            "counts_agree": res["counts_agree"],
        }
    check_path = os.path.join(out_dir, "kernel_check.json")
    atomic_write_json(check_path, {"problem": str(problem), "kinds": result["kernel_check"]}, indent=1)
    result["data"].append(check_path)
    return result
