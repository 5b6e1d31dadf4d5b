"""The edge role: the public M-PROXY relay that sidecars dial."""
