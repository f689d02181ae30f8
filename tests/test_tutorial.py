"""docs/tutorial.md runs as written: its Python blocks, in order, in one namespace (so it cannot rot)."""

import pathlib
import re

from kernels import registry
from sandbox.lab.kinds import capabilities
from sandbox.lab.peers import impl_names
from sandbox.vocabulary import kinds
from simulator import table


def test_tutorial_runs(isolated_kinds, monkeypatch, tmp_path, capsys):
    monkeypatch.setenv("TUTORIAL_OUT", str(tmp_path))
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 6
    assert text.count("register_kind(") == 1 and "kinds.register" not in text
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/tutorial.md python block {i}", "exec"), namespace)
    assert "rowwise" in kinds.names() and "rowwise" in registry.names() and "rowwise" in table.names()
    assert "rowwise" in impl_names() and "rowwise" in [r["kind"] for r in capabilities()]
    assert (tmp_path / "tutorial_rowwise.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "rowwise has: {'kernels': True, 'counts': True, 'backward': None" in out
    assert "rowwise: exact to" in out and "rowwise moves 63x flash2's HBM bytes" in out
