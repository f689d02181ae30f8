"""docs/tutorial.md runs as written: its Python blocks, in order, in one namespace (so it cannot rot)."""

import pathlib
import re

from sandbox.vocabulary import kinds


def test_tutorial_runs(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(kinds, "_REGISTRY", dict(kinds._REGISTRY))  # the toy kind stays in this test
    monkeypatch.setenv("TUTORIAL_OUT", str(tmp_path))
    text = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "tutorial.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    assert len(blocks) == 5
    namespace = {}
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/tutorial.md python block {i}", "exec"), namespace)
    assert "rowwise" in kinds.names()
    assert (tmp_path / "tutorial_rowwise.png").stat().st_size > 10_000
    out = capsys.readouterr().out
    assert "rowwise: exact to" in out and "rowwise moves 63x flash2's HBM bytes" in out
