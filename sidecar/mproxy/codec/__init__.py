"""Sans-IO M-PROXY v1 codec: frames, packer, incremental parser, events, errors. No I/O, no dependencies."""
