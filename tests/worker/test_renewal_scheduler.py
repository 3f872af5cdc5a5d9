"""The scheduler's renewal job fires on every zone's midnight of the first (worker/scheduler.py).

Kept with the renewal tests; it needs neither a database nor a broker.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import available_timezones

from db.periods import next_renewal
from worker import scheduler


def fire_times(start: datetime, end: datetime) -> list[datetime]:
    trigger = scheduler.build().get_job("renew_monthly_credits").trigger
    times: list[datetime] = []
    previous = None
    while True:
        fire = trigger.get_next_fire_time(previous, start if previous is None
                                          else previous + timedelta(seconds=1))
        if fire is None or fire > end:
            return times
        times.append(fire.astimezone(UTC))
        previous = fire


def test_the_renewal_is_sent_at_least_hourly():
    start = datetime(2026, 3, 1, tzinfo=UTC)
    times = fire_times(start, start + timedelta(days=2))
    assert times[0] - start <= timedelta(hours=1)
    assert max(b - a for a, b in zip(times, times[1:], strict=False)) <= timedelta(hours=1)


def test_every_zones_midnight_of_the_first_is_a_fire_time():
    fires = set(fire_times(datetime(2026, 1, 1, tzinfo=UTC), datetime(2026, 1, 2, tzinfo=UTC)))
    fire_minutes = {(t.minute, t.second) for t in fires}
    instant = datetime(2026, 1, 15, tzinfo=UTC)
    for tz in sorted(available_timezones()):
        for month in range(12):
            renewal_at = next_renewal(instant + timedelta(days=31 * month), tz)
            assert (renewal_at.minute, renewal_at.second) in fire_minutes, (tz, renewal_at)


def test_the_sweeper_hook_adds_its_job_when_the_sweeper_exists():
    jobs = {job.id for job in scheduler.build().get_jobs()}
    assert "renew_monthly_credits" in jobs
    try:
        from worker.sweeper import sweep_job  # noqa: F401
    except ImportError:
        assert jobs == {"renew_monthly_credits"}
    else:
        assert "sweep_inbox" in jobs
