"""Triton Python-backend model for TeCaFN: runs the exported ONNX graph with ONNX Runtime.

Copied by `tecaflow export --backend python` into model_repo/tecafn/<version>/model.py; it is
not imported by tecaflow itself. It follows Triton's contract:
    initialize  reads the model config and the version's tecafn.json, opens the ONNX session
                (CUDA execution provider where ONNX Runtime has it, else CPU)
    execute     one response per request; a bad request gets an error response and the others
                in the same batch are still served. Requests are padded to a common length and
                run as one ONNX Runtime call (the model is invariant to padding).
"""
import json
import os

import numpy as np
import onnxruntime as ort
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        self.model_config = json.loads(args["model_config"])
        version_dir = os.path.join(args["model_repository"], args["model_version"])
        with open(os.path.join(version_dir, "tecafn.json")) as f:
            self.meta = json.load(f)
        self.inputs = self.meta["inputs"]
        self.sequences = list(self.meta["widths"])  # audio / visual, as trained
        self.max_frames = int(self.meta["max_frames"])
        self.max_tokens = int(self.meta["max_text_tokens"])
        self.max_batch = int(self.model_config.get("max_batch_size", 0)) or None
        providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
        options = ort.SessionOptions()
        threads = os.environ.get("TECAFN_ORT_THREADS")
        if threads:
            options.intra_op_num_threads = int(threads)
        self.session = ort.InferenceSession(os.path.join(version_dir, "model.onnx"), options, providers=providers)
        self.logger = pb_utils.Logger
        self.logger.log_info(f"tecafn version {args['model_version']} ready on {self.session.get_providers()[0]}")

    def execute(self, requests):
        responses = [None] * len(requests)
        good = []  # (request index, dict of arrays)
        for i, request in enumerate(requests):
            try:
                good.append((i, self._read(request)))
            except ValueError as e:
                responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(str(e)))
        if good:
            try:
                scores = self._run([arrays for _, arrays in good])
                start = 0
                for i, arrays in good:
                    n = arrays["input_ids"].shape[0]
                    out = pb_utils.Tensor("score", scores[start:start + n].reshape(n, 1).astype(np.float32))
                    responses[i] = pb_utils.InferenceResponse(output_tensors=[out])
                    start += n
            except Exception as e:  # noqa: BLE001 - never let the stub die; answer every request
                for i, _ in good:
                    responses[i] = pb_utils.InferenceResponse(error=pb_utils.TritonError(f"inference failed: {e}"))
        return responses

    def _read(self, request):
        """The request's inputs as numpy, validated beyond what Triton checks (dtype, width)."""
        arrays = {}
        for name in self.inputs:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is None:
                raise ValueError(f"missing input {name!r}")
            arrays[name] = tensor.as_numpy()
        n = arrays["input_ids"].shape[0]
        if arrays["attention_mask"].shape != arrays["input_ids"].shape:
            raise ValueError(f"attention_mask shape {arrays['attention_mask'].shape} != input_ids shape "
                             f"{arrays['input_ids'].shape}")
        if arrays["input_ids"].shape[1] > self.max_tokens:
            raise ValueError(f"{arrays['input_ids'].shape[1]} tokens > max_text_tokens {self.max_tokens}")
        for m in self.sequences:
            frames, lengths = arrays[m], arrays[f"{m}_lengths"].reshape(-1)
            arrays[f"{m}_lengths"] = lengths
            if frames.shape[0] != n or lengths.shape[0] != n:
                raise ValueError(f"{m}: batch {frames.shape[0]} / lengths {lengths.shape[0]} != input_ids batch {n}")
            if frames.shape[1] > self.max_frames:
                raise ValueError(f"{m}: {frames.shape[1]} frames > max_frames {self.max_frames}")
            if np.any(lengths < 1) or np.any(lengths > frames.shape[1]):
                raise ValueError(f"{m}_lengths must be in [1, {frames.shape[1]}]")
            if not np.all(np.isfinite(frames)):
                raise ValueError(f"{m}: NaN or Inf in the frames")
        return arrays

    def _run(self, parts):
        """Pad every request to the longest, concatenate, run once, return scores [sum n]."""
        feed = {}
        for name in self.inputs:
            arrays = [p[name] for p in parts]
            if arrays[0].ndim == 1:
                feed[name] = np.concatenate(arrays).astype(np.int64)
                continue
            longest = max(a.shape[1] for a in arrays)
            padded = [np.pad(a, [(0, 0), (0, longest - a.shape[1])] + [(0, 0)] * (a.ndim - 2)) for a in arrays]
            feed[name] = np.concatenate(padded)
        return self.session.run(["score"], feed)[0].reshape(-1)

    def finalize(self):
        self.session = None
