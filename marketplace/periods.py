"""Billing period arithmetic in calendar months, in UTC."""

from __future__ import annotations

import calendar
from datetime import datetime


def add_months(start: datetime, months: int, *, anchor_day: int | None = None) -> datetime:
    """Return `start` moved by whole calendar months, clamping to the month's last day.

    `anchor_day` is the day of month the rental started on, so a rental that began on the 31st
    renews on 28/29 February and then again on 31 March instead of drifting to the 28th.
    """
    day = anchor_day or start.day
    month_index = start.month - 1 + months
    year = start.year + month_index // 12
    month = month_index % 12 + 1
    last_day = calendar.monthrange(year, month)[1]
    return start.replace(year=year, month=month, day=min(day, last_day))
