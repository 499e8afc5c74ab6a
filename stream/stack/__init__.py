"""The embedded local stack: the broker, Redis, Triton and Prometheus as supervised processes on
loopback (`tecaflow stack`, `serve`, `demo`), and what the tests and benches start from it."""
