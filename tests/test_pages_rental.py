"""The rental page: who may see it, htmx status polling, and cancel / accept / reject."""

from __future__ import annotations

import pytest
from django.urls import reverse

from marketplace.models import Contract, ContractStatus
from recipes.models import RecipeLogChunk, RecipeRun, RecipeRunStatus
from tests.factories import make_contract, make_offering, make_provider, make_superuser, make_user


@pytest.fixture
def provider(db):
    return make_provider(display_name="Acme Compute")


@pytest.fixture
def tenant(db):
    return make_user(email="tenant@example.com")


@pytest.fixture
def contract(provider, tenant):
    """A paid sandbox rental; auto-accept moved it to provisioning (the task never runs here)."""
    offering = make_offering(provider=provider, name="Small DE")
    return make_contract(tenant=tenant, offering=offering)


def _status_url(contract) -> str:
    return reverse("marketplace:rental_status", kwargs={"public_id": contract.public_id})


def _set(contract, **fields) -> Contract:
    # Test setup only: put the contract into a state the pipeline would reach.
    Contract.objects.filter(pk=contract.pk).update(**fields)
    contract.refresh_from_db()
    return contract


@pytest.mark.django_db
def test_rental_page_visible_to_tenant(client, contract, tenant):
    client.force_login(tenant)

    response = client.get(contract.get_absolute_url())
    html = response.content.decode()

    assert response.status_code == 200
    assert "Provisioning" in html
    assert "Creating server" in html
    assert "Sandbox payment — no real money moves" in html
    assert "Sandbox — simulated, no real machine" in html
    assert "Awaiting payment" in html  # first history row


@pytest.mark.django_db
def test_rental_page_visible_to_provider_and_staff(client, contract, provider):
    client.force_login(provider.user)
    assert client.get(contract.get_absolute_url()).status_code == 200

    client.force_login(make_superuser())
    assert client.get(contract.get_absolute_url()).status_code == 200


@pytest.mark.django_db
def test_rental_page_other_user_gets_404(client, contract):
    client.force_login(make_user())

    assert client.get(contract.get_absolute_url()).status_code == 404
    assert client.get(_status_url(contract)).status_code == 404


@pytest.mark.django_db
def test_rental_page_anonymous_redirects_to_login(client, contract):
    response = client.get(contract.get_absolute_url())

    assert response.status_code == 302
    assert response["Location"].startswith(reverse("account_login"))


@pytest.mark.django_db
def test_status_partial_polls_while_provisioning(client, contract, tenant):
    client.force_login(tenant)

    response = client.get(_status_url(contract), headers={"HX-Request": "true"})
    html = response.content.decode()

    assert contract.status == ContractStatus.PROVISIONING
    assert 'hx-trigger="every 2s"' in html
    assert f'hx-get="{_status_url(contract)}' in html
    assert "<html" not in html


@pytest.mark.django_db
def test_status_partial_stops_polling_when_active(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, provisioning_step="", ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)

    response = client.get(_status_url(contract), headers={"HX-Request": "true"})
    html = response.content.decode()

    assert "hx-trigger" not in html
    assert "ssh root@203.0.113.7" in html


@pytest.mark.django_db
def test_status_partial_refreshes_page_on_status_change(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)

    response = client.get(_status_url(contract) + "?shown=provisioning", headers={"HX-Request": "true"})

    assert response["HX-Refresh"] == "true"


@pytest.mark.django_db
def test_rental_page_shows_connection_and_recipe_log(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7", ssh_port=2222)
    run = RecipeRun.objects.create(
        contract=contract, status=RecipeRunStatus.SUCCEEDED, exit_code=0, timeout_seconds=60, duration_seconds=3.5
    )
    RecipeLogChunk.objects.create(run=run, sequence=0, text="installing nginx\n")
    RecipeLogChunk.objects.create(run=run, sequence=1, text="<done>\n")
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "ssh -p 2222 root@203.0.113.7" in html
    assert contract.ssh_key_fingerprint in html
    assert "installing nginx" in html
    assert "&lt;done&gt;" in html
    assert "3.5 s" in html
    assert "Succeeded" in html


@pytest.mark.django_db
def test_rental_page_shows_host_key_fingerprint(client, contract, tenant):
    from marketplace.sshkeys import parse_public_key
    from tests.factories import ssh_public_key

    host_key = ssh_public_key("host")
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7", host_public_key=host_key)
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert parse_public_key(host_key).fingerprint_sha256 in html


@pytest.mark.django_db
def test_rental_page_failed_shows_reason_and_refund(client, contract, tenant):
    from marketplace.services.contracts import contract_fail

    contract_fail(contract_id=contract.pk, reason="Server type sold out in fsn1.")
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "Provisioning failed." in html
    assert "Server type sold out in fsn1." in html
    assert "Refunded in full" in html


# --- cancel -----------------------------------------------------------------------------------


@pytest.mark.django_db
def test_cancel_active_sandbox_rental_ends_now(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)
    assert "ends the rental now" in client.get(contract.get_absolute_url()).content.decode()

    response = client.post(reverse("marketplace:rental_cancel", kwargs={"public_id": contract.public_id}), {"confirm": "yes"})

    contract.refresh_from_db()
    assert response.status_code == 302
    assert contract.status == ContractStatus.TERMINATING


@pytest.mark.django_db
def test_cancel_without_confirmation_changes_nothing(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)

    client.post(reverse("marketplace:rental_cancel", kwargs={"public_id": contract.public_id}), {})

    contract.refresh_from_db()
    assert contract.status == ContractStatus.ACTIVE


@pytest.mark.django_db
def test_cancel_by_provider_is_forbidden(client, contract, provider):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(provider.user)

    response = client.post(reverse("marketplace:rental_cancel", kwargs={"public_id": contract.public_id}), {"confirm": "yes"})

    contract.refresh_from_db()
    assert response.status_code == 403
    assert contract.status == ContractStatus.ACTIVE


@pytest.mark.django_db
def test_cancel_real_rental_explains_period_end(client, tenant):
    from provisioning.models import Backend
    from tests.factories import make_cloud_account

    provider = make_provider()
    account = make_cloud_account(owner=provider.user, backend=Backend.HETZNER)
    contract = make_contract(tenant=tenant, offering=make_offering(provider=provider, cloud_account=account))
    _set(contract, status=ContractStatus.ACTIVE, ip_address="198.51.100.7", cloud_server_id="7")
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert f"runs until {contract.paid_until:%Y-%m-%d %H:%M} UTC" in html


# --- accept and reject ------------------------------------------------------------------------


@pytest.fixture
def waiting_contract(tenant):
    """A paid rental of a provider without auto-accept, waiting for the decision."""
    provider = make_provider(auto_accept=False)
    return make_contract(tenant=tenant, offering=make_offering(provider=provider))


@pytest.mark.django_db
def test_provider_sees_accept_and_reject(client, waiting_contract):
    client.force_login(waiting_contract.provider.user)

    html = client.get(waiting_contract.get_absolute_url()).content.decode()

    assert waiting_contract.status == ContractStatus.PAID
    assert "Accept and create the server" in html
    assert "Reject and refund" in html


@pytest.mark.django_db
def test_tenant_sees_no_accept_buttons(client, waiting_contract, tenant):
    client.force_login(tenant)

    html = client.get(waiting_contract.get_absolute_url()).content.decode()

    assert "Accept and create the server" not in html


@pytest.mark.django_db
def test_provider_accepts(client, waiting_contract):
    client.force_login(waiting_contract.provider.user)

    response = client.post(reverse("marketplace:rental_accept", kwargs={"public_id": waiting_contract.public_id}))

    waiting_contract.refresh_from_db()
    assert response.status_code == 302
    assert waiting_contract.status == ContractStatus.PROVISIONING


@pytest.mark.django_db
def test_provider_rejects_with_message(client, waiting_contract):
    client.force_login(waiting_contract.provider.user)

    client.post(
        reverse("marketplace:rental_reject", kwargs={"public_id": waiting_contract.public_id}),
        {"reason": "Maintenance this week."},
    )

    waiting_contract.refresh_from_db()
    assert waiting_contract.status == ContractStatus.REJECTED
    assert waiting_contract.status_reason == "Maintenance this week."


@pytest.mark.django_db
def test_tenant_cannot_accept_or_reject(client, waiting_contract, tenant):
    client.force_login(tenant)

    accept = client.post(reverse("marketplace:rental_accept", kwargs={"public_id": waiting_contract.public_id}))
    reject = client.post(reverse("marketplace:rental_reject", kwargs={"public_id": waiting_contract.public_id}))

    waiting_contract.refresh_from_db()
    assert accept.status_code == 403
    assert reject.status_code == 403
    assert waiting_contract.status == ContractStatus.PAID


@pytest.mark.django_db
def test_stranger_cannot_accept(client, waiting_contract):
    client.force_login(make_user())

    response = client.post(reverse("marketplace:rental_accept", kwargs={"public_id": waiting_contract.public_id}))

    assert response.status_code == 404


@pytest.mark.django_db
def test_accept_twice_shows_message_not_error(client, waiting_contract):
    client.force_login(waiting_contract.provider.user)
    url = reverse("marketplace:rental_accept", kwargs={"public_id": waiting_contract.public_id})
    client.post(url)

    response = client.post(url, follow=True)

    assert response.status_code == 200
    assert "Nothing changed" in response.content.decode()


@pytest.mark.django_db
def test_accept_get_is_not_allowed(client, waiting_contract):
    client.force_login(waiting_contract.provider.user)

    response = client.get(reverse("marketplace:rental_accept", kwargs={"public_id": waiting_contract.public_id}))

    assert response.status_code == 405


@pytest.mark.django_db
def test_dashboard_lists_rentals_with_badges(client, contract, tenant):
    client.force_login(tenant)

    html = client.get(reverse("marketplace:dashboard")).content.decode()

    assert "Small DE" in html
    assert f'badge-{contract.status_colour}' in html


@pytest.mark.django_db
def test_dashboard_empty_state(client, tenant):
    client.force_login(tenant)

    html = client.get(reverse("marketplace:dashboard")).content.decode()

    assert "No rentals yet" in html
    assert f'href="{reverse("marketplace:catalog")}"' in html


# --- history, connection, wording and navigation ------------------------------------------------


def _add_worker_event(contract) -> None:
    from marketplace.models import ContractEvent

    ContractEvent.objects.create(
        contract=contract,
        from_status=ContractStatus.PROVISIONING,
        to_status=ContractStatus.PROVISIONING,
        step="creating_server",
        actor_label="worker-7.internal:4242:1f2e3d",
    )


@pytest.mark.django_db
def test_history_hides_worker_ids_from_tenant(client, contract, tenant):
    _add_worker_event(contract)
    client.force_login(tenant)

    response = client.get(contract.get_absolute_url())
    actors = [event["actor_label"] for event in response.context["events"]]

    assert "worker-7.internal" not in response.content.decode()
    assert actors == ["Tenant", "Tenant", "Platform", "Platform"]


@pytest.mark.django_db
def test_history_hides_worker_ids_from_provider(client, contract, provider):
    _add_worker_event(contract)
    client.force_login(provider.user)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "worker-7.internal" not in html
    assert "<td>Platform</td>" in html


@pytest.mark.django_db
def test_history_shows_raw_actor_to_staff(client, contract):
    _add_worker_event(contract)
    client.force_login(make_superuser())

    response = client.get(contract.get_absolute_url())
    actors = [event["actor_label"] for event in response.context["events"]]

    assert actors == ["tenant", "tenant", "system", "worker-7.internal:4242:1f2e3d"]


@pytest.mark.django_db
@pytest.mark.parametrize(
    "status",
    [ContractStatus.TERMINATED, ContractStatus.FAILED, ContractStatus.CANCELLED, ContractStatus.REJECTED],
)
def test_ended_rental_hides_connection_details(client, contract, tenant, status):
    _set(contract, status=status, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "Server deleted" in html
    assert "203.0.113.7" not in html
    assert "ssh root@" not in html


@pytest.mark.django_db
def test_active_rental_shows_connection_details(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "ssh root@203.0.113.7" in html
    assert "Server deleted" not in html


@pytest.mark.django_db
def test_cancel_box_of_sandbox_rental_names_sandbox_payment(client, contract, tenant):
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert "nothing was paid" not in html
    assert "Cancelling ends the rental now and deletes the server (Sandbox payment — no real money moved)." in html
    assert html.count("Sandbox payment — no real money moved") == 2  # cancel box and the payment row


@pytest.mark.django_db
def test_cancel_box_of_self_rental_says_free(client, provider):
    own = make_contract(tenant=provider.user, offering=make_offering(provider=provider))
    _set(own, status=ContractStatus.ACTIVE, ip_address="203.0.113.8", cloud_server_id="8")
    client.force_login(provider.user)

    html = client.get(own.get_absolute_url()).content.decode()

    assert "(self-rental: free, nothing was paid)" in html


def _nav_current(html: str) -> list[str]:
    import re

    return re.findall(r'<a href="[^"]*" aria-current="page">([^<]+)</a>', html)


@pytest.mark.django_db
def test_nav_highlights_provider_on_incoming_rental(client, contract, provider):
    client.force_login(provider.user)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert _nav_current(html) == ["Provider"]


@pytest.mark.django_db
def test_nav_highlights_my_rentals_for_tenant(client, contract, tenant):
    client.force_login(tenant)

    html = client.get(contract.get_absolute_url()).content.decode()

    assert _nav_current(html) == ["My rentals"]


@pytest.mark.django_db
def test_forbidden_cancel_logs_one_line_without_traceback(client, contract, provider):
    import logging

    records: list[logging.LogRecord] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = _Collect()
    request_logger = logging.getLogger("django.request")
    request_logger.addHandler(handler)
    _set(contract, status=ContractStatus.ACTIVE, ip_address="203.0.113.7", cloud_server_id="7")
    client.force_login(provider.user)
    try:
        response = client.post(
            reverse("marketplace:rental_cancel", kwargs={"public_id": contract.public_id}), {"confirm": "yes"}
        )
    finally:
        request_logger.removeHandler(handler)

    assert response.status_code == 403
    assert "Access denied" in response.content.decode()
    assert len(records) == 1
    assert records[0].exc_info is None


def test_django_logger_prints_once(settings):
    # Django's default config gives "django" a console handler of its own. Ours replaces it and
    # stops propagation to the root handler, so each record is printed once.
    django_config = settings.LOGGING["loggers"]["django"]

    assert django_config["handlers"] == ["console"]
    assert django_config["propagate"] is False
    assert settings.LOGGING["root"]["handlers"] == ["console"]
