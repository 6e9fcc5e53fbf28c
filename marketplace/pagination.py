"""A paginator whose total count stops at a cap, so broad catalog filters stay fast."""

from __future__ import annotations

from django.core.paginator import Paginator
from django.utils.functional import cached_property


class CappedCountPaginator(Paginator):
    """Count at most `max_count` rows; `is_capped` is True when the real total may be larger.

    Counting every match of a broad filter over a large catalog dominates the page's time, and
    nobody pages past a few hundred results, so pages beyond the cap are not offered.
    """

    def __init__(self, object_list, per_page, *, max_count: int = 1_000, **kwargs):
        super().__init__(object_list, per_page, **kwargs)
        self.max_count = max_count

    @cached_property
    def count(self) -> int:
        # Without ORDER BY the planner may count through any index, not only the sort's.
        return self.object_list.order_by()[: self.max_count + 1].count()

    @property
    def is_capped(self) -> bool:
        return self.count > self.max_count
