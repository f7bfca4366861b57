"""pytest plugin: run aio-pika's own test suite against an existing broker.

aio-pika's tests/conftest.py starts RabbitMQ in Docker (through a small Docker
API client in tests/docker_client.py) and builds the broker URL from the
container's mapped ports.  This plugin, loaded with ``-p aiopika_broker``,
leaves the test files untouched and instead, when that conftest module is
registered (before pytest parses its fixtures or calls its
``pytest_configure``):

* replaces its Docker availability check with a no-op,
* replaces its ``DockerClient`` with a stand-in whose ``run()`` "starts" the
  broker named by ``AMQP_URL`` (so ``rabbitmq_container`` and the readiness
  probe work unchanged), and
* replaces the ``amqp_direct_url`` fixture with one that returns ``AMQP_URL``
  itself, so credentials and vhost come from the URL.

Tests that need a broker they can restart (``recovery_broker``) or a TLS
listener are deselected by the harness, not here.
"""

import os

import pytest
from yarl import URL


def _broker_url() -> URL:
    raw = os.environ.get("AMQP_URL")
    if not raw:
        raise pytest.UsageError("aiopika_broker: AMQP_URL is not set")
    return URL(raw)


@pytest.fixture(scope="session", name="amqp_direct_url")
def _amqp_direct_url() -> URL:
    return _broker_url()


def _is_aiopika_conftest(plugin) -> bool:
    return (
        getattr(plugin, "__name__", "").endswith("conftest")
        and hasattr(plugin, "check_docker_available")
        and hasattr(plugin, "DockerClient")
        and hasattr(plugin, "amqp_direct_url")
    )


@pytest.hookimpl(tryfirst=True)
def pytest_plugin_registered(plugin, manager):
    if not _is_aiopika_conftest(plugin):
        return
    ContainerInfo = plugin.ContainerInfo
    DockerHostInfo = plugin.DockerHostInfo
    url = _broker_url()

    class ExternalBroker:
        """Stands in for tests/docker_client.DockerClient."""

        def __init__(self, *args, **kwargs):
            pass

        def run(self, image, ports, environment=None):
            return ContainerInfo(
                id="external-broker",
                host=url.host,
                ports={
                    "5672/tcp": url.port or 5672,
                    # No TLS listener: the amqps tests are deselected.
                    "5671/tcp": int(os.environ.get("AMQPS_PORT", "5671")),
                },
            )

        def kill(self, container_id):
            pass

        def remove(self, container_id):
            pass

    plugin.check_docker_available = lambda: DockerHostInfo(is_tcp=False)
    plugin.DockerClient = ExternalBroker
    plugin.amqp_direct_url = _amqp_direct_url
