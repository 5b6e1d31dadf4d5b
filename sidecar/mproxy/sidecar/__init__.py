"""The sidecar role: terminates M-PROXY tunnels and routes client streams to cluster Services."""
