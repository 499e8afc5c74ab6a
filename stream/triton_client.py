"""Scoring segments on Triton: build the model's inputs and call it over gRPC or HTTP.

No Faust in here, so it can be tested alone. The model's contract (input names, feature widths,
frame and token limits) is read from Triton's own model config, so a client cannot drift from
the model it talks to.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DTYPES = {np.dtype(np.int64): "INT64", np.dtype(np.float32): "FP32"}


@dataclass(frozen=True)
class ModelContract:
    inputs: tuple[str, ...]
    widths: dict[str, int]
    max_text_tokens: int
    max_frames: int
    max_batch: int

    @classmethod
    def from_config(cls, config: dict) -> "ModelContract":
        params = {k: v.get("string_value", v.get("stringValue")) for k, v in config.get("parameters", {}).items()}
        widths = dict(item.split("=") for item in params.get("widths", "").split(",") if item)
        return cls(inputs=tuple(i["name"] for i in config["input"]),
                   widths={k: int(v) for k, v in widths.items()},
                   max_text_tokens=int(params["max_text_tokens"]), max_frames=int(params["max_frames"]),
                   max_batch=int(config.get("max_batch_size", 0)))


def batch_inputs(input_ids: np.ndarray, attention_mask: np.ndarray, frames: dict[str, list[np.ndarray]],
                 contract: ModelContract) -> dict[str, np.ndarray]:
    """Model inputs for a batch: tokens as given, each modality's [T_i, d] frames padded to the
    batch's longest, with lengths [B, 1]."""
    out = {"input_ids": input_ids.astype(np.int64), "attention_mask": attention_mask.astype(np.int64)}
    for m, width in contract.widths.items():
        seqs = frames[m]
        lengths = np.array([max(1, len(s)) for s in seqs], dtype=np.int64)
        padded = np.zeros((len(seqs), int(lengths.max()), width), dtype=np.float32)
        for i, s in enumerate(seqs):
            padded[i, : len(s)] = s
        out[m], out[f"{m}_lengths"] = padded, lengths.reshape(-1, 1)
    return out


class TritonScorer:
    """Synchronous client (gRPC or HTTP) for the benchmark, tests and tools."""

    def __init__(self, url: str, protocol: str = "grpc", model: str = "tecafn", timeout: float = 30.0):
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be grpc or http, not {protocol!r}")
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
        return ModelContract.from_config(config)

    def score(self, inputs: dict[str, np.ndarray], version: str = "") -> np.ndarray:
        tensors = []
        for name, array in inputs.items():
            t = self._lib.InferInput(name, list(array.shape), DTYPES.get(array.dtype, str(array.dtype).upper()))
            t.set_data_from_numpy(array)
            tensors.append(t)
        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        result = self.client.infer(self.model, tensors, model_version=version,
                                   outputs=[self._lib.InferRequestedOutput("score")], **kwargs)
        return result.as_numpy("score").reshape(-1)

    def close(self) -> None:
        self.client.close()


class AsyncTritonScorer:
    """asyncio gRPC client: one call per micro-batch, used by the stream workers."""

    def __init__(self, url: str, model: str = "tecafn", timeout: float = 30.0):
        import tritonclient.grpc.aio as aio
        self._aio = aio
        self.client = aio.InferenceServerClient(url)
        self.model, self.timeout = model, timeout

    async def contract(self) -> ModelContract:
        config = await self.client.get_model_config(self.model, as_json=True)
        return ModelContract.from_config(config["config"])

    async def score(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        tensors = []
        for name, array in inputs.items():
            t = self._aio.InferInput(name, list(array.shape), DTYPES[array.dtype])
            t.set_data_from_numpy(array)
            tensors.append(t)
        result = await self.client.infer(self.model, tensors, client_timeout=self.timeout,
                                         outputs=[self._aio.InferRequestedOutput("score")])
        return result.as_numpy("score").reshape(-1)

    async def close(self) -> None:
        await self.client.close()
