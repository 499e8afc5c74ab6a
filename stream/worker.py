"""What a worker is made of, with no Faust in it: the tokenizer, the trend store, the Triton
client and the pipeline that joins them, and the start-up checks of its dependencies.
stream/app.py builds these when the worker starts."""
from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from stream import contract
from stream.config import ConfigError, Settings
from stream.dependencies import check_broker, check_redis
from stream.pipeline import Backoff, Pipeline, retry_forever
from stream.store import StoreSettings, TrendStore
from stream.triton_client import AsyncTritonScorer

log = logging.getLogger("tecaflow.worker")


def tokenizer_dir(settings: Settings) -> Path:
    """TECAFLOW_TOKENIZER, else the tokenizer exported beside the newest model version."""
    if settings.tokenizer:
        path = Path(settings.tokenizer)
    else:
        try:
            path = contract.tokenizer_dir(settings.model_repo, settings.triton_model)
        except contract.ContractError as e:
            raise ConfigError(f"no tokenizer: {e}; set TECAFLOW_TOKENIZER or TECAFLOW_MODEL_REPO") from None
    if not (path / "tokenizer.json").is_file():
        raise ConfigError(f"tokenizer directory {path} has no tokenizer.json (export the model with `tecaflow export`)")
    return path


def store_for(settings: Settings) -> TrendStore:
    # The window only has to cover segments recorded but not yet seen by the detector (a batch or
    # a few after a crash); the detector keeps its own reference in its state.
    return TrendStore(settings.redis_url, StoreSettings(
        resolutions=settings.resolutions, buckets_kept=settings.buckets_kept,
        recent_segments=settings.recent_segments, ewma_alpha=settings.ewma_alpha,
        dedup_ttl_s=settings.dedup_ttl_s, window=max(StoreSettings.window, 8 * settings.batch_size)))


async def build_pipeline(settings: Settings, backoff=Backoff) -> Pipeline:
    """Wait for Triton (the model's contract decides what is valid) and Redis, then join them."""
    scorer = AsyncTritonScorer(settings.triton_url, settings.triton_model)
    served = await retry_forever(scorer.contract, "triton", backoff=backoff)
    log.info("model %s: widths %s, <= %d frames, <= %d tokens", settings.triton_model, served.widths,
             served.max_frames, served.max_text_tokens)
    store = await retry_forever(store_for, "redis", settings, backoff=backoff)  # a cluster client connects when made
    await retry_forever(store.ping, "redis", backoff=backoff)
    tokenizer = contract.Tokenizer(tokenizer_dir(settings), served.max_text_tokens)
    return Pipeline(scorer, store, tokenizer, served, settings.detector, settings.max_text_chars,
                    settings.max_future_s, backoff=backoff)


def check_dependencies(settings: Settings) -> None:
    """Refused credentials or permissions stop the worker now (DependencyRefused: one line, exit 2);
    an unreachable Redis or broker is only logged here and waited for once running."""
    tokenizer_dir(settings)  # fail now, with a clear message, rather than on the first batch
    check_redis(lambda: store_for(settings), settings.redis_url)
    loop = asyncio.new_event_loop()  # not the current loop: Faust sets up its own
    try:
        loop.run_until_complete(check_broker(settings))
    finally:
        loop.close()
