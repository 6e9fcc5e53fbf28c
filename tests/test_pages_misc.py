"""SSH key pages, recipe pages, account pages, error pages, the money filter and the layout."""

from __future__ import annotations

import re

import pytest
from django.template import Context, Template
from django.test import override_settings
from django.urls import reverse

from marketplace.models import SshKey
from marketplace.templatetags.money import money
from tests.factories import make_provider, make_recipe, make_superuser, make_user, ssh_public_key

SSH_KEYS_URL = reverse("marketplace:ssh_keys")


# --- money filter -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cents", "currency", "expected"),
    [
        (459, "EUR", "€4.59"),
        (0, "EUR", "€0.00"),
        (123456, "USD", "$1,234.56"),
        (5, "GBP", "£0.05"),
        (1000, "CHF", "10.00 CHF"),
        (None, "EUR", ""),
    ],
)
def test_money_formats_cents(cents, currency, expected):
    assert money(cents, currency) == expected


def test_money_filter_in_template():
    html = Template("{% load money %}{{ cents|money:currency }} / month").render(Context({"cents": 459, "currency": "EUR"}))

    assert html == "€4.59 / month"


# --- SSH keys ----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_ssh_keys_add_list_delete(client):
    user = make_user()
    client.force_login(user)
    public_key = ssh_public_key("me@laptop")

    added = client.post(SSH_KEYS_URL, {"name": "laptop", "public_key": public_key})
    key = SshKey.objects.get(user=user)
    listed = client.get(SSH_KEYS_URL).content.decode()
    deleted = client.post(reverse("marketplace:ssh_key_delete", kwargs={"key_id": key.pk}))

    assert added.status_code == 302
    assert key.fingerprint.startswith("SHA256:")
    assert "laptop" in listed
    assert key.fingerprint in listed
    assert deleted.status_code == 302
    assert not SshKey.objects.filter(pk=key.pk).exists()


@pytest.mark.django_db
def test_ssh_keys_invalid_key_keeps_input(client):
    client.force_login(make_user())

    response = client.post(SSH_KEYS_URL, {"name": "laptop", "public_key": "ssh-ed25519 not-base64"})

    assert response.status_code == 200
    assert "public_key" in response.context["form"].errors
    assert "ssh-ed25519 not-base64" in response.content.decode()
    assert SshKey.objects.count() == 0


@pytest.mark.django_db
def test_ssh_keys_duplicate_is_error(client):
    user = make_user()
    client.force_login(user)
    public_key = ssh_public_key()
    client.post(SSH_KEYS_URL, {"name": "laptop", "public_key": public_key})

    response = client.post(SSH_KEYS_URL, {"name": "again", "public_key": public_key})

    assert "already saved this key as 'laptop'" in " ".join(response.context["form"].errors["public_key"])
    assert SshKey.objects.count() == 1


@pytest.mark.django_db
def test_ssh_keys_cannot_delete_other_users_key(client):
    owner = make_user()
    key = SshKey.objects.create(user=owner, name="k", public_key=ssh_public_key(), key_type="ssh-ed25519", fingerprint="SHA256:a")
    client.force_login(make_user())

    response = client.post(reverse("marketplace:ssh_key_delete", kwargs={"key_id": key.pk}))

    assert response.status_code == 404
    assert SshKey.objects.filter(pk=key.pk).exists()


@pytest.mark.django_db
def test_ssh_keys_requires_login(client):
    assert client.get(SSH_KEYS_URL).status_code == 302


# --- recipes -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_recipe_list_and_detail(client):
    provider = make_provider(display_name="Acme Compute")
    version = make_recipe(author=provider.user, name="Postgres", script="#!/bin/sh\napt-get install -y postgresql\n")

    listing = client.get(reverse("recipes:list")).content.decode()
    detail = client.get(version.recipe.get_absolute_url()).content.decode()

    assert "Postgres" in listing
    assert "Latest: v1" in listing
    assert "apt-get install -y postgresql" in detail
    assert "This script runs as root on your VM. Review it before you rent." in detail
    assert "Acme Compute" in detail
    assert provider.user.email not in detail


@pytest.mark.django_db
def test_recipe_list_empty(client):
    assert "No recipes yet" in client.get(reverse("recipes:list")).content.decode()


@pytest.mark.django_db
def test_recipe_unknown_is_404(client):
    assert client.get(reverse("recipes:detail", kwargs={"slug": "nope"})).status_code == 404


# --- account pages ----------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url_name",
    ["account_login", "account_signup", "account_reset_password", "account_reset_password_done", "account_email_verification_sent"],
)
def test_account_pages_use_site_layout(client, url_name):
    response = client.get(reverse(url_name))

    assert response.status_code == 200
    html = response.content.decode()
    assert 'class="site-header"' in html
    assert "css/app.css" in html


@pytest.mark.django_db
def test_login_error_shown_in_form(client):
    make_user(email="someone@example.com")

    response = client.post(reverse("account_login"), {"login": "someone@example.com", "password": "wrong"})

    assert response.status_code == 200
    assert 'class="form-errors"' in response.content.decode()


@pytest.mark.django_db
def test_logout_page_and_nav_for_signed_in_user(client):
    client.force_login(make_user(email="me@example.com"))

    logout_page = client.get(reverse("account_logout")).content.decode()
    nav = client.get(reverse("marketplace:catalog")).content.decode()

    assert "Do you want to sign out?" in logout_page
    for label in ("My rentals", "Provider", "SSH keys", "API docs", "Sign out", "me@example.com"):
        assert label in nav
    assert ">Admin<" not in nav


@pytest.mark.django_db
def test_nav_shows_admin_for_staff(client):
    client.force_login(make_superuser())

    assert ">Admin<" in client.get(reverse("marketplace:catalog")).content.decode()


@pytest.mark.django_db
def test_password_reset_from_bad_key(client):
    response = client.get(reverse("account_reset_password_from_key", kwargs={"uidb36": "zz", "key": "bad-key"}))

    assert response.status_code == 200
    assert "Invalid reset link" in response.content.decode()


@pytest.mark.django_db
def test_email_confirm_bad_key(client):
    response = client.get(reverse("account_confirm_email", kwargs={"key": "bad"}))

    assert response.status_code == 200
    assert "invalid or expired" in response.content.decode()


# --- layout and error pages -------------------------------------------------------------------


@pytest.mark.django_db
def test_pages_load_nothing_from_other_hosts(client):
    html = client.get(reverse("marketplace:catalog")).content.decode()

    external = re.findall(r'(?:src|href)="(https?:)?//', html)
    assert external == []
    assert "vendor/htmx.min.js" in html


@pytest.mark.django_db
@override_settings(DEBUG=False)
def test_404_page_uses_layout(client):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert "Page not found" in response.content.decode()


def test_500_page_renders_without_context():
    from django.template import loader

    html = loader.get_template("500.html").render({})

    assert "Server error" in html


@pytest.mark.django_db
@pytest.mark.parametrize("url_name", ["account_email", "account_change_password"])
def test_other_allauth_pages_use_site_layout(client, url_name):
    client.force_login(make_user())

    response = client.get(reverse(url_name))

    assert response.status_code == 200
    assert 'class="site-header"' in response.content.decode()


# --- account emails ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_signup_email_names_cloudmarket_not_host(client, mailoutbox):
    response = client.post(
        reverse("account_signup"),
        {"email": "new@example.com", "password1": "a-long-pass-phrase-42", "password2": "a-long-pass-phrase-42"},
        HTTP_HOST="127.0.0.1:8000",
    )

    body = mailoutbox[0].body
    assert response.status_code == 302
    assert body.startswith("Hello from Cloudmarket!")
    assert "Thank you for using Cloudmarket." in body
    assert "Hello from 127.0.0.1:8000" not in body
    assert "/accounts/confirm-email/" in body
    assert mailoutbox[0].subject.startswith("[Cloudmarket] ")


@pytest.mark.django_db
def test_password_reset_email_names_cloudmarket(client, mailoutbox):
    make_user(email="known@example.com")

    client.post(reverse("account_reset_password"), {"email": "known@example.com"}, HTTP_HOST="127.0.0.1:8000")

    body = mailoutbox[0].body
    assert body.startswith("Hello from Cloudmarket!")
    assert "127.0.0.1:8000!" not in body
    assert "/accounts/password/reset/key/" in body


# --- the up command ---------------------------------------------------------------------------


def test_up_starts_children_by_absolute_path(monkeypatch, tmp_path):
    import subprocess

    from django.conf import settings
    from django.core.management import call_command

    from marketplace.management.commands import up

    started: list[tuple[list[str], object]] = []

    class _ExitedProcess:
        pid = 4242

        def __init__(self, command, **kwargs):
            started.append((command, kwargs.get("cwd")))

        def poll(self) -> int:
            return 0

        def terminate(self) -> None:
            pass

        def wait(self, timeout: float | None = None) -> int:
            return 0

    monkeypatch.setattr(up, "call_command", lambda *args, **kwargs: None)
    monkeypatch.setattr(subprocess, "Popen", _ExitedProcess)
    monkeypatch.setattr(up.signal, "signal", lambda *args: None)  # Keep pytest's own Ctrl-C handler.
    monkeypatch.chdir(tmp_path)  # Started from another directory.

    with pytest.raises(SystemExit):
        call_command("up", "--no-demo")

    web_command, web_cwd = started[0]
    assert web_command[1] == str(settings.BASE_DIR / "manage.py")
    assert all(cwd == settings.BASE_DIR for _command, cwd in started)
    assert len(started) == 4  # web, provisioning worker, background worker, scheduler
    queues = [command[command.index("-Q") + 1] for command, _cwd in started if "-Q" in command]
    assert queues == ["celery", "notifications,periodic"]
