"""Build every enabled service as it would start, and say what would stop it.

`run.py check` runs this: each service module's `build()` gives the service with
its settings schema and handlers, so a bad setting (`timezone = "Mars/Olympus"`),
a command declared without a handler, a handler without a declaration and a
subscribed event without a handler are all reported before anything starts, one
line each, in the words the services themselves would use at start.
"""

from __future__ import annotations

import importlib

from protocol.runtime import ConfigurationError, Service
from supervisor.config import Config, ServiceSpec


def build_service(spec: ServiceSpec) -> Service:
    """The service a spec's module builds: `module.build()` returns (service, state)."""
    module = importlib.import_module(spec.module)
    build = getattr(module, "build", None)
    if build is None:
        raise ConfigurationError(f"services.{spec.name}.module: {spec.module} has no build()")
    service, _state = build()
    if not isinstance(service, Service):
        raise ConfigurationError(f"services.{spec.name}.module: build() gave no Service")
    return service


def problems(config: Config) -> list[str]:
    """Every problem of every enabled service, one line each (empty: all would start)."""
    found: list[str] = []
    topology = config.topology()
    for spec in config.enabled:
        try:
            service = build_service(spec)
        except ConfigurationError as exc:
            found.append(str(exc))
            continue
        except Exception as exc:  # whatever importing or building it raises
            found.append(f"services.{spec.name}.module: cannot build {spec.module} ({exc!r})")
            continue
        service.name = spec.name
        try:
            service.check(topology, spec.settings)
        except ConfigurationError as exc:
            found += str(exc).splitlines()
    return found
