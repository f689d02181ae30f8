"""Installing and importing: every package ships and runs from any directory.

Checks that need a clean interpreter (sys.path, an install without the source tree)
run in a subprocess.
"""

import configparser
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import pytest

from sandbox.runtime import SIM_ENV

ROOT = pathlib.Path(__file__).resolve().parents[2]
DISTRIBUTION = "attention-io-sandbox"
SIBLING_PACKAGES = ("kernels", "simulator")  # top-level names that other distributions use too
TOP_LEVEL = ("sandbox", *SIBLING_PACKAGES)


def _python(code, cwd, pythonpath=(), env=None, timeout=300):
    """Run ``code`` in a fresh interpreter in ``cwd`` with only ``pythonpath`` added to sys.path."""
    env = {**os.environ, **(env or {})}
    env.pop("PYTHONPATH", None)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(str(p) for p in pythonpath)
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout)


def _source_packages():
    """Every folder of Python files under the top-level packages, as dotted names."""
    found = set()
    for top in TOP_LEVEL:
        for path in (ROOT / top).rglob("*.py"):
            found.add(".".join(path.parent.relative_to(ROOT).parts))
    return found


# -- every package ships ---------------------------------------------------------------------------

def test_every_package_folder_has_an_init():
    missing = sorted(p for p in _source_packages() if not (ROOT / p.replace(".", "/") / "__init__.py").is_file())
    assert not missing, f"folders without __init__.py are left out of the install: {missing}"


def test_packaging_config_finds_every_package():
    setuptools = pytest.importorskip("setuptools")  # (the "test" extra installs it)
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert cfg["options"]["packages"].strip() == "find:"
    include = cfg["options.packages.find"]["include"].split()
    shipped = set(setuptools.find_packages(where=str(ROOT), include=include))
    assert _source_packages() <= shipped
    assert shipped <= _source_packages()  # and nothing else (tests, scripts, docs)


def test_built_package_runs_from_another_directory(tmp_path):
    """What a wheel holds (setuptools' build_py of a copy of the project), imported with nothing else."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for top in TOP_LEVEL:
        shutil.copytree(ROOT / top, src / top, ignore=shutil.ignore_patterns("__pycache__"))
    build = tmp_path / "build"
    res = _python(f"import setuptools, sys; sys.argv = ['setup.py', '-q', 'build_py', '-d', {str(build)!r}]; "
                  "setuptools.setup()", cwd=src)
    assert res.returncode == 0, res.stderr
    for top in TOP_LEVEL:
        assert {p.name for p in (ROOT / top).glob("*.py")} <= {p.name for p in (build / top).glob("*.py")}, top

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    res = _python("""
        import numpy as np
        import kernels, simulator, sandbox
        from sandbox import Problem, Schedule, attention, reference_attention, simulate
        print(sandbox.__file__, kernels.__file__, simulator.__file__, sep="\\n")
        q = np.random.default_rng(0).standard_normal((1, 1, 8, 16)).astype("float32")
        s = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
        out, measured = attention(q, q, q, schedule=s, count_io=True)
        assert np.abs(out - reference_attention(q, q, q)).max() < 1e-4
        assert measured == simulate(s, Problem(1, 1, 8, 8, 16))
    """, cwd=elsewhere, pythonpath=[build], env={SIM_ENV: "1"})
    assert res.returncode == 0, res.stderr
    for line in res.stdout.split():
        assert pathlib.Path(line).is_relative_to(build), line
