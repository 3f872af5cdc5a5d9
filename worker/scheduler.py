"""The ``scheduler`` process: enqueues renewals (and, later, sweeps) on a cron.

APScheduler's blocking scheduler with cron triggers: ``renew_monthly_credits``
goes out at minute 0 and 30 of every hour (so every zone's midnight, including
those at :30 and :45 offsets, is caught within the hour) and once at start-up
to catch up on whatever was missed while the scheduler was down. Sending twice
is harmless: a renewal grants once per account and period.
"""

from __future__ import annotations

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.cron import CronTrigger

from worker.logs import get_logger

log = get_logger(__name__)


def send_renewal() -> None:
    from worker import actors

    message = actors.renew_monthly_credits.send({})
    log.info("scheduler.renewal_enqueued", message_id=message.message_id)


def build() -> BlockingScheduler:
    scheduler = BlockingScheduler(timezone="UTC")
    scheduler.add_job(send_renewal, CronTrigger(minute="0,15,30,45", timezone="UTC"),
                      id="renew_monthly_credits", max_instances=1, coalesce=True,
                      misfire_grace_time=600)
    return scheduler


def run() -> None:
    """Catch up once, then run the cron until stopped."""
    from worker import actors  # noqa: F401  (sets up logs and the broker)

    send_renewal()
    scheduler = build()
    log.info("scheduler.started", jobs=[job.id for job in scheduler.get_jobs()])
    try:
        scheduler.start()
    except (KeyboardInterrupt, SystemExit):
        log.info("scheduler.stopped")
