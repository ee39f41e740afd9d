"""A Discord emulator the real py-cord client connects to (REST v10, gateway, /_sandbox/).

See ``server.py`` for the entry point, ``control.py`` for the control API shapes.
"""

from .ratelimit import Clock
from .server import DiscordEmulator
from .world import World

__all__ = ["Clock", "DiscordEmulator", "World"]
