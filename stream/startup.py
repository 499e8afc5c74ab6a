"""What a worker is made of, with no Faust in it: the tokenizer, the trend store, the Triton
client and the pipeline that joins them, and the start-up checks of its dependencies.
stream/app.py builds these when the worker starts."""
from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from stream import contract, metrics
from stream.config import ConfigError, Settings
from stream.dependency_checks import check_broker, check_redis
from stream.pipeline import Pipeline
from stream.retry import Backoff, retry_forever
from stream.shadow.scoring import Shadow
from stream.store import StoreSettings, TrendStore
from stream.triton_client import AsyncTritonScorer

log = logging.getLogger("tecaflow.worker")


def tokenizer_location(settings: Settings, version: str | None = None, model: str | None = None) -> Path:
    """TECAFLOW_TOKENIZER, else the tokenizer exported beside the model version Triton serves (the
    newest on disk before Triton is asked: a newer export that failed to load, or is not loaded
    yet, may have another tokenizer than the graph being served)."""
    if settings.tokenizer:
        return Path(settings.tokenizer)
    try:
        return contract.tokenizer_dir(settings.model_repo, model or settings.triton_model, version)
    except contract.ContractError as e:
        raise ConfigError(f"no tokenizer: {e}; set TECAFLOW_TOKENIZER or TECAFLOW_MODEL_REPO") from None


def load_tokenizer(settings: Settings, max_tokens: int, version: str | None = None, model: str | None = None
                   ) -> contract.Tokenizer:
    try:
        return contract.Tokenizer(tokenizer_location(settings, version, model), max_tokens)
    except contract.ContractError as e:
        raise ConfigError(str(e)) from None


async def served_contract(scorer: AsyncTritonScorer, batch_size: int, context_kept: int | None = None,
                          model: str | None = None) -> contract.ModelContract:
    """The model's contract from Triton. A model that is not a tecaflow export, one that takes
    smaller batches than the worker sends, or one that reads more previous segments than the store
    keeps (`context_kept`, where given), is the user's to fix, not a failure to wait out (Triton
    would refuse every full batch, and the worker retry it forever). `model`: the slot serving the
    live version (None: TECAFLOW_TRITON_MODEL)."""
    try:
        served = await scorer.contract(model)
    except contract.ContractError as e:
        raise ConfigError(f"TECAFLOW_TRITON_MODEL: {e}") from None
    if 0 < served.max_batch < batch_size:
        raise ConfigError(f"TECAFLOW_BATCH_SIZE={batch_size} is larger than the {served.max_batch} segments the "
                          f"served model takes at once: lower it, or export with --max-batch {batch_size}")
    if context_kept is not None and served.context > context_kept:
        raise ConfigError(f"TECAFLOW_CONTEXT_KEPT={context_kept} keeps fewer segments per stream than the "
                          f"{served.context} previous transcripts the served model reads: raise it to at least "
                          f"{served.context}")
    return served


def store_for(settings: Settings) -> TrendStore:
    # The window only has to cover segments recorded but not yet seen by the detector (a batch or
    # a few after a crash); the detector keeps its own reference in its state.
    return TrendStore.of(settings, window=max(StoreSettings.window, 8 * settings.batch_size))


async def build_pipeline(settings: Settings, backoff=Backoff) -> Pipeline:
    """Wait for Triton (the model's contract decides what is valid) and Redis, then join them."""
    scorer = AsyncTritonScorer(settings.triton_url, settings.triton_model)
    store = await retry_forever(store_for, "redis", settings, backoff=backoff)  # a cluster client connects when made
    await retry_forever(store.ping, "redis", backoff=backoff)
    shadow = Shadow(store, scorer, settings, lambda v, m: candidate_model(settings, scorer, v, m),
                    lambda *parts: candidate_pipeline(settings, backoff, *parts))
    current = await shadow.roles()
    served = await retry_forever(served_contract, "triton", scorer, settings.batch_size, settings.context_kept,
                                 current.live_model, backoff=backoff)
    log.info("model %s: widths %s, <= %d frames, <= %d tokens", current.model("live", settings.triton_model),
             served.widths, served.max_frames, served.max_text_tokens)
    version = current.live or await retry_forever(scorer.served_version, "triton", backoff=backoff)
    tokenizer = load_tokenizer(settings, served.max_text_tokens, version, current.live_model)
    log.info("tokenizer %s (live version %s, candidate %s)",
             tokenizer_location(settings, version, current.live_model), version, current.candidate or "none")

    async def model_for(new_version: str, model: str | None) -> tuple[contract.ModelContract, contract.Tokenizer]:
        new = await served_contract(scorer, settings.batch_size, settings.context_kept, model)
        return new, load_tokenizer(settings, new.max_text_tokens, new_version, model)

    return Pipeline(scorer, store, tokenizer, served, settings.detector, settings.max_text_chars,
                    settings.max_future_s, backoff=backoff, version=version, model_for=model_for, shadow=shadow,
                    model=current.live_model)


async def candidate_model(settings: Settings, scorer: AsyncTritonScorer, version: str, model: str | None
                          ) -> tuple[contract.ModelContract, contract.Tokenizer]:
    """A candidate's own contract (its tecafn.json, where the repository is on this host, else the
    config of the model serving it: it may take other inputs or give other outputs than the live
    one) and tokenizer."""
    version_dir = Path(settings.model_repo) / (model or settings.triton_model) / version
    own = contract.ModelContract.read_metadata(version_dir) if (version_dir / contract.METADATA_FILE).exists() \
        else await served_contract(scorer, settings.batch_size, model=model)
    return own, load_tokenizer(settings, own.max_text_tokens, version, model)


def candidate_pipeline(settings: Settings, backoff, scorer, store, tokenizer, served, version, model) -> Pipeline:
    """The candidate's side of shadow scoring: its own store (keyspace), contract and tokenizer."""
    return Pipeline(scorer, store, tokenizer, served, settings.detector, settings.max_text_chars,
                    settings.max_future_s, backoff=backoff, version=version, role="candidate", model=model)


def check_dependencies(settings: Settings) -> bool:
    """Refused credentials or permissions stop the worker now (DependencyRefused: one line, exit 2);
    an unreachable Redis or broker is only logged here and waited for once running (Redis) or
    before Faust starts (the broker: wait_for_broker). Returns whether the broker answered."""
    if (settings.sasl_username or settings.sasl_password) and not settings.broker_uses_sasl():
        log.warning("TECAFLOW_BROKER_SASL_USERNAME/PASSWORD are set but TECAFLOW_BROKER_SECURITY=%s: they are not "
                    "used (SASL_PLAINTEXT or SASL_SSL would use them)", settings.broker_security)
    load_tokenizer(settings, 1)  # fail now, with a clear message, rather than on the first batch
    check_redis(lambda: store_for(settings), settings.redis_url)
    loop = asyncio.new_event_loop()  # not the current loop: Faust sets up its own
    try:
        broker_up = loop.run_until_complete(check_broker(settings))
        loop.run_until_complete(check_model(settings))
    finally:
        loop.close()
    return broker_up


def wait_for_broker(settings: Settings, first_s: float = 1.0, cap_s: float = 10.0) -> None:
    """Until the broker answers (refusals stop the worker): Faust's producer gives up on a broker
    that does not answer at start-up, and the worker would exit with a traceback."""
    loop = asyncio.new_event_loop()
    delay, attempt = first_s, 0
    try:
        while True:
            metrics.DEPENDENCY_UP.labels("kafka").set(0)
            time.sleep(delay)
            attempt += 1
            metrics.RETRIES.labels("kafka").inc()
            if loop.run_until_complete(check_broker(settings)):
                metrics.DEPENDENCY_UP.labels("kafka").set(1)
                log.info("the broker is back after %d retries", attempt)
                return
            delay = min(cap_s, 2 * delay)
    finally:
        loop.close()


async def check_model(settings: Settings) -> None:
    """A model that is not a tecaflow export stops the worker; Triton away is waited for later."""
    from stream.shadow.roles import live_model
    scorer = AsyncTritonScorer(settings.triton_url, live_model(settings), timeout=5)
    try:
        await served_contract(scorer, settings.batch_size, settings.context_kept)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - away or still loading: the pipeline waits for it
        log.warning("Triton at %s is not serving %s yet (%s); the worker will wait for it", settings.triton_url,
                    scorer.model, str(e).splitlines()[0] if str(e) else type(e).__name__)
    finally:
        await scorer.close()
