#!/bin/bash
# ncu each pattern's launch: shared load instructions vs wavefronts
NCU=/usr/local/cuda/bin/ncu
$NCU --clock-control none -k regex:lds --metrics smsp__inst_executed_op_shared_ld.sum,l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum,l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum,gpu__time_duration.sum python3 "$(dirname "$0")/lds_wavefronts.py" > $OUT/lds-ncu.txt 2>&1
python3 - <<'PY'
import re,os
names=[l.split("ran ",1)[1].strip() for l in open(os.environ["OUT"]+"/lds-ncu.txt") if l.startswith("ran ")]
txt=open(os.environ["OUT"]+"/lds-ncu.txt").read()
blocks=re.split(r"\n  lds\S*", txt)[1:]
print(f"{'pattern':24s} {'wavefronts/LDS':>15s} {'conflicts/LDS':>14s}")
for n,b in zip(names,blocks):
    g=lambda k: float(re.search(re.escape(k)+r"\s+(\S+)?\s+([\d,\.]+)\s*$",b,re.M).group(2).replace(",",""))
    i=g("smsp__inst_executed_op_shared_ld.sum"); w=g("l1tex__data_pipe_lsu_wavefronts_mem_shared_op_ld.sum"); c=g("l1tex__data_bank_conflicts_pipe_lsu_mem_shared_op_ld.sum")
    print(f"{n:24s} {w/i:15.2f} {c/i:14.2f}")
PY
