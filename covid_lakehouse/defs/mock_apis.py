"""The offline stand-ins for third-party APIs, one registrar per domain that calls one.

A registrar adds its routes to the shared MockApi and returns the environment variables that point
its domain at them ("{base}" is replaced by the server's URL)."""

REGISTRARS: list = []
