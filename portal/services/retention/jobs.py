"""Retention jobs: the partitions of the next months are made ahead of time, daily."""

from __future__ import annotations

import logging

from ...extensions import db
from ...tasks.registry import schedule, task
from . import partitions

log = logging.getLogger(__name__)


@task("retention.create_partitions")
def create_partitions() -> dict[str, int]:
    created = partitions.ensure_partitions()
    db.session.commit()
    if created:
        log.info("partitions created: %s", ", ".join(created))
    return {"created": len(created)}


# Daily, so three months ahead always exist (a missed run or two changes nothing; rows of a
# month without its partition wait in the DEFAULT partition until one is made).
schedule(
    "create-partitions",
    cron="20 0 * * *",
    func="retention.create_partitions",
    queue="default",
    id_prefix="partitions",
)
