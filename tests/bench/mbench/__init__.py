"""mbench: the peer benchmark suite behind `scripts/bench` (mproxy against direct loopback and other tunnels).

The Python here only orchestrates processes and renders results; the load itself comes from the Go
program in tests/bench/loadgen/, so the measuring side is never the bottleneck.
"""
