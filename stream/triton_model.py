"""Triton Python-backend model for TeCaFN: runs the exported ONNX graph with ONNX Runtime.

`tecaflow export --backend python` copies this file into model_repo/tecafn/<version>/model.py
and stream/contract.py beside it as tecaflow_contract.py; tecaflow itself never imports it
except in tests. It follows Triton's contract:
    initialize  reads the version's tecafn.json (the contract it serves), opens the ONNX session
                (CUDA execution provider where ONNX Runtime has it, else CPU)
    execute     one response per request; a bad request gets an error response and the others
                in the same batch are still served. Requests are padded to a common length and
                run as one ONNX Runtime call (the model is invariant to padding).
"""
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils

try:  # in a version directory, the contract sits beside this file
    import tecaflow_contract as contract
except ImportError:  # imported from the project (tests)
    from stream import contract


class TritonPythonModel:
    def initialize(self, args):
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        self.contract = contract.ModelContract.read_metadata(version_dir)
        options = ort.SessionOptions()
        threads = os.environ.get("TECAFN_ORT_THREADS")  # Triton's environment, not a tecaflow setting
        if threads:
            options.intra_op_num_threads = int(threads)
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
                results = dict(zip(names, self.session.run(list(names), feed)))
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
