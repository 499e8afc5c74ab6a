"""Triton Python-backend model for TeCaFN: runs the exported ONNX graph with ONNX Runtime.

`tecaflow export --backend python` copies this file into model_repo/tecafn/<version>/model.py
and stream/contract.py beside it as tecaflow_contract.py; tecaflow itself never imports it
except in tests. It follows Triton's contract:
    initialize  reads the version's tecafn.json (the contract it serves) and the model config
                (its instance count), opens the ONNX session
                (CUDA execution provider where ONNX Runtime has it, else CPU)
    execute     one response per request; a bad request gets an error response and the others
                in the same batch are still served. The requests' segments are grouped by the
                lengths they are computed at, which follow from each segment's own, and each group
                runs as one ONNX Runtime call of at least two rows: a segment's outputs are then
                the same, bit for bit, whatever its batch (contract.run_by_bucket).
"""
import json
import os

import numpy as np
import onnxruntime as ort

try:
    import triton_python_backend_utils as pb_utils
except ImportError:  # outside Triton: `tecaflow bench pipeline` runs raw ONNX Runtime with session_options
    pb_utils = None

try:  # in a version directory, the contract sits beside this file
    import tecaflow_contract as contract
except ImportError:  # imported from the project (tests)
    from stream import contract


def session_options(instances: int = 1) -> "ort.SessionOptions":
    """ONNX Runtime's options, chosen for a CPU shared with the stream worker (bench pipeline):
    - every graph optimisation (constant folding, attention/GELU/LayerNorm fusions): the same
      scores to 1e-6, fewer kernels;
    - the cores split between the model's instances (a second instance with as many threads
      as cores only fights the first); TECAFN_ORT_THREADS, in Triton's environment, overrides.
      Exports have two instances (stream/contract.py DEFAULT_INSTANCES): one session with two
      threads keeps only 1.6 of 2 cores busy, two one-thread sessions keep both;
    - one graph node at a time, the threads working inside each node: running the independent
      encoders side by side (ORT_PARALLEL) was slower, 200 against 285 segments/s (int8, batch 32,
      2 idle cores);
    - no spinning: idle ONNX Runtime threads otherwise busy-wait for the next node, and the next
      request, taking the CPU the worker (and the other instance) need. Measured on 2 shared
      cores, MiniLM-sized graph, batch 32: fp32 49-53 seg/s spinning, 83-95 not; int8 82-85
      against 183-188 (`tecaflow bench pipeline` prints raw ONNX Runtime both ways)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    threads = os.environ.get("TECAFN_ORT_THREADS")  # Triton's environment, not a tecaflow setting
    options.intra_op_num_threads = int(threads) if threads else max(1, (os.cpu_count() or 1) // instances)
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.contract = contract.ModelContract.read_metadata(version_dir)
        model_config = json.loads(args["model_config"])
        instances = sum(int(g.get("count", 1)) for g in model_config.get("instance_group", [])) or 1
        options = session_options(instances)
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        self.session = ort.InferenceSession(os.path.join(version_dir, contract.ONNX_FILE), options, providers=providers)
        pb_utils.Logger.log_info(f"tecafn version {args['model_version']} ready on {self.session.get_providers()[0]}")

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []  # (request index, checked arrays)
        for i, request in enumerate(requests):
            try:
                good.append((i, self.contract.check_request(self._arrays(request))))
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        if good:
            try:
                feed = self.contract.concatenate([arrays for _, arrays in good])
                names = self.contract.outputs
                results = self.contract.run_by_bucket(lambda part: self.session.run(list(names), part), feed, names)
                start = 0
                for i, arrays in good:
                    n = arrays["input_ids"].shape[0]
                    tensors = [pb_utils.Tensor(name, results[name][start:start + n].reshape(n, -1).astype(np.float32))
                               for name in names]
                    responses[i] = pb_utils.InferenceResponse(output_tensors=tensors)
                    start += n
            except Exception as e:  # noqa: BLE001 - never let the stub die; answer every request
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {e}"))
        return responses

    def _arrays(self, request) -> dict:
        arrays = {}
        for name in self.contract.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                arrays[name] = tensor.as_numpy()
        return arrays

    def finalize(self):
        self.session = None
