"""Input validation shared by models, forms, admin and API: names, provider identity, offering limits."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction

from marketplace.models import Contract, Offering, ProviderProfile, ProvisioningStep
from marketplace.services.providers import provider_profile_create, provider_profile_update
from marketplace.services.ssh_keys import ssh_key_create
from marketplace.validators import (
    CURRENCIES,
    ISO_3166_ALPHA_2_CODES,
    validate_country_code,
    validate_visible_text,
)
from provisioning.services import cloud_account_create
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import (
    make_contract,
    make_offering,
    make_provider,
    make_recipe,
    make_superuser,
    make_user,
    ssh_public_key,
)

# --- invisible characters ------------------------------------------------------------------

BIDI_CONTROLS = ["\u202a", "\u202b", "\u202c", "\u202d", "\u202e", "\u2066", "\u2067", "\u2068", "\u2069", "\u200e", "\u200f", "\u061c"]


@pytest.mark.parametrize("character", BIDI_CONTROLS, ids=lambda c: f"U+{ord(c):04X}")
def test_visible_text_rejects_bidi_control(character: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_visible_text(f"Invoice{character}fdp.exe")

    assert caught.value.messages == [
        f"This name contains an invisible text-direction character (U+{ord(character):04X}); remove it."
    ]


@pytest.mark.parametrize(
    "value",
    [
        "Hetz\u200bner",  # zero-width space
        "Hetz\u200dner",  # zero-width joiner between ASCII letters
        "Hetz\u200cner",  # zero-width non-joiner between ASCII letters
        "\ufeffHetzner",  # byte order mark
        "Het\u00adzner",  # soft hyphen
        "Hetz\u2060ner",  # word joiner
        "Hetzner\U000e0041",  # tag character without a flag
    ],
)
def test_visible_text_rejects_invisible_format_characters(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_visible_text(value)

    assert "invisible formatting character" in caught.value.messages[0]


@pytest.mark.parametrize("value", ["line\nbreak", "bell\x07", "para\u2029graph"])
def test_visible_text_rejects_control_characters(value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        validate_visible_text(value)

    assert "control character or line break" in caught.value.messages[0]


@pytest.mark.parametrize(
    "value",
    [
        "Rocket Cloud 🚀",
        "Family 👨\u200d👩\u200d👧 hosting",  # emoji ZWJ sequence
        "Rainbow 🏳\ufe0f\u200d🌈",  # variation selector and ZWJ
        "Scotland 🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f",  # subdivision flag tags
        "سحابة عربية",  # Arabic
        "ענן ישראלי",  # Hebrew
        "می\u200cخواهم",  # Persian with a zero-width non-joiner
        "Café Zürich",
    ],
)
def test_visible_text_allows_emoji_and_scripts(value: str) -> None:
    validate_visible_text(value)


# --- provider identity ---------------------------------------------------------------------


@pytest.mark.django_db
def test_provider_name_taken_in_other_case_is_rejected() -> None:
    make_provider(display_name="Acme Compute")

    with pytest.raises(ValidationError) as caught:
        provider_profile_create(user=make_user(), display_name="ACME compute")

    assert caught.value.message_dict == {"display_name": ["A provider named 'Acme Compute' already exists; choose another name."]}


@pytest.mark.django_db
def test_provider_name_unique_in_database_ignoring_case() -> None:
    make_provider(display_name="Acme Compute")

    with pytest.raises(IntegrityError), transaction.atomic():
        ProviderProfile.objects.create(user=make_user(), display_name="acme COMPUTE", slug="acme-compute-copy")


@pytest.mark.django_db
def test_provider_rename_to_taken_name_is_rejected() -> None:
    make_provider(display_name="Acme Compute")
    other = make_provider(display_name="Other Compute")

    with pytest.raises(ValidationError) as caught:
        provider_profile_update(
            profile=other, actor=other.user, display_name="Acme compute", description="", website="", country="", auto_accept=True
        )

    assert "A provider named 'Acme Compute' already exists" in caught.value.message_dict["display_name"][0]


@pytest.mark.django_db
def test_provider_keeps_own_name_on_update() -> None:
    profile = make_provider(display_name="Acme Compute")

    updated = provider_profile_update(
        profile=profile, actor=profile.user, display_name="ACME Compute", description="", website="", country="", auto_accept=True
    )

    assert updated.display_name == "ACME Compute"


@pytest.mark.parametrize("name", ["Sandbox Cloud", "my sandbox", "SANDBOXED hosting", "Ｓａｎｄｂｏｘ Hosting"])
@pytest.mark.django_db
def test_provider_name_with_sandbox_is_reserved(name: str) -> None:
    with pytest.raises(ValidationError) as caught:
        provider_profile_create(user=make_user(), display_name=name)

    assert caught.value.message_dict == {
        "display_name": ['"Sandbox" is reserved for simulated offerings; choose another name.']
    }


@pytest.mark.django_db
def test_staff_may_name_provider_sandbox() -> None:
    profile = provider_profile_create(user=make_superuser(), display_name="Platform Sandbox")

    assert profile.display_name == "Platform Sandbox"


@pytest.mark.django_db
def test_provider_name_with_bidi_control_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        provider_profile_create(user=make_user(), display_name="Acme\u202eetupmoC")

    assert caught.value.message_dict["display_name"] == [
        "This name contains an invisible text-direction character (U+202E); remove it."
    ]


# --- other names ---------------------------------------------------------------------------


@pytest.mark.django_db
def test_ssh_key_name_with_bidi_control_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        ssh_key_create(user=make_user(), name="laptop\u2067", public_key=ssh_public_key())

    assert caught.value.message_dict["name"] == [
        "This name contains an invisible text-direction character (U+2067); remove it."
    ]


@pytest.mark.django_db
def test_cloud_account_label_with_bidi_control_is_rejected() -> None:
    with pytest.raises(ValidationError) as caught:
        cloud_account_create(owner=make_user(), backend="sandbox", label="Prod\u202d", token="")

    assert caught.value.message_dict["label"] == [
        "This name contains an invisible text-direction character (U+202D); remove it."
    ]


@pytest.mark.django_db
def test_offering_name_with_bidi_control_fails_model_validation() -> None:
    offering = make_offering(provider=make_provider())
    offering.name = "Cheap\u202eGPU"

    with pytest.raises(ValidationError) as caught:
        offering.full_clean()

    assert caught.value.message_dict["name"] == [
        "This name contains an invisible text-direction character (U+202E); remove it."
    ]


# --- token errors --------------------------------------------------------------------------


@pytest.mark.django_db
def test_rejected_hetzner_token_message(hetzner_api) -> None:
    with pytest.raises(ValidationError) as caught:
        cloud_account_create(owner=make_user(), backend="hetzner", label="Prod", token="wrong-token")

    assert caught.value.message_dict["token"] == [
        "Hetzner rejected this API token (HTTP 401: unable to authenticate). Create a read/write token in the "
        "Hetzner Cloud console under Security > API tokens and paste it here."
    ]


@pytest.mark.django_db
def test_accepted_hetzner_token_is_valid(hetzner_api) -> None:
    account = cloud_account_create(owner=make_user(), backend="hetzner", label="Prod", token=TEST_HCLOUD_TOKEN)

    assert account.validation_status == "valid"


# --- offering limits -----------------------------------------------------------------------


@pytest.fixture
def offering(db) -> Offering:
    return make_offering(provider=make_provider())


def _errors(offering: Offering) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as caught:
        offering.full_clean()
    return caught.value.message_dict


@pytest.mark.parametrize(
    ("field", "value", "expected"),
    [
        ("memory_mib", 16 * 1024 * 1024 + 1, "less than or equal to 16777216"),
        ("disk_gb", 1_000_001, "less than or equal to 1000000"),
        ("gpu_count", 65, "less than or equal to 64"),
    ],
)
def test_offering_spec_above_limit_is_rejected(offering: Offering, field: str, value: int, expected: str) -> None:
    setattr(offering, field, value)
    if field == "gpu_count":
        offering.gpu_model = "NVIDIA L4"

    errors = _errors(offering)

    assert expected in errors[field][0]


def test_offering_specs_at_limits_are_valid(offering: Offering) -> None:
    offering.memory_mib = 16 * 1024 * 1024
    offering.disk_gb = 1_000_000
    offering.gpu_model = "NVIDIA H100"
    offering.gpu_count = 64

    offering.full_clean()


def test_offering_gpu_model_without_count_names_both_fields(offering: Offering) -> None:
    offering.gpu_model = "NVIDIA L4"
    offering.gpu_count = 0

    errors = _errors(offering)

    assert errors["gpu_model"] == errors["gpu_count"]
    assert "GPU model 'NVIDIA L4' needs a GPU count of 1 or more" in errors["gpu_model"][0]


def test_offering_gpu_count_without_model_names_both_fields(offering: Offering) -> None:
    offering.gpu_model = ""
    offering.gpu_count = 2

    errors = _errors(offering)

    assert errors["gpu_model"] == errors["gpu_count"]
    assert "GPU count 2 needs a GPU model" in errors["gpu_count"][0]


@pytest.mark.parametrize("country", ["XX", "UK", "EU", "de", "D", "ZZ"])
def test_offering_country_not_iso_3166_is_rejected(offering: Offering, country: str) -> None:
    offering.country = country

    errors = _errors(offering)

    assert "is not an ISO 3166-1 country code" in errors["country"][0]


def test_country_codes_are_the_249_official_ones() -> None:
    assert len(ISO_3166_ALPHA_2_CODES) == 249
    for code in ("DE", "FI", "US", "GB", "AX", "SS", "BQ", "CW", "SX"):
        validate_country_code(code)


@pytest.mark.parametrize("currency", ["XYZ", "BTC", "eur", "EURO"])
def test_offering_currency_outside_list_is_rejected(offering: Offering, currency: str) -> None:
    offering.currency = currency

    errors = _errors(offering)

    assert errors["currency"][0].startswith(f"Unsupported currency {currency!r}; use one of EUR, USD, GBP")


def test_currency_list_has_required_codes() -> None:
    codes = {code for code, _label in CURRENCIES}

    assert {"EUR", "USD", "GBP", "CHF", "SEK", "NOK", "DKK", "PLN", "CZK", "CAD", "AUD"} <= codes


@pytest.mark.parametrize("currency", ["JPY", "KRW", "ISK", "CLP", "VND"])
def test_currency_list_has_no_zero_decimal_currency(currency) -> None:
    # Prices are stored in hundredths, and ISO 4217 gives these currencies no minor unit.
    codes = {code for code, _label in CURRENCIES}

    assert currency not in codes


# --- progress steps ------------------------------------------------------------------------


@pytest.mark.django_db
def test_steps_of_plain_vm_omit_running_recipe() -> None:
    contract = make_contract(tenant=make_user(), offering=make_offering(provider=make_provider()))
    Contract.objects.filter(pk=contract.pk).update(status="active", provisioning_step="")
    contract.refresh_from_db()

    steps = contract.step_states()

    assert [step for step, _label, _state in steps] == [
        ProvisioningStep.CREATING_SERVER,
        ProvisioningStep.WAITING_FOR_BOOT,
        ProvisioningStep.WAITING_FOR_SSH,
        ProvisioningStep.FINALIZING,
    ]
    assert all(state == "done" for _step, _label, state in steps)


@pytest.mark.django_db
def test_steps_with_recipe_include_running_recipe() -> None:
    provider = make_provider()
    version = make_recipe(author=provider.user)
    contract = make_contract(tenant=make_user(), offering=make_offering(provider=provider, recipe_version=version))
    Contract.objects.filter(pk=contract.pk).update(provisioning_step=ProvisioningStep.RUNNING_RECIPE)
    contract.refresh_from_db()

    states = {step: state for step, _label, state in contract.step_states()}

    assert states[ProvisioningStep.WAITING_FOR_SSH] == "done"
    assert states[ProvisioningStep.RUNNING_RECIPE] == "current"
    assert states[ProvisioningStep.FINALIZING] == "pending"
