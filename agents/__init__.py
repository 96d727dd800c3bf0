"""negstream's services; :func:`register` builds them and wires them onto a Faust app."""

from agents.wiring import register

__all__ = ["register"]
