"""Re-encrypt every stored secret with the current key, the first of FIELD_ENCRYPTION_KEYS.

Rotation without downtime:

1. Put the new key first and keep the old ones, `FIELD_ENCRYPTION_KEYS=new:<key>,old:<key>`,
   and restart every web and worker process. New secrets now use `new`; old ones still decrypt.
2. Run `manage.py rotate_encryption_keys`. It can run while the application serves requests,
   and it can be run again after an interruption. It fails when a secret could not be
   re-encrypted.
3. When it reports that every secret uses the new key, remove the old key and restart.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from provisioning.encrypted_fields import encrypted_fields_count_by_key, encrypted_fields_rotate

logger = logging.getLogger(__name__)


class Command(BaseCommand):
    help = (
        "Re-encrypt every stored secret (cloud account tokens, contract platform and host keys) with the first "
        "key of FIELD_ENCRYPTION_KEYS. Safe to run while the application runs, and again after an interruption."
    )

    def add_arguments(self, parser) -> None:
        parser.add_argument(
            "--batch-size", type=int, default=100, help="Rows whose ids are read per query (default 100)."
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Only print how many secrets each key encrypted; change nothing."
        )

    def handle(self, *args, batch_size: int, dry_run: bool, **options) -> None:
        if batch_size < 1:
            raise CommandError(f"--batch-size must be 1 or more, got {batch_size}.")
        key_id = settings.FIELD_ENCRYPTION_KEY_ID
        if dry_run:
            self._print_counts(key_id)
            return

        logger.info("Key rotation to key %r started", key_id)
        progress = self._progress if options["verbosity"] > 1 else None
        report = encrypted_fields_rotate(batch_size=batch_size, progress=progress)
        for item in report.fields.values():
            line = f"{item.label}: {item.rotated} re-encrypted"
            if item.failed_pks:
                shown = ", ".join(str(pk) for pk in item.failed_pks[:20])
                more = f" and {len(item.failed_pks) - 20} more" if len(item.failed_pks) > 20 else ""
                line += f", {len(item.failed_pks)} failed to decrypt (rows {shown}{more})"
            self.stdout.write(line)
        logger.info("Key rotation to key %r finished: %s re-encrypted, %s failed", key_id, report.rotated, report.failed)
        remaining = self._print_counts(key_id)
        if report.failed:
            raise CommandError(
                f"{report.failed} secret(s) failed to decrypt and still use an old key; keep the old keys configured. "
                "Such a value was tampered with, moved to another row, or encrypted with a key that is no longer configured."
            )
        if remaining:
            raise CommandError(
                f"{remaining} secret(s) still use another key, probably written by a process that does not have key "
                f"{key_id!r} first yet; restart every process with the new FIELD_ENCRYPTION_KEYS and run this again."
            )
        self.stdout.write(self.style.SUCCESS(f"Every stored secret uses key {key_id!r}; older keys can be removed."))

    def _progress(self, label: str, rotated: int) -> None:
        self.stdout.write(f"{label}: {rotated} re-encrypted so far")

    def _print_counts(self, key_id: str) -> int:
        """Print the number of secrets per field and key id, and return how many use another key than `key_id`."""
        others = 0
        for label, per_key in encrypted_fields_count_by_key().items():
            summary = ", ".join(f"{count} with key {name!r}" for name, count in per_key.items()) or "none stored"
            self.stdout.write(f"{label}: {summary}")
            others += sum(count for name, count in per_key.items() if name != key_id)
        return others
