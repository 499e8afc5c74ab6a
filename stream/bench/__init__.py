"""Benchmarks of the served system that print ratios measured in one run: Triton against ONNX
Runtime in-process (serve), Kafka to Redis against the model alone (pipeline), and a long steady
run through the embedded stack (soak)."""
