"""Installing and importing: every package ships, foreign packages of the same names are refused,
the backend choice holds whatever the import order, and device arrays go in and come out as they are.

Checks that need a clean interpreter (import order, sys.path, an install without the source tree)
run in a subprocess.
"""

import configparser
import os
import pathlib
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from sandbox import Schedule, attention, attention_backward, reference_attention
from sandbox.vocabulary.runtime import SIM_ENV, gpu_present, using_simulator

ROOT = pathlib.Path(__file__).resolve().parents[2]
DISTRIBUTION = "attention-io-sandbox"
SIBLING_PACKAGES = ("kernels", "simulator")  # top-level names that other distributions use too
TOP_LEVEL = ("sandbox", *SIBLING_PACKAGES)
TINY = Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)


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


# -- a foreign package of the same name ------------------------------------------------------------

def _fake_package(where, name, distribution=None):
    """A package ``name`` in ``where`` that exits with 99 if imported; with a distribution's metadata."""
    (where / name).mkdir(parents=True)
    (where / name / "__init__.py").write_text("raise SystemExit(99)\n")
    if distribution:
        info = where / f"{distribution}-0.9.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {distribution}\nVersion: 0.9\n")
        (info / "top_level.txt").write_text(f"{name}\n")
        (info / "RECORD").write_text(f"{name}/__init__.py,,\n")


@pytest.mark.parametrize("name", SIBLING_PACKAGES)
def test_foreign_distribution_first_on_path_is_refused(tmp_path, name):
    _fake_package(tmp_path / "site", name, distribution=f"other-{name}")
    res = _python("import sandbox", cwd=tmp_path, pythonpath=[tmp_path / "site", ROOT])
    assert res.returncode == 1, (res.returncode, res.stderr)  # not 99: the foreign package was never run
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("ImportError:"), res.stderr
    assert str(tmp_path / "site" / name / "__init__.py") in last  # what was found
    assert str(ROOT / name / "__init__.py") in last and DISTRIBUTION in last  # what was expected
    assert f"pip uninstall other-{name}" in last  # the fix


def test_folder_of_the_same_name_is_refused(tmp_path):
    _fake_package(tmp_path, "kernels")  # e.g. the user's own kernels/ beside their script
    script = tmp_path / "mine.py"
    script.write_text("import sandbox\n")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PYTHONPATH"] = str(ROOT)
    res = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and last.startswith("ImportError:"), res.stderr
    assert str(tmp_path / "kernels" / "__init__.py") in last and "rename that folder" in last


def test_own_packages_pass_the_check():
    res = _python("import sandbox, kernels, simulator; print('ok')", cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


# -- the backend, whatever the import order --------------------------------------------------------

_ATTENTION = """
    import numpy as np
    q = np.random.default_rng(0).standard_normal((1, 1, 8, 16)).astype("float32")
    s = sandbox.Schedule("flash2", block_q=4, block_kv=4, thread_q=2, thread_kv=2)
    out = sandbox.attention(q, q, q, schedule=s)
    assert np.abs(out - sandbox.reference_attention(q, q, q)).max() < 1e-4
    print("ok")
"""


def _run_without_backend_choice(first_lines, cwd):
    """Run ``first_lines`` then the small attention call in a fresh interpreter, the backend unchosen."""
    env = {k: v for k, v in os.environ.items() if k != SIM_ENV}
    env["PYTHONPATH"] = str(ROOT)
    code = first_lines + textwrap.dedent(_ATTENTION)
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def test_numba_cuda_imported_after_sandbox_runs(tmp_path):
    res = _run_without_backend_choice("import sandbox\nfrom numba import cuda\n", tmp_path)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


@pytest.mark.skipif(gpu_present(), reason="on a machine with a GPU, numba.cuda imported first runs on it")
def test_numba_cuda_imported_first_without_gpu_says_what_to_do(tmp_path):
    res = _run_without_backend_choice("from numba import cuda\nimport sandbox\n", tmp_path)
    last = res.stderr.strip().splitlines()[-1]
    assert res.returncode == 1 and last.startswith("RuntimeError:"), res.stderr
    assert "import sandbox before numba.cuda" in last and f"{SIM_ENV}=1" in last


# -- device arrays in, the same kind out -----------------------------------------------------------

def _inputs(seed=0, shape=(1, 2, 8, 16)):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(shape).astype(np.float32) for _ in range(3)]


def test_numba_device_arrays_in_and_out():
    from numba import cuda

    q, k, v = _inputs()
    dq, dk, dv = (cuda.to_device(x) for x in (q, k, v))
    out, lse = attention(dq, dk, dv, schedule=TINY, causal=True, return_lse=True)
    assert type(out) is type(dq) and type(lse) is type(dq)
    ref_out, ref_lse = attention(q, k, v, schedule=TINY, causal=True, return_lse=True)
    np.testing.assert_array_equal(out.copy_to_host(), ref_out)
    np.testing.assert_array_equal(lse.copy_to_host(), ref_lse)
    np.testing.assert_allclose(ref_out, reference_attention(q, k, v, causal=True), atol=1e-5)


def test_numba_device_arrays_backward():
    from numba import cuda

    q, k, v = _inputs(1)
    out, lse = attention(q, k, v, schedule=TINY, return_lse=True)
    dout = _inputs(2)[0]
    grads = attention_backward(*(cuda.to_device(x) for x in (q, k, v, out, lse, dout)), schedule=TINY)
    expected = attention_backward(q, k, v, out, lse, dout, schedule=TINY)
    for got, want in zip(grads, expected):
        assert type(got) is not np.ndarray and hasattr(got, "copy_to_host")
        np.testing.assert_array_equal(got.copy_to_host(), want)


class _Interface:
    """Only ``__cuda_array_interface__``: what CuPy, PyTorch and others hand over."""

    def __init__(self, interface):
        self.__cuda_array_interface__ = interface


@pytest.mark.skipif(not using_simulator(), reason="on a GPU, a CUDA array interface is taken (see test_gpu.py)")
def test_cuda_array_interface_under_the_simulator_is_refused():
    q = _inputs()[0]
    interface = {"shape": q.shape, "typestr": q.dtype.str, "data": (q.ctypes.data, False), "strides": None,
                 "version": 3}
    with pytest.raises(TypeError, match=r"^q: Numba's CUDA simulator takes NumPy arrays and Numba device arrays"):
        attention(*(_Interface(interface) for _ in range(3)), schedule=TINY)
