"""The offline stand-ins for third-party APIs, one registrar per domain that calls one.

A registrar adds its routes to the shared MockApi and returns the environment variables that point
its domain at them ("{base}" is replaced by the server's URL)."""

from collections.abc import Iterator
from contextlib import contextmanager

from covid_lakehouse_dev.apis import ads, marketing, ny_testing, vaccines
from covid_lakehouse_dev.apis.harness import MockApi

REGISTRARS: list = [
    ny_testing.register,
    vaccines.register,
    ads.register,
    marketing.register,
]


@contextmanager
def serve(host: str = "127.0.0.1", port: int = 0) -> Iterator[tuple[str, dict[str, str]]]:
    """Serve every domain's mock API; yields the base URL and the env vars pointing domains at it."""
    api = MockApi(host=host, port=port)
    env: dict[str, str] = {}
    for register in REGISTRARS:
        env.update(register(api))
    with api:
        yield api.url, {k: v.replace("{base}", api.url) for k, v in env.items()}
