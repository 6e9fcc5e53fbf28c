"""Invisible and control characters in free text other users see, reject reasons, and SSH key input."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from django.core.exceptions import ValidationError
from django.urls import reverse
from rest_framework.test import APIClient

from marketplace.models import ContractStatus, ProviderProfile
from marketplace.sshkeys import parse_public_key
from marketplace.validators import validate_multiline_text
from recipes.models import Recipe
from tests.factories import (
    make_cloud_account,
    make_contract,
    make_offering,
    make_provider,
    make_user,
    ssh_public_key,
)

RIGHT_TO_LEFT_OVERRIDE = "\u202e"


def _api(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


# --- validate_multiline_text -------------------------------------------------------------------


@pytest.mark.parametrize("code", [*range(0x202A, 0x202F), *range(0x2066, 0x206A)])
def test_multiline_text_rejects_direction_characters(code):
    with pytest.raises(ValidationError) as error:
        validate_multiline_text(f"Fast box{chr(code)}exe.txt")

    assert error.value.code == "bidi_control"
    assert f"U+{code:04X}" in error.value.messages[0]


@pytest.mark.parametrize("character", ["\x00", "\x07", "\x08", "\x1b", "\x7f", "\x85", "\r"])
def test_multiline_text_rejects_control_characters(character):
    with pytest.raises(ValidationError) as error:
        validate_multiline_text(f"line one{character}line two")

    assert error.value.code == "control_character"


@pytest.mark.parametrize(
    "text",
    [
        "Line one\nLine two",
        "Line one\r\nLine two",
        "Column\tcolumn",
        "English text with \u05e2\u05d1\u05e8\u05d9\u05ea and a mark\u200e.",
        "GPU box \U0001f680",
    ],
)
def test_multiline_text_accepts_line_breaks_tabs_and_scripts(text):
    validate_multiline_text(text)


# --- offerings, provider profiles and recipes -------------------------------------------------


@pytest.fixture
def provider(db):
    return make_provider(display_name="Acme Compute")


@pytest.fixture
def account(provider):
    return make_cloud_account(owner=provider.user, label="Sandbox A")


def _offering_form(account, **overrides) -> dict:
    data = {
        "name": "Tiny box",
        "description": "",
        "product_type": "vm",
        "cloud_account": account.pk,
        "server_type": "cx22",
        "location_code": "fsn1",
        "image": "ubuntu-24.04",
        "vcpu": "2",
        "memory_mib": "4096",
        "disk_gb": "40",
        "gpu_model": "",
        "gpu_count": "0",
        "country": "",
        "city": "",
        "recipe_version": "",
        "price": "4.59",
        "currency": "EUR",
        "visibility": "public",
        "stock_status": "in_stock",
    }
    data.update(overrides)
    return data


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("city", f"Falken{RIGHT_TO_LEFT_OVERRIDE}stein"),
        ("city", "Falken\u200bstein"),
        ("gpu_model", f"NVIDIA{RIGHT_TO_LEFT_OVERRIDE} L4"),
        ("description", f"Fast{RIGHT_TO_LEFT_OVERRIDE} box"),
        ("description", "Fast \x1b[31mbox"),
    ],
)
def test_offering_form_rejects_invisible_characters(client, provider, account, field, value):
    client.force_login(provider.user)
    extra = {"gpu_count": "1"} if field == "gpu_model" else {}

    response = client.post(reverse("marketplace:offering_create"), _offering_form(account, **{field: value}, **extra))

    assert response.status_code == 200
    assert field in response.context["form"].errors
    assert not provider.offerings.exists()


@pytest.mark.django_db
def test_offering_form_keeps_multiline_description(client, provider, account):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:offering_create"), _offering_form(account, description="Line one\r\nLine two\tend")
    )

    assert response.status_code == 302
    assert provider.offerings.get().description == "Line one\nLine two\tend"


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("city", f"Nurem{RIGHT_TO_LEFT_OVERRIDE}berg"),
        ("gpu_model", "L4\u2066"),
        ("description", f"Four{RIGHT_TO_LEFT_OVERRIDE} cores."),
        ("description", "Four\x00cores."),
    ],
)
def test_api_offering_rejects_invisible_characters(provider, account, field, value):
    body = {
        "name": "Acme medium",
        "description": "Four cores.",
        "product_type": "vm",
        "cloud_account": account.pk,
        "vcpu": 4,
        "memory_mib": 8192,
        "disk_gb": 80,
        "location_code": "nbg1",
        "server_type": "cx32",
        "image": "ubuntu-24.04",
        "price_cents": 1500,
        "currency": "EUR",
        field: value,
    }
    if field == "gpu_model":
        body["gpu_count"] = 1

    response = _api(provider.user).post("/api/v1/provider/offerings/", body, format="json")

    assert response.status_code == 400
    assert field in response.json()


@pytest.mark.django_db
def test_provider_description_rejects_override_on_page(client, provider):
    client.force_login(provider.user)

    response = client.post(
        reverse("marketplace:provider_profile_save"),
        {"profile-display_name": "Acme Compute", "profile-description": f"We{RIGHT_TO_LEFT_OVERRIDE} host", "profile-country": "DE"},
    )

    assert response.status_code == 200
    assert "description" in response.context["profile_form"].errors
    assert ProviderProfile.objects.get(pk=provider.pk).description == ""


@pytest.mark.django_db
def test_provider_description_rejects_control_character_in_api(provider):
    response = _api(provider.user).patch("/api/v1/provider/profile/", {"description": "We\x08 host"}, format="json")

    assert response.status_code == 400
    assert "description" in response.json()


@pytest.mark.django_db
def test_recipe_description_rejects_isolate(provider):
    recipe = Recipe(author=provider.user, name="Nginx", slug="nginx", description="Installs\u2067 nginx")

    with pytest.raises(ValidationError) as error:
        recipe.full_clean()

    assert "description" in error.value.message_dict


# --- reject reason ------------------------------------------------------------------------------


@pytest.fixture
def paid_contract(db):
    provider = make_provider(display_name="Manual Cloud", auto_accept=False)
    offering = make_offering(provider=provider)
    return make_contract(tenant=make_user(), offering=offering)


def _reject_page(client, contract, reason: str):
    client.force_login(contract.provider.user)
    return client.post(reverse("marketplace:rental_reject", kwargs={"public_id": contract.public_id}), {"reason": reason})


@pytest.mark.django_db
def test_reject_page_reason_over_limit_is_error(client, paid_contract):
    response = _reject_page(client, paid_contract, "x" * 2001)

    paid_contract.refresh_from_db()
    assert response.status_code == 200
    assert paid_contract.status == ContractStatus.PAID
    assert response.context["reject_form"].errors["reason"] == [
        "The message to the tenant is 2001 characters; shorten it to 2000 or fewer."
    ]
    # The typed text is kept for editing.
    assert "x" * 2001 in response.content.decode()


@pytest.mark.django_db
def test_reject_page_counts_crlf_as_one_character(client, paid_contract):
    # A browser's maxlength counts each line break once but submits it as CRLF.
    reason = "\r\n".join(["y" * 99] * 20)

    response = _reject_page(client, paid_contract, reason)

    paid_contract.refresh_from_db()
    assert response.status_code == 302
    assert paid_contract.status == ContractStatus.REJECTED
    assert paid_contract.status_reason == "\n".join(["y" * 99] * 20)


@pytest.mark.django_db
def test_reject_page_reason_with_override_is_error(client, paid_contract):
    response = _reject_page(client, paid_contract, f"Sorry{RIGHT_TO_LEFT_OVERRIDE}")

    paid_contract.refresh_from_db()
    assert paid_contract.status == ContractStatus.PAID
    assert "text-direction" in response.context["reject_form"].errors["reason"][0]


@pytest.mark.django_db
@pytest.mark.parametrize("length", [2001, 5000])
def test_api_reject_reason_over_limit_is_400(paid_contract, length):
    response = _api(paid_contract.provider.user).post(
        f"/api/v1/provider/rentals/{paid_contract.public_id}/reject/", {"reason": "x" * length}, format="json"
    )

    paid_contract.refresh_from_db()
    assert response.status_code == 400
    assert response.json()["reason"] == [
        f"The message to the tenant is {length} characters; shorten it to 2000 or fewer."
    ]
    assert paid_contract.status == ContractStatus.PAID


@pytest.mark.django_db
def test_api_reject_reason_with_override_is_400(paid_contract):
    response = _api(paid_contract.provider.user).post(
        f"/api/v1/provider/rentals/{paid_contract.public_id}/reject/", {"reason": "No\u202d capacity"}, format="json"
    )

    assert response.status_code == 400
    assert "reason" in response.json()


@pytest.mark.django_db
def test_api_reject_reason_of_2000_is_accepted(paid_contract):
    response = _api(paid_contract.provider.user).post(
        f"/api/v1/provider/rentals/{paid_contract.public_id}/reject/", {"reason": "x" * 2000}, format="json"
    )

    assert response.status_code == 200
    assert response.json()["status"] == ContractStatus.REJECTED


# --- SSH key comments, PEM keys and byte-order marks ------------------------------------------


def _key_with_comment(comment: str) -> str:
    key_type, key_data = ssh_public_key().split()[:2]
    return f"{key_type} {key_data} {comment}"


@pytest.mark.parametrize("comment", [f"me@laptop{RIGHT_TO_LEFT_OVERRIDE}", "me\u200f@laptop", "me\u2066@laptop"])
def test_key_comment_with_direction_character_is_rejected(comment):
    with pytest.raises(ValidationError) as error:
        parse_public_key(_key_with_comment(comment))

    assert error.value.code == "comment_bidi_control"
    assert "key comment contains an invisible text-direction character" in error.value.messages[0]


@pytest.mark.parametrize("comment", ["me\x1b[2J@laptop", "me\x07", "a\tb", "me\u2028@laptop"])
def test_key_comment_with_control_character_is_rejected(comment):
    with pytest.raises(ValidationError) as error:
        parse_public_key(_key_with_comment(comment))

    assert error.value.code == "comment_control_character"


def test_key_comment_over_256_characters_is_rejected():
    with pytest.raises(ValidationError) as error:
        parse_public_key(_key_with_comment("c" * 257))

    assert error.value.messages == ["The key comment is 257 characters; shorten it to 256 or fewer."]


def test_key_comment_of_256_characters_is_accepted():
    parsed = parse_public_key(_key_with_comment("c" * 256))

    assert parsed.comment == "c" * 256


def test_key_comment_with_unicode_letters_is_accepted():
    parsed = parse_public_key(_key_with_comment("jürgen@büro ключ"))

    assert parsed.comment == "jürgen@büro ключ"


def test_pkcs8_pem_public_key_names_format_and_fix():
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    with pytest.raises(ValidationError) as error:
        parse_public_key(pem)

    message = error.value.messages[0]
    assert error.value.code == "pem_public_key"
    assert "PEM (PKCS#8) public key" in message
    assert "ssh-keygen -i -m PKCS8 -f key.pem" in message
    assert "lines" not in message


def test_pkcs1_pem_rsa_public_key_names_fix():
    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.PKCS1)
        .decode()
    )

    with pytest.raises(ValidationError) as error:
        parse_public_key(pem)

    assert "ssh-keygen -i -m PEM -f key.pem" in error.value.messages[0]


def test_key_with_byte_order_mark_is_accepted():
    line = ssh_public_key()

    parsed = parse_public_key("\ufeff" + line + "\n")

    assert parsed.normalized == line


@pytest.mark.django_db
def test_ssh_key_page_shows_pem_message(client):
    client.force_login(make_user())
    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )

    response = client.post(reverse("marketplace:ssh_keys"), {"name": "laptop", "public_key": pem})

    assert "ssh-keygen -i -m PKCS8 -f key.pem" in response.content.decode()
