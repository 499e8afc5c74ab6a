"""Telling a dependency that refuses us from one that is away.

Refused (wrong password, missing ACL permission, SASL failure, topic or group not authorised) is
not transient: waiting does not fix it, an operator must. A worker checks Redis and the broker
once before it starts and stops with one clear line when either refuses it. Away (connection
refused, timeout, cluster not ready) is transient: the worker starts and waits, retrying with
backoff as it always has. The CLI reports either as one line with exit code 2.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

import redis
from aiokafka import errors as kafka_errors

from stream.config import Settings, redact_url
from stream.errors import UserError

log = logging.getLogger("tecaflow.worker")

REDIS_REFUSALS = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError,
                  redis.exceptions.NoPermissionError, redis.exceptions.AuthenticationWrongNumberOfArgsError)
BROKER_REFUSALS = (kafka_errors.AuthenticationFailedError, kafka_errors.AuthenticationMethodNotSupported,
                   kafka_errors.SaslAuthenticationFailed, kafka_errors.UnsupportedSaslMechanismError,
                   kafka_errors.IllegalSaslStateError, kafka_errors.TopicAuthorizationFailedError,
                   kafka_errors.GroupAuthorizationFailedError, kafka_errors.ClusterAuthorizationFailedError)


class DependencyRefused(UserError, RuntimeError):
    """A dependency refused our credentials or permissions: stop, one line, exit 2."""


def wrong_database(error: BaseException) -> bool:
    """Redis has no database of the number TECAFLOW_REDIS_URL names: waiting will not add it."""
    return isinstance(error, redis.exceptions.ResponseError) and "DB index is out of range" in str(error)


def refused(error: BaseException) -> bool:
    return isinstance(error, REDIS_REFUSALS + BROKER_REFUSALS) or wrong_database(error)


def describe(error: BaseException, what: str) -> str:
    """One line for an operator: which dependency, where (credentials hidden), what it said."""
    return f"{what}: {type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'no detail'}"


def check_redis(connect, url: str) -> None:
    """Raise DependencyRefused when Redis refuses this worker; only warn when it is away.
    `connect()` gives the store: a cluster client already talks to the cluster when it is made."""
    where = f"Redis at {redact_url(url)}"
    try:
        store = connect()
        store.check_access()
    except Exception as e:  # noqa: BLE001 - sorted into refused (fatal) and away (waited for)
        if wrong_database(e):
            raise DependencyRefused(describe(e, f"{where} has no such database (the number at the end of "
                                                f"TECAFLOW_REDIS_URL)")) from None
        if refused(e):
            raise DependencyRefused(describe(e, f"{where} refused this worker (check the password or ACL in "
                                                f"TECAFLOW_REDIS_URL)")) from None
        log.warning("%s is not reachable yet (%s); the worker will wait for it", where, describe(e, "redis"))
        return
    warn_unless_durable(store, where)


def warn_unless_durable(store, where: str) -> None:
    """tecaflow acks a batch once Redis has replied: that is only 'on disk' with appendfsync always."""
    try:
        config = store.redis.config_get("append*")
    except redis.RedisError:  # managed Redis often refuses CONFIG: nothing to tell
        return
    if config and (config.get("appendonly"), config.get("appendfsync")) != ("yes", "always"):
        log.warning("%s runs appendonly=%s appendfsync=%s: a crash of its machine can lose up to a second of "
                    "writes this worker has acknowledged; run it with appendonly yes, appendfsync always",
                    where, config.get("appendonly"), config.get("appendfsync"))


async def check_broker(settings: Settings, timeout: float = 10.0) -> bool:
    """Connect once with the worker's credentials, then list topics: refusals stop the worker.
    Returns whether the broker answered."""
    where = f"the broker at {redact_url(settings.broker_url)}"
    try:
        await asyncio.wait_for(_connect_and_list(settings, timeout), timeout)
        return True
    except Exception as e:  # noqa: BLE001 - sorted into refused (fatal) and away (waited for)
        if refused(e):
            raise DependencyRefused(describe(e, f"{where} refused this worker (check TECAFLOW_BROKER_SECURITY "
                                                f"and the SASL settings)")) from None
        log.warning("%s is not reachable yet (%s); the worker will wait for it", where, describe(e, "broker"))
        return False


def broker_client_options(settings: Settings, timeout: float) -> dict:
    options = {"security_protocol": settings.broker_security, "request_timeout_ms": int(timeout * 1000)}
    context = settings.broker_ssl_context()
    if context is not None:
        options["ssl_context"] = context
    if settings.broker_uses_sasl():
        options.update(sasl_mechanism=settings.sasl_mechanism, sasl_plain_username=settings.sasl_username,
                       sasl_plain_password=settings.sasl_password)
    return options


async def _connect_and_list(settings: Settings, timeout: float) -> None:
    """A bare connection first: the clients' bootstrap logs a SASL refusal and raises only
    'unable to bootstrap', which would read as 'away'."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.conn import create_conn
    options = broker_client_options(settings, timeout)
    host, _, port = settings.broker_servers().split(",")[0].rpartition(":")
    conn = await create_conn(host, int(port), **options)
    conn.close()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.broker_servers(), **options)
    try:
        await admin.start()
        await admin.list_topics()
    finally:
        with contextlib.suppress(Exception):  # closing a client that never connected may complain
            await admin.close()
