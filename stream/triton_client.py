"""Scoring segments on Triton: build the model's inputs and call it over gRPC or HTTP.

No Faust in here, so it can be tested alone. The model's contract (input names, feature widths,
frame and token limits) is read from Triton's own model config (stream/contract.py), so a client
cannot drift from the model it talks to.
"""
from __future__ import annotations

import numpy as np

from stream.contract import MODEL_NAME, SCORE, ModelContract

DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32", np.dtype(bool): "BOOL"}


def infer_inputs(lib, inputs: dict[str, np.ndarray]) -> list:
    """The request's tensors, for any of tritonclient's client libraries (grpc, grpc.aio, http)."""
    tensors = []
    for name, array in inputs.items():
        tensor = lib.InferInput(name, list(array.shape), DTYPES.get(array.dtype, str(array.dtype).upper()))
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)
    return tensors


class TritonScorer:
    """Synchronous client (gRPC or HTTP) for the benchmark, tests and tools."""

    def __init__(self, url: str, protocol: str = "grpc", model: str = MODEL_NAME, timeout: float = 30.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, not {protocol!r}")  # a caller's bug
        self.protocol, self.model, self.timeout = protocol, model, timeout
        if protocol == "grpc":
            import tritonclient.grpc as client
        else:
            import tritonclient.http as client
        self._lib = client
        self.client = client.InferenceServerClient(url)

    def contract(self) -> ModelContract:
        if self.protocol == "grpc":
            config = self.client.get_model_config(self.model, as_json=True)["config"]
        else:
            config = self.client.get_model_config(self.model)
        return ModelContract.from_model_config(config)

    def infer(self, inputs: dict[str, np.ndarray], outputs=(SCORE,), version: str = "") -> dict[str, np.ndarray]:
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model, infer_inputs(self._lib, inputs), model_version=version,
                                   outputs=[self._lib.InferRequestedOutput(name) for name in outputs], **kwargs)
        return {name: result.as_numpy(name) for name in outputs}

    def score(self, inputs: dict[str, np.ndarray], version: str = "") -> np.ndarray:
        return self.infer(inputs, version=version)[SCORE].reshape(-1)

    def close(self) -> None:
        self.client.close()


class AsyncTritonScorer:
    """asyncio gRPC client: one call per micro-batch, used by the stream workers. Each method asks
    about `model` where given (a slot the roles name: stream/contract.py), else its own."""

    def __init__(self, url: str, model: str = MODEL_NAME, timeout: float = 30.0):
        import tritonclient.grpc.aio as aio
        self._aio = aio
        self.client = aio.InferenceServerClient(url)
        self.model, self.timeout = model, timeout

    async def contract(self, model: str | None = None) -> ModelContract:
        config = await self.client.get_model_config(model or self.model, as_json=True)
        return ModelContract.from_model_config(config["config"])

    async def served_versions(self, model: str | None = None) -> list[str]:
        """The versions of the model Triton has ready, oldest first."""
        metadata = await self.client.get_model_metadata(model or self.model, as_json=True)
        return sorted((str(v) for v in metadata.get("versions", []) if str(v).isdigit()), key=int)

    async def version_ready(self, version: str, model: str | None = None) -> bool:
        """Whether Triton has loaded `version` of the model and answers calls to it (a version the
        config names is loading for a while after the config changed)."""
        return bool(await self.client.is_model_ready(model or self.model, version))

    async def served_version(self, model: str | None = None) -> str | None:
        """The newest version of the model Triton has ready (None if it names none)."""
        ready = await self.served_versions(model)
        return ready[-1] if ready else None

    async def infer(self, inputs: dict[str, np.ndarray], outputs=(SCORE,), version: str | None = None,
                    model: str | None = None) -> dict[str, np.ndarray]:
        """Every named output of one call (the score, and the attribution where the model has it),
        from `version` (None: the one Triton picks)."""
        result = await self.client.infer(model or self.model, infer_inputs(self._aio, inputs),
                                         model_version=version or "", client_timeout=self.timeout,
                                         outputs=[self._aio.InferRequestedOutput(name) for name in outputs])
        return {name: result.as_numpy(name) for name in outputs}

    async def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        return (await self.infer(inputs))[SCORE].reshape(-1)

    async def close(self) -> None:
        await self.client.close()
