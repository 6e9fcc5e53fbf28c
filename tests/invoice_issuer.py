"""Issue invoices for the given payment ids from a separate process, for the concurrency test.

Usage: python -m tests.invoice_issuer GO_FILE PAYMENT_ID...
Waits until GO_FILE exists, so all processes start issuing together, then prints one
"payment_id number" line per invoice.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "cloudmarket.settings")
    import django

    django.setup()
    from billing.invoicing import invoice_issue_for_payment
    from billing.models import Payment

    go_file = Path(sys.argv[1])
    payment_ids = [int(value) for value in sys.argv[2:]]
    payments = [Payment.objects.get(pk=payment_id) for payment_id in payment_ids]
    deadline = time.monotonic() + 60
    while not go_file.exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"{go_file} did not appear within 60 s.")
        time.sleep(0.01)
    for payment in payments:
        invoice = invoice_issue_for_payment(payment=payment)
        sys.stdout.write(f"{payment.pk} {invoice.number}\n")


if __name__ == "__main__":
    main()
