"""Start-up of a worker: connect to Triton and Redis, find the tokenizer, run the Faust app."""
from __future__ import annotations

import asyncio
import logging
import os
import sys
from pathlib import Path

# Imported at start-up, not inside the event loop: it takes seconds.
from transformers import AutoTokenizer

from stream.config import ConfigError, Settings
from stream.dependencies import check_broker, check_redis
from stream.pipeline import Pipeline, retry_forever
from stream.store import StoreSettings, TrendStore
from stream.triton_client import AsyncTritonScorer

log = logging.getLogger("tecaflow.worker")


def find_tokenizer(settings: Settings):
    """TECAFLOW_TOKENIZER, else the tokenizer exported beside the newest model version."""
    explicit = os.environ.get("TECAFLOW_TOKENIZER")
    if explicit:
        path = Path(explicit)
    else:
        model_dir = Path(os.environ.get("TECAFLOW_MODEL_REPO", "model_repo")) / settings.triton_model
        versions = sorted((p for p in model_dir.glob("[0-9]*") if p.is_dir()), key=lambda p: int(p.name))
        if not versions:
            raise ConfigError(f"no tokenizer: {model_dir} has no exported version; set TECAFLOW_TOKENIZER "
                              f"or TECAFLOW_MODEL_REPO")
        path = versions[-1] / "tokenizer"
    if not path.is_dir():
        raise ConfigError(f"tokenizer directory {path} does not exist")
    return AutoTokenizer.from_pretrained(path, local_files_only=True)


def store_for(settings: Settings) -> TrendStore:
    # The window only has to cover segments recorded but not yet seen by the detector (a batch or
    # a few after a crash); the detector keeps its own reference in its state.
    return TrendStore(settings.redis_url, StoreSettings(
        resolutions=settings.resolutions, buckets_kept=settings.buckets_kept,
        recent_segments=settings.recent_segments, ewma_alpha=settings.ewma_alpha,
        dedup_ttl_s=settings.dedup_ttl_s, window=max(StoreSettings.window, 8 * settings.batch_size)))


async def build_pipeline(settings: Settings) -> Pipeline:
    scorer = AsyncTritonScorer(settings.triton_url, settings.triton_model)
    contract = await retry_forever(scorer.contract, "triton")
    log.info("model %s: widths %s, <= %d frames, <= %d tokens", settings.triton_model, contract.widths,
             contract.max_frames, contract.max_text_tokens)
    store = await retry_forever(store_for, "redis", settings)  # a cluster client connects when made
    await retry_forever(store.ping, "redis")
    return Pipeline(scorer, store, find_tokenizer(settings), contract, settings.detector,
                    settings.max_text_chars, settings.max_future_s)


def check_dependencies(settings: Settings) -> None:
    """Refused credentials or permissions stop the worker now (DependencyRefused: one line, exit 2);
    an unreachable Redis or broker is only logged here and waited for once running."""
    check_redis(lambda: store_for(settings), settings.redis_url)
    loop = asyncio.new_event_loop()  # not the current loop: Faust sets up its own
    try:
        loop.run_until_complete(check_broker(settings))
    finally:
        loop.close()


def run_worker(loglevel: str = "info") -> int:
    """Run the Faust worker in this process until it is stopped."""
    from prometheus_client import start_http_server

    from stream.app import app, settings
    log.info("worker settings: %s", settings.describe())
    find_tokenizer(settings)  # fail now, with a clear message, rather than on the first batch
    check_dependencies(settings)
    if settings.metrics_port:
        start_http_server(settings.metrics_port, addr=os.environ.get("TECAFLOW_METRICS_HOST", "127.0.0.1"))
        log.info("metrics on http://127.0.0.1:%d/metrics", settings.metrics_port)
    sys.argv = ["tecaflow-worker", "worker", "--loglevel", loglevel, "--without-web"]
    app.main()
    return 0
