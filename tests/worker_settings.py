"""Django settings for the worker processes of the provisioning scale and fault tests.

The project's settings, with the Celery queue named by `CLOUDMARKET_TEST_CELERY_QUEUE`. These
workers send every task (retries, cleanup, notifications) to that queue and consume only it, so
the journey tests' worker, which talks to another fake cloud, never takes their tasks.
"""

import os

from cloudmarket.settings import *  # noqa: F403

CELERY_TASK_DEFAULT_QUEUE = os.environ.get("CLOUDMARKET_TEST_CELERY_QUEUE", "celery")
# Notifications and periodic tasks too: these workers consume only the scale queue.
CELERY_TASK_ROUTES: dict = {}
