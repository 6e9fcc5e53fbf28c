"""The Celery application shared by every worker and the scheduler."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudmarket.settings")

app = Celery("cloudmarket")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
