"""Secrets resolved where they are used -- on the worker, in ``DoFn.setup()`` -- never at
pipeline construction, so a job graph (pickled DoFns, Java transform payloads, options)
holds only a reference: an environment variable's name, a file path or a Secret Manager
version. docs/runners.md, "Secrets".
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from flexprice_beam.core.config import SaslConfig, clean_api_key

#: Kafka's own config provider for environment variables (kafka-clients >= 3.5, KIP-887).
ENV_PROVIDER = "org.apache.kafka.common.config.provider.EnvVarConfigProvider"


class SecretError(ValueError):
    """A key source that gives no usable key; the message names the source, never a value."""


def _from_env(name: str, what: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SecretError(f"{what}: environment variable {name} is not set on this worker")
    return value


def _from_file(path: str, what: str) -> str:
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SecretError(f"{what}: cannot read {path}: {exc.strerror}") from None


def _from_secret_manager(name: str, client: Any | None, what: str) -> str:
    if client is None:
        try:
            from google.cloud import secretmanager
        except ImportError:
            raise SecretError(f"{what}: reading {name} needs google-cloud-secret-manager on "
                              "the workers (requirements.txt; pip install "
                              "'flexprice-beam[gcp]')") from None
        client = secretmanager.SecretManagerServiceClient()
    try:
        answer = client.access_secret_version(name=name)
    except Exception as exc:  # google.api_core errors; the message names the secret, not a value
        raise SecretError(f"{what}: Secret Manager refused {name}: {type(exc).__name__}: "
                          f"{str(exc)[:200]}") from None
    return answer.payload.data.decode("utf-8")


def resolve_api_key(cfg, secret_client: Any | None = None) -> str:
    """The Flexprice key from ``cfg`` (a ``FlexpriceOutput``): the literal, or read now from
    the worker's environment, a file or Secret Manager (``secret_client``: for tests)."""
    if cfg.api_key is not None:
        key, source = cfg.api_key.get_secret_value(), "api_key"
    elif cfg.api_key_env is not None:
        source = f"output.flexprice.api_key_env ({cfg.api_key_env})"
        key = _from_env(cfg.api_key_env, source)
    elif cfg.api_key_file is not None:
        source = f"output.flexprice.api_key_file ({cfg.api_key_file})"
        key = _from_file(cfg.api_key_file, source)
    else:
        source = f"output.flexprice.api_key_secret ({cfg.api_key_secret})"
        key = _from_secret_manager(cfg.api_key_secret, secret_client, source)
    try:
        key = clean_api_key(key, source)
    except ValueError as exc:
        raise SecretError(str(exc)) from None
    if not key:
        raise SecretError(f"{source} is empty")
    return key


def sasl_password(sasl: SaslConfig) -> str:
    """The SASL password for a Python Kafka client (kafka-python) on this worker."""
    if sasl.password is not None:
        return sasl.password.get_secret_value()
    return _from_env(sasl.password_env, f"input.kafka.sasl.password_env ({sasl.password_env})")


def jaas_password(sasl: SaslConfig) -> tuple[str, dict[str, str]]:
    """(what goes into ``sasl.jaas.config``, extra consumer properties) for Java's Kafka
    client: with ``password_env`` only the reference ``${env:NAME}`` and the provider that
    resolves it inside the worker's JVM, never the value."""
    if sasl.password is not None:
        return sasl.password.get_secret_value(), {}
    return f"${{env:{sasl.password_env}}}", {"config.providers": "env",
                                            "config.providers.env.class": ENV_PROVIDER}
