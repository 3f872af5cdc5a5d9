"""A no-op actor on the worker's own broker set-up: the ceiling ``bench/worker.py`` measures against.

``dramatiq bench.noop_actors`` (the Procfile's ``worker`` line with this module
in place of ``worker.actors``) gets the same settings, logging, middleware and
Redis broker as the real worker; the actor takes the same message and does nothing.
"""

from __future__ import annotations

from typing import Any

import dramatiq

from schemas.messages import QUEUE_PROFILES
from worker import broker, logs
from worker.settings import get_settings

logs.configure(fmt=get_settings().log_format, level=get_settings().log_level)
broker.setup()

#: the actor's name; bench/worker.py sends it the same payloads as ``create_manual_profile``
NOOP_ACTOR = "noop"


@dramatiq.actor(actor_name=NOOP_ACTOR, queue_name=QUEUE_PROFILES,
                throws=broker.PERMANENT_ERRORS)
def noop(payload: Any) -> None:
    """Take the message and do nothing."""
