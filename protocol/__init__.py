"""Msgpack messages over ZeroMQ. Importing the package declares every message type."""

from protocol import commands, discord, messages, store  # noqa: F401 - registers the types
