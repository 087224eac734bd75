#!/bin/bash
# /tmp/zc/matrix.sh N  -- runs each combination N times sequentially (one sender/mid or mid/reader pair at a time)
N=${1:-5}
P=/work/main/.venv/bin/python
R="$P /tmp/zc/run.py"
Z="-r zc -M 28684 -c 33554432 -L 16777216"
cd /tmp/zc
$R copy_rx          $N send 0     -- -r copy -H 0
$R copy_rx_hash     $N send 0     -- -r copy -H 1
$R zc_rx            $N zc   28684 -- $Z -H 0
$R zc_rx_hash       $N zc   28684 -- $Z -H 1
$R zc_rx_dio        $N zc   28684 -- $Z -H 0 -s odirect -o /tmp/zc/out_dio.bin
$R zc_rx_pwrite     $N zc   28684 -- $Z -H 0 -s pwrite  -o /tmp/zc/out_pc.bin
$R zc_full_dio      $N zc   28684 -- $Z -H 1 -s odirect -S sendfile -o /tmp/zc/out_dio.bin
$R zc_full_pwrite   $N zc   28684 -- $Z -H 1 -s pwrite  -S sendfile -o /tmp/zc/out_pc.bin
$R copy_full_dio    $N send 0     -- -r copy -H 1 -s odirect -S sendfile -o /tmp/zc/out_dio.bin
$R copy_full_pwrite $N send 0     -- -r copy -H 1 -s pwrite  -S sendfile -o /tmp/zc/out_pc.bin
$R splice_rx_store  $N send 0     -- -r splice -H 0 -s pwrite -o /tmp/zc/out_sp.bin
$R splice_full      $N send 0     -- -r splice -H 1 -s pwrite -S sendfile -o /tmp/zc/out_sp.bin
$R splice_full_zcsnd $N zc  28684 -- -r splice -H 1 -s pwrite -S sendfile -M 28684 -o /tmp/zc/out_sp.bin
