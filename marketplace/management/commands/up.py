"""Start the whole platform for local use: migrate, load demo data, then run web, worker and scheduler.

The three processes share this machine's database and broker (SQLite and a file-system broker
unless DATABASE_URL and REDIS_URL are set). Ctrl-C stops all of them; if one exits, the others
are stopped too.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = "Migrate, load demo data and run the web server, Celery workers and the scheduler together."

    def add_arguments(self, parser) -> None:
        parser.add_argument("--addr", default="127.0.0.1:8000", help="Address and port for the web server.")
        parser.add_argument("--no-demo", action="store_true", help="Skip loading the demo data.")
        parser.add_argument(
            "--concurrency", type=int, default=4,
            help="Celery worker processes; each provisioning waits in one while a server boots.",
        )

    def handle(self, *args, **options) -> None:
        call_command("migrate", interactive=False, verbosity=1)
        if not options["no_demo"]:
            call_command("seed_demo")

        python = sys.executable
        # Absolute paths and the project directory as working directory, so `up` also works
        # when started from another directory (python /path/to/manage.py up).
        base_dir = settings.BASE_DIR
        commands = {
            "web": [python, str(base_dir / "manage.py"), "runserver", options["addr"], "--noreload"],
            "worker": [python, "-m", "celery", "-A", "cloudmarket", "worker", "--loglevel=INFO",
                       f"--concurrency={options['concurrency']}", "--hostname=provisioning@%h", "-Q", "celery"],
            "background worker": [python, "-m", "celery", "-A", "cloudmarket", "worker", "--loglevel=INFO",
                                  "--concurrency=2", "--hostname=background@%h", "-Q", "notifications,periodic"],
            "scheduler": [python, "-m", "celery", "-A", "cloudmarket", "beat", "--loglevel=INFO"],
        }
        processes: dict[str, subprocess.Popen] = {}
        stopping = False

        def stop(*_args) -> None:
            nonlocal stopping
            stopping = True

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        for name, command in commands.items():
            processes[name] = subprocess.Popen(command, cwd=base_dir, env={**os.environ, "PYTHONUNBUFFERED": "1"})
            logger.info("Started %s (pid %s)", name, processes[name].pid)
        self.stdout.write(self.style.SUCCESS(f"Cloudmarket is starting on http://{options['addr']}/ (Ctrl-C stops it)"))

        exit_code = 0
        try:
            while not stopping:
                for name, process in processes.items():
                    code = process.poll()
                    if code is not None:
                        self.stderr.write(f"{name} exited with code {code}; stopping the others.")
                        exit_code = code or 1
                        stopping = True
                        break
                time.sleep(0.5)
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.terminate()
            deadline = time.monotonic() + 15
            for process in processes.values():
                try:
                    process.wait(timeout=max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    process.kill()
        if exit_code:
            sys.exit(exit_code)
