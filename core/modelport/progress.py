"""Progress events of long steps, for whoever draws them (the ``modelport`` command on a terminal).

The pipeline reports; nothing listens unless someone asks, so a library user
sees nothing and pays one empty loop per event. Events and their data:

* ``config_started`` (``imports``: the heavy modules not imported yet, such as
  ``transformers``) and ``config_finished``: the config step, whose first run
  in a process mostly imports transformers;
* ``weights_read`` (``done`` and ``total``, in bytes; ``total`` is the weight
  files' size on disk, 0 when unknown): after each tensor the reader yields.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

#: A listener gets the event's name and its data.
Listener = Callable[[str, dict[str, Any]], None]

_listeners: list[Listener] = []


@contextlib.contextmanager
def listening(listener: Listener) -> Iterator[None]:
    """Call ``listener`` for every event reported inside the ``with`` block."""
    _listeners.append(listener)
    try:
        yield
    finally:
        _listeners.remove(listener)


def report(event: str, **data: Any) -> None:
    """Tell every listener; a listener's failure never breaks the load."""
    for listener in list(_listeners):
        with contextlib.suppress(Exception):
            listener(event, data)
