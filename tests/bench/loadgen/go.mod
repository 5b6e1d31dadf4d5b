module mproxy.invalid/bench/loadgen

go 1.22
