"""CSV export and import of offerings: file checks, per-row results, the preview page, the API."""

from __future__ import annotations

import codecs
import csv
import io
from datetime import timedelta
from types import SimpleNamespace

import pytest
from django.http.multipartparser import MultiPartParser
from django.test.client import BOUNDARY, MULTIPART_CONTENT, encode_multipart
from django.urls import reverse
from django.utils import timezone
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.test import APIClient

from marketplace.api.parsers import CsvBodyParser, CsvBodyTooLarge
from marketplace.models import Offering, OfferingImport, StockStatus, Visibility
from marketplace.offering_csv_format import (
    COLUMN_NAMES,
    FORMULA_START_CHARACTERS,
    CsvFileError,
    CsvFileTooLarge,
    csv_decode,
    formula_escape,
    formula_unescape,
)
from marketplace.services.offering_csv import (
    offering_csv_export,
    offering_csv_import,
    offering_import_apply,
    offering_import_create,
)
from marketplace.uploads import SizeLimitedUploadHandler
from provisioning.models import Backend
from tests.conftest import TEST_HCLOUD_TOKEN
from tests.factories import make_cloud_account, make_offering, make_provider, make_recipe, make_user

IMPORT_URL = reverse("marketplace:offering_csv_import")
EXPORT_URL = reverse("marketplace:offering_csv_export")
API_EXPORT_URL = "/api/v1/provider/offerings/export.csv"
API_IMPORT_URL = "/api/v1/provider/offerings/import.csv"
TEN_MB = 10 * 1024 * 1024


@pytest.fixture
def provider(db):
    return make_provider(display_name="Acme Compute")


@pytest.fixture
def account(provider):
    return make_cloud_account(owner=provider.user, label="Sandbox A")


@pytest.fixture
def other_provider(db):
    return make_provider(display_name="Other Cloud")


def offering_row(**overrides) -> dict[str, str]:
    """Return the cells of a valid new sandbox offering in the "Sandbox A" account."""
    row = {
        "slug": "tiny-box",
        "name": "Tiny box",
        "description": "Two cores.",
        "product_type": "vm",
        "cloud_account_label": "Sandbox A",
        "server_type": "cx22",
        "image": "ubuntu-24.04",
        "location_code": "fsn1",
        "country": "",
        "city": "",
        "vcpu": "2",
        "memory_mib": "4096",
        "disk_gb": "40",
        "gpu_model": "",
        "gpu_count": "0",
        "price_cents": "459",
        "currency": "EUR",
        "visibility": "public",
        "stock_status": "in_stock",
        "recipe_slug": "",
        "recipe_version": "",
    }
    row.update(overrides)
    return row


def csv_text(rows: list[dict[str, str]], *, columns: list[str] | None = None, delimiter: str = ",") -> str:
    columns = columns or list(rows[0])
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator="\r\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([row.get(column, "") for column in columns])
    return buffer.getvalue()


def parse_csv(text: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(text.removeprefix("\ufeff"), newline="")))


def api_client(user) -> APIClient:
    client = APIClient()
    client.force_login(user)
    return client


def upload_page(client, data: bytes, name: str = "offerings.csv"):
    upload = io.BytesIO(data)
    upload.name = name
    return client.post(IMPORT_URL, {"file": upload})


def errors_of(report, row: int) -> list[str]:
    return [error.detail for result in report.rows if result.row == row for error in result.errors]


def result_of(report, row: int):
    return next(result for result in report.rows if result.row == row)


# --- formula escaping ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        ("=HYPERLINK(\"http://x\")", "'=HYPERLINK(\"http://x\")"),
        ("+1", "'+1"),
        ("-2+3", "'-2+3"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tcmd", "'\tcmd"),
        ("\rcmd", "'\rcmd"),
        ("'=already", "''=already"),
        ("''", "'''"),
        ("'plain", "'plain"),
        ("plain", "plain"),
        ("", ""),
    ],
)
def test_formula_escape_cases(value, escaped):
    assert formula_escape(value) == escaped
    assert formula_unescape(escaped) == value


@given(st.text(max_size=20))
def test_formula_escape_round_trip(value):
    escaped = formula_escape(value)

    assert formula_unescape(escaped) == value
    assert not escaped or escaped[0] not in FORMULA_START_CHARACTERS


# --- export -------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_has_header_and_own_rows_by_slug(provider, account, other_provider):
    make_offering(provider=provider, cloud_account=account, slug="b-box", name="B box", price_cents=900)
    make_offering(provider=provider, cloud_account=account, slug="a-box", name="A box", memory_mib=8192)
    make_offering(provider=other_provider, slug="foreign-box")

    text = offering_csv_export(provider=provider)
    rows = parse_csv(text)

    assert text.splitlines()[0] == ",".join(f'"{name}"' for name in COLUMN_NAMES)
    assert [row["slug"] for row in rows] == ["a-box", "b-box"]
    assert rows[0]["memory_mib"] == "8192"
    assert rows[0]["cloud_account_label"] == "Sandbox A"
    assert rows[1]["price_cents"] == "900"
    assert rows[1]["recipe_slug"] == ""


@pytest.mark.django_db
def test_export_escapes_formula_cells(provider, account):
    make_offering(
        provider=provider, cloud_account=account, slug="formula", name="=HYPERLINK(\"http://evil\")", description="@SUM(1)"
    )

    rows = parse_csv(offering_csv_export(provider=provider))

    assert rows[0]["name"] == "'=HYPERLINK(\"http://evil\")"
    assert rows[0]["description"] == "'@SUM(1)"


@pytest.mark.django_db
def test_export_runs_one_query(provider, account, django_assert_num_queries):
    recipe = make_recipe(author=provider.user)
    for number in range(5):
        make_offering(provider=provider, cloud_account=account, slug=f"box-{number}", recipe_version=recipe)

    with django_assert_num_queries(1):
        offering_csv_export(provider=provider)


@pytest.mark.django_db
def test_export_page_has_bom_and_attachment(client, provider, account):
    make_offering(provider=provider, cloud_account=account, slug="tiny-box", city="Zürich")
    client.force_login(provider.user)

    response = client.get(EXPORT_URL)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="offerings-acme-compute-')
    assert response.content.startswith(codecs.BOM_UTF8)
    assert "Zürich" in response.content.decode("utf-8")


# --- round trips --------------------------------------------------------------------------------


@pytest.mark.django_db
def test_export_import_round_trip_is_unchanged(provider, account):
    recipe = make_recipe(author=provider.user)
    make_offering(provider=provider, cloud_account=account, slug="plain", name="Plain", description="Line one\nLine two, \"quoted\"")
    make_offering(
        provider=provider,
        cloud_account=account,
        slug="gpu",
        name="Grafik 🚀 Zürich",
        gpu_model="NVIDIA L4",
        gpu_count=2,
        visibility=Visibility.PRIVATE,
        stock_status=StockStatus.LIMITED,
        currency="CHF",
        recipe_version=recipe,
    )
    make_offering(provider=provider, cloud_account=account, slug="formula", name="=1+1", description="-rm -rf /")
    before = {offering.slug: offering.updated_at for offering in Offering.objects.all()}
    text = offering_csv_export(provider=provider, byte_order_mark=True)

    preview = offering_csv_import(user=provider.user, text=csv_decode(text.encode("utf-8")), dry_run=True)
    applied = offering_csv_import(user=provider.user, text=csv_decode(text.encode("utf-8")), dry_run=False)

    assert preview.summary == {"create": 0, "update": 0, "unchanged": 3, "error": 0}
    assert applied.summary == {"create": 0, "update": 0, "unchanged": 3, "error": 0}
    assert {offering.slug: offering.updated_at for offering in Offering.objects.all()} == before
    assert Offering.objects.get(slug="formula").name == "=1+1"


@pytest.mark.django_db
def test_formula_cell_import_stores_unescaped_text(provider, account):
    text = csv_text([offering_row(name="'=cmd|' /C calc'!A0", description="'@SUM(1)")])

    offering_csv_import(user=provider.user, text=text, dry_run=False)

    offering = Offering.objects.get(slug="tiny-box")
    assert offering.name == "=cmd|' /C calc'!A0"
    assert offering.description == "@SUM(1)"
    assert parse_csv(offering_csv_export(provider=provider))[0]["name"] == "'=cmd|' /C calc'!A0"


# --- a file that mixes valid and invalid rows ---------------------------------------------------


@pytest.fixture
def mixed_file(provider, account, other_provider):
    """An update, two creates, wrong units, a duplicate slug, another provider's slug, a bad image."""
    make_offering(provider=provider, cloud_account=account, slug="existing", name="Existing", price_cents=500)
    make_offering(provider=other_provider, slug="foreign", name="Foreign", price_cents=700)
    columns = [*COLUMN_NAMES, "colour"]
    rows = [
        offering_row(
            slug="existing", name="Existing", description="A small test server.", price_cents="650", colour="red"
        ),  # row 2
        offering_row(slug="new-box", name="New box"),  # row 3
        offering_row(slug="", name="Unnamed slug box"),  # row 4
        offering_row(slug="units", name="Units", memory_mib="16 GB"),  # row 5
        offering_row(slug="new-box", name="New box again"),  # row 6
        offering_row(slug="foreign", name="Hijacked", price_cents="1"),  # row 7
        offering_row(slug="bad-image", name="Bad image", image="windows-95"),  # row 8
        offering_row(slug="existing-two", name="Price in euros", price_cents="4.59", disk_gb="40GB"),  # row 9
    ]
    return csv_text(rows, columns=columns)


@pytest.mark.django_db
def test_mixed_file_dry_run_reports_each_row(provider, mixed_file):
    report = offering_csv_import(user=provider.user, text=mixed_file, dry_run=True)

    assert [result.action for result in report.rows] == [
        "update", "create", "create", "error", "error", "error", "error", "error"
    ]
    assert result_of(report, 2).changes == {"price_cents": {"old": "500", "new": "650"}}
    assert result_of(report, 4).slug == "unnamed-slug-box"
    assert errors_of(report, 5) == [
        "row 5, column memory_mib: must be a whole number, got '16 GB'; memory is in MiB, for example 16384 for 16 GiB"
    ]
    assert errors_of(report, 6) == [
        "row 6, column slug: 'new-box' already appears in row 3; each offering may appear once"
    ]
    assert errors_of(report, 7) == [
        "row 7, column slug: 'foreign' is the slug of another provider's offering; choose another slug"
    ]
    assert errors_of(report, 8)[0].startswith("row 8, column image: Unknown image 'windows-95'")
    assert errors_of(report, 9) == [
        "row 9, column disk_gb: must be a whole number, got '40GB'; the disk size is in GB, for example 40",
        "row 9, column price_cents: must be a whole number, got '4.59'; the price is in cents, for example 459 for 4.59",
    ]
    assert any("'colour' (column 22) is not a known column and was ignored" in warning for warning in report.warnings)
    assert report.summary == {"create": 2, "update": 1, "unchanged": 0, "error": 5}
    assert Offering.objects.get(slug="existing").price_cents == 500
    assert not Offering.objects.filter(slug="new-box").exists()


@pytest.mark.django_db
def test_mixed_file_apply_saves_valid_rows_only(provider, mixed_file):
    report = offering_csv_import(user=provider.user, text=mixed_file, dry_run=False)

    assert report.summary == {"create": 2, "update": 1, "unchanged": 0, "error": 5}
    assert Offering.objects.get(slug="existing").price_cents == 650
    assert Offering.objects.get(slug="new-box").name == "New box"
    assert Offering.objects.get(slug="unnamed-slug-box").provider == provider
    assert Offering.objects.get(slug="new-box").country == "DE"
    assert Offering.objects.get(slug="new-box").city == "Falkenstein"
    foreign = Offering.objects.get(slug="foreign")
    assert foreign.name == "Foreign"
    assert foreign.price_cents == 700
    assert not Offering.objects.filter(slug__in=["units", "bad-image", "existing-two"]).exists()
    assert Offering.objects.filter(provider=provider).count() == 3


@pytest.mark.django_db
def test_row_with_error_changes_no_field(provider, account):
    make_offering(provider=provider, cloud_account=account, slug="tiny-box", price_cents=500, image="ubuntu-24.04")
    text = csv_text([offering_row(price_cents="999", name="Renamed", image="no-such-image")])

    report = offering_csv_import(user=provider.user, text=text, dry_run=False)

    offering = Offering.objects.get(slug="tiny-box")
    assert report.rows[0].action == "error"
    assert offering.price_cents == 500
    assert offering.name != "Renamed"


@pytest.mark.django_db
def test_model_rule_errors_name_column_and_value(provider, account):
    text = csv_text(
        [
            offering_row(slug="too-many-cpus", vcpu="5000"),
            offering_row(slug="gpu-without-model", gpu_count="2"),
            offering_row(slug="bad-country", country="XX"),
            offering_row(slug="Bad Slug!"),
        ]
    )

    report = offering_csv_import(user=provider.user, text=text, dry_run=True)

    assert errors_of(report, 2) == ["row 2, column vcpu: Ensure this value is less than or equal to 1024. Got '5000'."]
    assert "row 3, column gpu_count: GPU count 2 needs a GPU model" in errors_of(report, 3)[1]
    assert errors_of(report, 4)[0].startswith("row 4, column country: 'XX' is not an ISO 3166-1 country code")
    assert errors_of(report, 5)[0].startswith("row 5, column slug: Enter a valid “slug”")


@pytest.mark.django_db
def test_choice_account_and_required_errors(provider, account):
    make_cloud_account(owner=make_user(), label="Someone else's")
    text = csv_text(
        [
            offering_row(slug="hidden", visibility="hidden"),
            offering_row(slug="foreign-account", cloud_account_label="Someone else's"),
            offering_row(slug="no-name", name=""),
            offering_row(slug="labels", visibility="Private", stock_status="Out of stock", currency="chf"),
        ]
    )

    report = offering_csv_import(user=provider.user, text=text, dry_run=True)

    assert errors_of(report, 2) == ["row 2, column visibility: must be one of public, shared, private, got 'hidden'"]
    assert errors_of(report, 3) == [
        "row 3, column cloud_account_label: you have no cloud account labelled \"Someone else's\"; "
        "your cloud accounts are 'Sandbox A'"
    ]
    assert errors_of(report, 4) == ["row 4, column name: is required"]
    assert result_of(report, 5).action == "create"


@pytest.mark.django_db
def test_recipe_columns(provider, account):
    version = make_recipe(author=make_user(), name="Web server")
    slug = version.recipe.slug
    text = csv_text(
        [
            offering_row(slug="with-recipe", recipe_slug=slug, recipe_version="1"),
            offering_row(slug="no-version", recipe_slug=slug, recipe_version=""),
            offering_row(slug="no-such-version", recipe_slug=slug, recipe_version="7"),
            offering_row(slug="no-such-recipe", recipe_slug="missing", recipe_version="1"),
            offering_row(slug="version-only", recipe_slug="", recipe_version="1"),
        ]
    )

    report = offering_csv_import(user=provider.user, text=text, dry_run=False)

    assert Offering.objects.get(slug="with-recipe").recipe_version == version
    assert errors_of(report, 3) == [
        f"row 3, column recipe_version: is required when recipe_slug is set; the latest version of '{slug}' is 1"
    ]
    assert errors_of(report, 4) == [f"row 4, column recipe_version: recipe '{slug}' has no version 7; its versions are 1"]
    assert errors_of(report, 5) == ["row 5, column recipe_slug: no recipe has the slug 'missing'"]
    assert errors_of(report, 6)[0].startswith("row 6, column recipe_slug: is required when recipe_version is set")


@pytest.mark.django_db
def test_headers_in_any_order_and_case(provider, account):
    make_offering(provider=provider, cloud_account=account, slug="tiny-box", price_cents=500, memory_mib=4096)
    text = "  Price Cents ;Memory-MiB;SLUG\r\n800;8192;tiny-box\r\n"

    report = offering_csv_import(user=provider.user, text=text, dry_run=False)

    offering = Offering.objects.get(slug="tiny-box")
    assert report.delimiter == ";"
    assert report.columns == ["price_cents", "memory_mib", "slug"]
    assert result_of(report, 2).changes == {
        "memory_mib": {"old": "4096", "new": "8192"},
        "price_cents": {"old": "500", "new": "800"},
    }
    assert offering.price_cents == 800
    assert offering.memory_mib == 8192
    assert offering.vcpu == 2


@pytest.mark.django_db
def test_missing_required_column_fails_new_rows_only(provider, account):
    make_offering(provider=provider, cloud_account=account, slug="existing", price_cents=500)
    text = "slug,price_cents\r\nexisting,600\r\nbrand-new,700\r\n"

    report = offering_csv_import(user=provider.user, text=text, dry_run=True)

    assert result_of(report, 2).action == "update"
    assert "row 3, column name: the file has no such column, and a new offering needs it" in errors_of(report, 3)
    assert len(errors_of(report, 3)) == 8


@pytest.mark.django_db
def test_row_with_wrong_cell_count_is_error(provider, account):
    text = csv_text([offering_row()]) + "extra,Tiny box,a description, with a comma\r\n"

    report = offering_csv_import(user=provider.user, text=text, dry_run=True)

    assert errors_of(report, 3) == [
        "row 3: has 4 cells but the header row has 21; enclose cells that contain the delimiter ',' in double quotes"
    ]


@pytest.mark.django_db
def test_tab_delimited_file_is_read(provider, account):
    report = offering_csv_import(user=provider.user, text=csv_text([offering_row()], delimiter="\t"), dry_run=False)

    assert report.delimiter == "\t"
    assert "Columns are separated by tabs." in report.warnings
    assert Offering.objects.filter(slug="tiny-box").exists()


# --- whole-file errors --------------------------------------------------------------------------


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("slug,name\r\n", "The file has a header row but no offering rows."),
        ("slug,name\r\n,\r\n\r\n", "The file has a header row but no offering rows."),
        ("tiny-box,Tiny box\r\n", "The first row names no known column (it reads 'tiny-box,Tiny box')."),
        ("slug,name,Name\r\na,b,c\r\n", "Column 'name' appears twice in the header row (columns 2 and 3)."),
        ("slug,recipe_slug\r\na,b\r\n", "The header row has no 'recipe_version' column"),
        ('slug,name\r\na,"Tiny" box\r\n', "Line 2 of the file is not valid CSV"),
    ],
)
def test_file_errors(provider, text, message):
    with pytest.raises(CsvFileError) as error:
        offering_csv_import(user=provider.user, text=text, dry_run=True)

    assert message in error.value.message


@pytest.mark.django_db
def test_too_many_rows(provider, account, settings):
    settings.OFFERING_CSV_MAX_ROWS = 3
    text = csv_text([offering_row(slug=f"box-{number}") for number in range(4)])

    with pytest.raises(CsvFileError) as error:
        offering_csv_import(user=provider.user, text=text, dry_run=True)

    assert error.value.message.startswith("The file has more than 3 offering rows.")


def test_decode_rejects_non_utf8_with_offset_and_line():
    data = b"slug,name\r\ntiny-box,Tiny box\r\ncafe,Caf" + b"\xe9\r\n"

    with pytest.raises(CsvFileError) as error:
        csv_decode(data)

    assert error.value.message.startswith(
        "The file is not valid UTF-8: byte 0xE9 at byte offset 38 (line 3) cannot be decoded."
    )
    assert "CSV UTF-8" in error.value.message


def test_decode_strips_bom_and_counts_it_in_offsets():
    assert csv_decode(codecs.BOM_UTF8 + b"slug\r\nx\r\n") == "slug\r\nx\r\n"
    with pytest.raises(CsvFileError) as error:
        csv_decode(codecs.BOM_UTF8 + b"slug\r\n\xff\r\n")
    assert "byte 0xFF at byte offset 9 (line 2)" in error.value.message


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "The file is empty."),
        (b" \r\n\r\n", "The file is empty."),
        ("slug\r\n".encode("utf-16"), "The file is UTF-16, not UTF-8."),
        (b"slug,name\r\nx,a\x00b\r\n", "The file contains a NUL byte at byte offset 14 (line 2)"),
    ],
)
def test_decode_rejects_empty_and_utf16(data, message):
    with pytest.raises(CsvFileError) as error:
        csv_decode(data)

    assert error.value.message.startswith(message)


def test_decode_rejects_oversized_data(settings):
    settings.OFFERING_CSV_MAX_BYTES = 1024

    with pytest.raises(CsvFileTooLarge) as error:
        csv_decode(b"x" * 1025)
    csv_decode(b"x" * 1024)

    assert error.value.message.startswith("The file is larger than the limit of 1 KB.")


def test_upload_handler_drops_10_mb_file_while_reading():
    big = io.BytesIO(b"x" * TEN_MB)
    big.name = "big.csv"
    body = encode_multipart(BOUNDARY, {"file": big, "note": "after the file"})
    handler = SizeLimitedUploadHandler(max_bytes=2 * 1024 * 1024)
    meta = {"CONTENT_TYPE": MULTIPART_CONTENT, "CONTENT_LENGTH": str(len(body))}

    post, files = MultiPartParser(meta, io.BytesIO(body), [handler]).parse()

    assert handler.too_large == ["file"]
    assert "file" not in files
    assert post["note"] == "after the file"
    assert handler._buffer.getbuffer().nbytes <= 2 * 1024 * 1024


# --- the upload, preview and apply pages --------------------------------------------------------


@pytest.mark.django_db
def test_upload_preview_then_apply(client, provider, mixed_file):
    client.force_login(provider.user)

    uploaded = upload_page(client, mixed_file.encode())
    offering_import = OfferingImport.objects.get()
    preview = client.get(uploaded["Location"])
    nothing_saved = not Offering.objects.filter(slug="new-box").exists()
    applied = client.post(reverse("marketplace:offering_import_apply", kwargs={"public_id": offering_import.public_id}))
    result = client.get(applied["Location"]).content.decode()

    assert uploaded.status_code == 302
    assert uploaded["Location"] == offering_import.get_absolute_url()
    assert preview.status_code == 200
    assert "row 5, column memory_mib: must be a whole number, got &#x27;16 GB&#x27;" in preview.content.decode()
    assert "Apply 3 changes" in preview.content.decode()
    assert nothing_saved
    assert Offering.objects.get(slug="existing").price_cents == 650
    assert Offering.objects.filter(slug="new-box").exists()
    assert "Import applied: 2 created, 1 updated, 0 unchanged, 5 rows with errors not saved." in result
    assert "Import result" in result


@pytest.mark.django_db
def test_apply_twice_applies_once(client, provider, account):
    client.force_login(provider.user)
    upload_page(client, csv_text([offering_row(slug="")]).encode())
    offering_import = OfferingImport.objects.get()
    apply_url = reverse("marketplace:offering_import_apply", kwargs={"public_id": offering_import.public_id})

    client.post(apply_url)
    second = client.post(apply_url, follow=True)

    assert Offering.objects.filter(name="Tiny box").count() == 1
    assert "This file was applied already" in second.content.decode()


@pytest.mark.django_db
def test_apply_validates_again(client, provider, account):
    client.force_login(provider.user)
    upload_page(client, csv_text([offering_row()]).encode())
    offering_import = OfferingImport.objects.get()
    account.label = "Renamed"
    account.save()

    client.post(reverse("marketplace:offering_import_apply", kwargs={"public_id": offering_import.public_id}))

    offering_import.refresh_from_db()
    assert offering_import.preview["summary"]["create"] == 1
    assert offering_import.result["summary"]["error"] == 1
    assert "no cloud account labelled 'Sandbox A'" in offering_import.result["rows"][0]["errors"][0]["message"]
    assert not Offering.objects.filter(slug="tiny-box").exists()


@pytest.mark.django_db
def test_apply_after_expiry_is_rejected(client, provider, account):
    client.force_login(provider.user)
    upload_page(client, csv_text([offering_row()]).encode())
    offering_import = OfferingImport.objects.get()
    OfferingImport.objects.filter(pk=offering_import.pk).update(expires_at=timezone.now() - timedelta(seconds=1))

    response = client.post(
        reverse("marketplace:offering_import_apply", kwargs={"public_id": offering_import.public_id}), follow=True
    )

    assert "This preview expired" in response.content.decode()
    assert not Offering.objects.filter(slug="tiny-box").exists()


@pytest.mark.django_db
def test_upload_deletes_expired_imports(client, provider, account):
    client.force_login(provider.user)
    upload_page(client, csv_text([offering_row()]).encode())
    OfferingImport.objects.update(expires_at=timezone.now() - timedelta(seconds=1))

    upload_page(client, csv_text([offering_row()]).encode())

    assert OfferingImport.objects.count() == 1


@pytest.mark.django_db
def test_upload_page_10_mb_file_is_rejected(client, provider, account):
    client.force_login(provider.user)

    response = upload_page(client, b"slug,name\r\n" + b"x" * TEN_MB)

    assert response.status_code == 200
    assert "The file is larger than the limit of 2 MB." in response.content.decode()
    assert not OfferingImport.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "The file is empty."),
        (b"slug,name\r\nx,Caf\xe9\r\n", "byte 0xE9 at byte offset 16 (line 2)"),
        (b"slug,name\r\n", "The file has a header row but no offering rows."),
    ],
)
def test_upload_page_file_errors(client, provider, account, data, message):
    client.force_login(provider.user)

    response = upload_page(client, data)

    assert response.status_code == 200
    assert message in response.content.decode()
    assert not OfferingImport.objects.exists()


@pytest.mark.django_db
def test_upload_page_accepts_bom(client, provider, account):
    client.force_login(provider.user)

    upload_page(client, codecs.BOM_UTF8 + csv_text([offering_row()]).encode())

    assert OfferingImport.objects.get().preview["summary"]["create"] == 1


@pytest.mark.django_db
def test_upload_page_checks_csrf(provider, account):
    from django.test import Client

    client = Client(enforce_csrf_checks=True)
    client.force_login(provider.user)

    response = upload_page(client, csv_text([offering_row()]).encode())

    assert response.status_code == 403
    assert not OfferingImport.objects.exists()


@pytest.mark.django_db
def test_dashboard_links_to_csv_pages(client, provider, account):
    make_offering(provider=provider, cloud_account=account)
    client.force_login(provider.user)

    html = client.get(reverse("marketplace:provider_dashboard")).content.decode()
    import_page = client.get(IMPORT_URL).content.decode()

    assert EXPORT_URL in html
    assert IMPORT_URL in html
    assert "price_cents" in import_page
    assert "2 MB and 1000 offering rows per file" in import_page


# --- authorization ------------------------------------------------------------------------------


@pytest.mark.django_db
def test_other_provider_cannot_see_or_apply_import(client, provider, account, other_provider):
    offering_import = offering_import_create(
        user=provider.user, filename="mine.csv", data=csv_text([offering_row()]).encode()
    )
    client.force_login(other_provider.user)

    preview = client.get(offering_import.get_absolute_url())
    apply = client.post(reverse("marketplace:offering_import_apply", kwargs={"public_id": offering_import.public_id}))

    offering_import.refresh_from_db()
    assert preview.status_code == 404
    assert apply.status_code == 404
    assert offering_import.applied_at is None
    assert not Offering.objects.filter(slug="tiny-box").exists()
    with pytest.raises(PermissionError):
        offering_import_apply(user=other_provider.user, offering_import=offering_import)


@pytest.mark.django_db
def test_user_without_provider_profile_gets_404(client, provider, account):
    tenant = make_user()
    offering_import = offering_import_create(
        user=provider.user, filename="mine.csv", data=csv_text([offering_row()]).encode()
    )
    client.force_login(tenant)

    assert client.get(EXPORT_URL).status_code == 404
    assert client.get(IMPORT_URL).status_code == 404
    assert upload_page(client, csv_text([offering_row()]).encode()).status_code == 404
    assert client.get(offering_import.get_absolute_url()).status_code == 404
    assert api_client(tenant).get(API_EXPORT_URL).status_code == 404
    assert api_client(tenant).post(API_IMPORT_URL + "?dry_run=true", csv_text([offering_row()]), content_type="text/csv").status_code == 404
    with pytest.raises(PermissionError):
        offering_csv_import(user=tenant, text=csv_text([offering_row()]), dry_run=True)


@pytest.mark.django_db
def test_anonymous_is_sent_to_login_or_401(client):
    assert client.get(EXPORT_URL).status_code == 302
    assert client.get(IMPORT_URL).status_code == 302
    assert APIClient().get(API_EXPORT_URL).status_code == 401
    assert APIClient().post(API_IMPORT_URL + "?dry_run=true", "slug\r\nx\r\n", content_type="text/csv").status_code == 401


# --- API ----------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_api_export_is_csv_without_bom(provider, account, other_provider):
    make_offering(provider=provider, cloud_account=account, slug="mine")
    make_offering(provider=other_provider, slug="theirs")

    response = api_client(provider.user).get(API_EXPORT_URL)

    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert not response.content.startswith(codecs.BOM_UTF8)
    assert [row["slug"] for row in parse_csv(response.content.decode())] == ["mine"]


@pytest.mark.django_db
def test_api_import_dry_run_then_apply_multipart(provider, mixed_file):
    client = api_client(provider.user)

    def post(dry_run: str):
        upload = io.BytesIO(mixed_file.encode())
        upload.name = "offerings.csv"
        return client.post(f"{API_IMPORT_URL}?dry_run={dry_run}", {"file": upload}, format="multipart")

    preview = post("true")
    saved_after_preview = Offering.objects.filter(slug="new-box").exists()
    applied = post("false")

    assert preview.status_code == 200
    assert preview.json()["dry_run"] is True
    assert preview.json()["summary"] == {"create": 2, "update": 1, "unchanged": 0, "error": 5}
    assert preview.json()["rows"][3]["errors"][0] == {
        "column": "memory_mib",
        "message": "must be a whole number, got '16 GB'; memory is in MiB, for example 16384 for 16 GiB",
        "detail": "row 5, column memory_mib: must be a whole number, got '16 GB'; memory is in MiB, for example 16384 for 16 GiB",
    }
    assert not saved_after_preview
    assert applied.status_code == 200
    assert applied.json()["dry_run"] is False
    assert Offering.objects.get(slug="existing").price_cents == 650
    assert Offering.objects.get(slug="foreign").price_cents == 700


@pytest.mark.django_db
def test_api_import_text_csv_body(provider, account):
    response = api_client(provider.user).post(
        API_IMPORT_URL + "?dry_run=false", csv_text([offering_row()]).encode(), content_type="text/csv"
    )

    assert response.status_code == 200
    assert response.json()["rows"][0]["action"] == "create"
    assert Offering.objects.filter(slug="tiny-box", provider=provider).exists()


@pytest.mark.django_db
def test_api_import_dry_run_as_form_field(provider, account):
    upload = io.BytesIO(csv_text([offering_row()]).encode())
    upload.name = "offerings.csv"

    response = api_client(provider.user).post(API_IMPORT_URL, {"file": upload, "dry_run": "true"}, format="multipart")

    assert response.status_code == 200
    assert response.json()["dry_run"] is True
    assert not Offering.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("query", "body", "field", "message"),
    [
        ("", b"slug\r\nx\r\n", "dry_run", "dry_run is required: true to preview the changes, false to apply them."),
        ("?dry_run=maybe", b"slug\r\nx\r\n", "dry_run", "dry_run must be true or false, got 'maybe'."),
        ("?dry_run=true", b"slug,name\r\nx,Caf\xe9\r\n", "file", "byte 0xE9 at byte offset 16 (line 2)"),
        ("?dry_run=true", b"\r\n", "file", "The file is empty."),
        ("?dry_run=true", b"", "file", "A CSV file is required"),
    ],
)
def test_api_import_bad_requests(provider, account, query, body, field, message):
    response = api_client(provider.user).post(API_IMPORT_URL + query, body, content_type="text/csv")

    assert response.status_code == 400
    assert message in response.json()[field][0]


@pytest.mark.django_db
def test_api_import_without_file_is_400(provider, account):
    response = api_client(provider.user).post(API_IMPORT_URL + "?dry_run=true", {"other": "x"}, format="multipart")

    assert response.status_code == 400
    assert response.json() == {
        "file": ["A CSV file is required: send it as multipart field 'file' or as a text/csv request body."]
    }


@pytest.mark.django_db
def test_api_import_10_mb_is_413(provider, account):
    client = api_client(provider.user)
    big = io.BytesIO(b"slug,name\r\n" + b"x" * TEN_MB)
    big.name = "big.csv"

    multipart = client.post(API_IMPORT_URL + "?dry_run=true", {"file": big}, format="multipart")
    body = client.post(API_IMPORT_URL + "?dry_run=true", b"x" * TEN_MB, content_type="text/csv")

    assert multipart.status_code == 413
    assert multipart.json()["file"][0].startswith("The file is larger than the limit of 2 MB")
    assert body.status_code == 413
    assert body.json()["file"][0].startswith("The file is larger than the limit of 2 MB")


def test_csv_body_parser_stops_reading_after_limit(settings):
    settings.OFFERING_CSV_MAX_BYTES = 1024
    stream = io.BytesIO(b"x" * TEN_MB)
    request_without_length = SimpleNamespace(META={})

    with pytest.raises(CsvBodyTooLarge):
        CsvBodyParser().parse(stream, parser_context={"request": request_without_length})

    assert stream.tell() == 1025


@pytest.mark.django_db
def test_api_import_cannot_touch_other_providers_offering(provider, account, other_provider):
    make_offering(provider=other_provider, slug="foreign", name="Foreign", price_cents=700)
    text = csv_text([offering_row(slug="foreign", name="Mine now", price_cents="1")])

    response = api_client(provider.user).post(API_IMPORT_URL + "?dry_run=false", text, content_type="text/csv")

    foreign = Offering.objects.get(slug="foreign")
    assert response.status_code == 200
    assert response.json()["rows"][0]["action"] == "error"
    assert foreign.provider == other_provider
    assert foreign.name == "Foreign"
    assert foreign.price_cents == 700


# --- real backend catalog -----------------------------------------------------------------------


@pytest.mark.django_db
def test_hetzner_catalog_is_loaded_once_per_import(provider, hetzner_api):
    make_cloud_account(owner=provider.user, backend=Backend.HETZNER, label="Hetzner", token=TEST_HCLOUD_TOKEN)
    rows = [offering_row(slug=f"box-{number}", cloud_account_label="Hetzner") for number in range(5)]
    rows.append(offering_row(slug="bad-type", cloud_account_label="Hetzner", server_type="cx999"))

    report = offering_csv_import(user=provider.user, text=csv_text(rows), dry_run=False)

    assert report.summary == {"create": 5, "update": 0, "unchanged": 0, "error": 1}
    assert errors_of(report, 7)[0].startswith("row 7, column server_type: Unknown server type 'cx999' for Hetzner")
    assert len(hetzner_api.requests_matching("GET", "/server_types")) == 1
    assert len(hetzner_api.requests_matching("GET", "/locations")) == 1
    assert len(hetzner_api.requests_matching("GET", "/images")) == 1


@pytest.mark.django_db
def test_hetzner_catalog_failure_is_row_error(provider, hetzner_api):
    make_cloud_account(owner=provider.user, backend=Backend.HETZNER, label="Hetzner", token="revoked-token")
    rows = [offering_row(slug=f"box-{number}", cloud_account_label="Hetzner") for number in range(3)]

    report = offering_csv_import(user=provider.user, text=csv_text(rows), dry_run=False)

    assert report.summary["error"] == 3
    assert errors_of(report, 2)[0].startswith("row 2: Could not load server types, locations and images from Hetzner")
    assert not Offering.objects.exists()
    assert len(hetzner_api.requests_matching("GET", "/server_types")) == 1
