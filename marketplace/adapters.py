"""django-allauth adapter: the account rules that allauth's settings cannot express."""

from __future__ import annotations

from allauth.account.adapter import DefaultAccountAdapter
from django.core.exceptions import ValidationError

#: Maximum length of an email address. RFC 5321 limits a forward path to 256 octets including
#: the angle brackets, which leaves 254 for the address. User.email has the same max_length.
MAX_EMAIL_LENGTH = 254


class AccountAdapter(DefaultAccountAdapter):
    """Checks email addresses on sign-up and when an address is added to an account."""

    def clean_email(self, email: str) -> str:
        """Reject addresses over 254 characters, which the email column could not store whole.

        allauth 65 calls this hook from the sign-up form and the add-email form.
        """
        email = super().clean_email(email)
        if len(email) > MAX_EMAIL_LENGTH:
            raise ValidationError(
                f"Email addresses can have at most {MAX_EMAIL_LENGTH} characters. This one has {len(email)}.",
                code="email_too_long",
            )
        return email
