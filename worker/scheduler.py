"""The ``scheduler`` process (the Procfile's ``scheduler`` line: ``casecredits scheduler``).

It only sends messages; the ``worker`` processes do the work.

* ``renew_monthly_credits`` on queue ``renewals``: once at start-up, to catch up
  on whatever was missed while the scheduler was down, then at minutes 0, 15, 30
  and 45 of every hour. Every zone's midnight falls on one of those minutes (the
  world's offsets are whole hours, half hours, or :45), so an account is renewed
  within minutes of its own midnight; a renewal grants once per account and
  period, so sending twice, or from two schedulers, is harmless.
* the inbox sweeper, when ``worker.sweeper.sweep_job`` exists: see
  :func:`add_sweeper_job`, the hook for it.

Why APScheduler rather than periodiq: periodiq runs as dramatiq's own CLI and
ties the schedule to actor options (``periodic=cron(...)``), so the schedule
would live on the actors and start with the worker processes. APScheduler is a
small, well-kept library with cron and interval triggers and explicit control
over what happens after downtime (``coalesce``: many missed runs fire once;
``misfire_grace_time``: how late a run may still fire), and it runs as a plain
process we start, stop and log like the others.
"""

from __future__ import annotations

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from worker.logs import get_logger

log = get_logger(__name__)

#: the minutes of every hour at which a renewal is sent (UTC; every zone's offset
#: is a multiple of 15 minutes)
RENEWAL_MINUTES = "0,15,30,45"
#: seconds a missed cron run may still fire late; later ones wait for the next
MISFIRE_GRACE_S = 600


def send_renewal() -> None:
    """Enqueue one ``renew_monthly_credits``; it renews whatever is due when it runs."""
    from worker import actors

    message = actors.renew_monthly_credits.send({})
    log.info("scheduler.renewal_enqueued", message_id=message.message_id)


def build() -> BlockingScheduler:
    """The scheduler with its jobs, not started."""
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(send_renewal, CronTrigger(minute=RENEWAL_MINUTES, timezone="UTC"),
                      id="renew_monthly_credits", max_instances=1, coalesce=True,
                      misfire_grace_time=MISFIRE_GRACE_S)
    add_sweeper_job(scheduler)
    return scheduler


def add_sweeper_job(scheduler: BlockingScheduler) -> bool:
    """The hook for the second job: the inbox sweeper, every ``SWEEP_EVERY_S`` seconds.

    Added only when ``worker.sweeper`` defines ``sweep_job``.

    :returns: whether the job was added.
    """
    try:
        from worker import sweeper
    except ModuleNotFoundError as exc:
        if exc.name != "worker.sweeper":
            raise
        return False
    job = getattr(sweeper, "sweep_job", None)
    if job is None:
        return False
    from worker.settings import get_settings

    scheduler.add_job(job, IntervalTrigger(seconds=get_settings().sweep_every_s),
                      id="sweep_inbox", max_instances=1, coalesce=True)
    return True


def run() -> None:
    """Catch up once, then run the jobs until stopped."""
    from worker import actors  # noqa: F401  (sets up logs and the broker)

    send_renewal()
    scheduler = build()
    log.info("scheduler.started", jobs=[job.id for job in scheduler.get_jobs()])
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("scheduler.stopped")
