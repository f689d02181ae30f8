"""IOReport: counts, bytes, comparison."""

import pytest

from sandbox import IOReport

SIZES = {"Q": 2, "K": 2, "V": 2, "O": 2, "S": 4}


def test_bytes_and_totals():
    r = IOReport(hbm_reads={"Q": 10, "K": 20}, hbm_writes={"O": 10, "S": 5}, sram_reads={"Q": 7}, itemsize=SIZES)
    assert r.bytes("hbm_reads") == 60 and r.bytes("hbm_writes") == 40 and r.hbm_bytes == 100
    assert r.total("hbm_reads") == 30 and r.sram_bytes == 14
    assert r.table()[0] == ("Q", 10, 0, 7, 0)


def test_equality_ignores_zero_entries_and_reports_differences():
    a = IOReport(hbm_reads={"Q": 3, "K": 0}, itemsize=SIZES)
    b = IOReport(hbm_reads={"Q": 3}, itemsize=SIZES)
    c = IOReport(hbm_reads={"Q": 4}, itemsize=SIZES)
    assert a == b and a != c
    assert a.diff(c) == [("hbm_reads", "Q", 3, 4)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(hbm_reads={"X": 1}, itemsize=SIZES), "unknown tensor 'X'"),
        (dict(hbm_reads={"Q": -1}, itemsize=SIZES), "is negative"),
        (dict(hbm_reads={"L": 1}, itemsize=SIZES), r"no element size for tensors \['L'\]"),
    ],
)
def test_bad_reports(kwargs, match):
    with pytest.raises(ValueError, match=match):
        IOReport(**kwargs)
