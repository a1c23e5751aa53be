"""hlb: fast CIFAR training where every trick is a plugin."""

import pluggy

__version__ = "0.1.0"

PROJECT = "hlb"

#: Marker for hook implementations, used by built-in and third-party tricks.
hookimpl = pluggy.HookimplMarker(PROJECT)
#: Marker for hook specifications (only :mod:`hlbcli.hookspecs` uses it).
hookspec = pluggy.HookspecMarker(PROJECT)

from hlbcli.errors import TrickError  # noqa: E402  (the error type a trick raises for a bad value)

__all__ = ["hookimpl", "hookspec", "TrickError", "__version__"]
