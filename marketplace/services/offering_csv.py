"""CSV export and import of a provider's offerings.

The export writes one row per offering with the columns of
`marketplace.offering_csv_format.COLUMNS`. The import maps columns by header name, creates or
updates offerings by slug (only the importing provider's own), and validates every row with the
same service checks as the offering form. Each row is saved in its own transaction, so a valid
row is saved even when another row fails, and a failing row changes nothing.
"""

from __future__ import annotations

import csv
import io
import logging
from collections import Counter
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

from django.conf import settings
from django.core.exceptions import NON_FIELD_ERRORS, ValidationError
from django.db import models
from django.utils import timezone

from marketplace.models import Offering, OfferingImport, ProviderProfile, User
from marketplace.offering_csv_format import (
    COLUMN_NAMES,
    COLUMNS,
    COLUMNS_BY_NAME,
    CsvFileError,
    ParsedFile,
    csv_decode,
    csv_parse,
    formula_escape,
    normalize_header,
    parse_integer,
    read_cell,
    whole_number_error,
)
from marketplace.services.providers import (
    BackendCatalog,
    backend_catalog_load,
    offering_create,
    offering_update,
    offering_validate,
)
from provisioning.models import CloudAccount
from recipes.models import RecipeVersion

logger = logging.getLogger(__name__)


#: The model field each column sets; recipe_slug and recipe_version together set recipe_version.
_COLUMN_FIELDS = {name: name for name in COLUMN_NAMES if name not in {"slug", "cloud_account_label", "recipe_slug"}}
_COLUMN_FIELDS["cloud_account_label"] = "cloud_account"

#: The column that service errors keyed by a model field are reported on.
_FIELD_COLUMNS = {model_field: column for column, model_field in _COLUMN_FIELDS.items()}
_FIELD_COLUMNS["slug"] = "slug"


# --- export ---------------------------------------------------------------------------------


def _offering_cells(offering: Offering) -> dict[str, str]:
    """Return the CSV cells of `offering` before formula escaping, keyed by column name."""
    recipe_version = offering.recipe_version
    return {
        "slug": offering.slug,
        "name": offering.name,
        "description": offering.description,
        "product_type": offering.product_type,
        "cloud_account_label": offering.cloud_account.label if offering.cloud_account_id else "",
        "server_type": offering.server_type,
        "image": offering.image,
        "location_code": offering.location_code,
        "country": offering.country,
        "city": offering.city,
        "vcpu": str(offering.vcpu),
        "memory_mib": str(offering.memory_mib),
        "disk_gb": str(offering.disk_gb),
        "gpu_model": offering.gpu_model,
        "gpu_count": str(offering.gpu_count),
        "price_cents": str(offering.price_cents),
        "currency": offering.currency,
        "visibility": offering.visibility,
        "stock_status": offering.stock_status,
        "recipe_slug": recipe_version.recipe.slug if recipe_version is not None else "",
        "recipe_version": str(recipe_version.number) if recipe_version is not None else "",
    }


def offering_csv_export(*, provider: ProviderProfile, byte_order_mark: bool = False) -> str:
    """Return `provider`'s offerings as CSV text: a header row, then one row per offering by slug.

    Every cell is quoted and line ends are CRLF (RFC 4180). With `byte_order_mark` the text
    starts with U+FEFF, which makes Excel read the file as UTF-8.
    """
    offerings = (
        Offering.objects.filter(provider=provider)
        .select_related("cloud_account", "recipe_version__recipe")
        .order_by("slug")
    )
    buffer = io.StringIO()
    if byte_order_mark:
        buffer.write("\ufeff")
    writer = csv.writer(buffer, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
    writer.writerow(COLUMN_NAMES)
    count = 0
    for offering in offerings:
        cells = _offering_cells(offering)
        writer.writerow([formula_escape(cells[name]) for name in COLUMN_NAMES])
        count += 1
    logger.info("Offerings CSV of provider %s exported: %s rows", provider.pk, count)
    return buffer.getvalue()


def offering_csv_filename(provider: ProviderProfile) -> str:
    return f"offerings-{provider.slug}-{timezone.now():%Y-%m-%d}.csv"


# --- import: rows ---------------------------------------------------------------------------


class RowAction(models.TextChoices):
    """Action an import takes on one row."""

    CREATE = "create", "Create"
    UPDATE = "update", "Update"
    UNCHANGED = "unchanged", "Unchanged"
    ERROR = "error", "Error"


#: Badge colour per row action, for the preview page.
ROW_ACTION_COLOURS = {
    RowAction.CREATE: "green",
    RowAction.UPDATE: "blue",
    RowAction.UNCHANGED: "grey",
    RowAction.ERROR: "red",
}


@dataclass
class CellError:
    """One error of one row, on one column or (column None) on the whole row."""

    row: int
    column: str | None
    message: str

    @property
    def detail(self) -> str:
        if self.column:
            return f"row {self.row}, column {self.column}: {self.message}"
        return f"row {self.row}: {self.message}"

    def as_dict(self) -> dict[str, Any]:
        return {"column": self.column, "message": self.message, "detail": self.detail}


@dataclass
class RowResult:
    """Outcome of one row of the file: the planned action in a preview, the action taken after apply."""

    row: int
    slug: str
    name: str = ""
    action: str = RowAction.ERROR
    # Column -> {"old": ..., "new": ...} in CSV notation, filled for updates only.
    changes: dict[str, dict[str, str]] = field(default_factory=dict)
    errors: list[CellError] = field(default_factory=list)

    def error(self, column: str | None, message: str) -> None:
        self.action = RowAction.ERROR
        self.errors.append(CellError(row=self.row, column=column, message=message))

    def as_dict(self) -> dict[str, Any]:
        return {
            "row": self.row,
            "slug": self.slug,
            "name": self.name,
            "action": str(self.action),
            "changes": self.changes,
            "errors": [error.as_dict() for error in self.errors],
        }


@dataclass
class ImportReport:
    """The per-row outcome of one import, as a preview (dry run) or as applied."""

    dry_run: bool
    delimiter: str
    columns: list[str]
    warnings: list[str]
    rows: list[RowResult]

    @property
    def summary(self) -> dict[str, int]:
        counts = Counter(row.action for row in self.rows)
        return {action.value: counts.get(action, 0) for action in RowAction}

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "delimiter": self.delimiter,
            "columns": self.columns,
            "warnings": self.warnings,
            "summary": self.summary,
            "rows": [row.as_dict() for row in self.rows],
        }


class _ImportContext:
    """The cloud accounts, offering owners, recipe versions and backend catalogs one import refers to.

    Each is loaded once per import, not once per row.
    """

    def __init__(self, *, user: User, provider: ProviderProfile, parsed: ParsedFile):
        self.user = user
        self.provider = provider
        self.accounts = {account.label: account for account in CloudAccount.objects.filter(owner=user)}
        slugs = set()
        recipe_slugs = set()
        for _row, cells in parsed.records:
            slugs.add(read_cell(parsed, cells, "slug"))
            recipe_slugs.add(read_cell(parsed, cells, "recipe_slug"))
        slugs.discard("")
        recipe_slugs.discard("")
        self.offering_ids = dict(Offering.objects.filter(slug__in=slugs).values_list("slug", "provider_id"))
        # Each slug is used by at most one row, so a row may change its instance in memory.
        self.own_offerings = {
            offering.slug: offering
            for offering in Offering.objects.filter(provider=provider, slug__in=slugs).select_related(
                "provider", "cloud_account", "recipe_version__recipe"
            )
        }
        self.recipe_versions = {
            (version.recipe.slug, version.number): version
            for version in RecipeVersion.objects.filter(recipe__slug__in=recipe_slugs).select_related("recipe")
        }
        self.recipe_numbers: dict[str, list[int]] = {}
        for recipe_slug, number in sorted(self.recipe_versions):
            self.recipe_numbers.setdefault(recipe_slug, []).append(number)
        # Cloud account id -> its catalog, or the error loading it raised.
        self.catalogs: dict[int, BackendCatalog | ValidationError] = {}

    def catalog(self, account: CloudAccount) -> BackendCatalog | ValidationError:
        if account.pk not in self.catalogs:
            try:
                self.catalogs[account.pk] = backend_catalog_load(account)
            except ValidationError as exc:
                self.catalogs[account.pk] = exc
        return self.catalogs[account.pk]


def _row_values(
    result: RowResult, *, context: _ImportContext, parsed: ParsedFile, cells: list[str], is_new: bool
) -> dict[str, Any]:
    """Convert the cells of one row into service values, recording cell errors on `result`."""
    values: dict[str, Any] = {}
    for column in COLUMNS:
        if column.kind in {"slug", "recipe_slug", "recipe_version"}:
            continue
        if column.name not in parsed.positions:
            if is_new and column.required:
                result.error(column.name, "the file has no such column, and a new offering needs it")
            continue
        value = read_cell(parsed, cells, column.name)
        model_field = _COLUMN_FIELDS[column.name]

        if not value and column.required:
            result.error(column.name, "is required")
        elif column.kind == "text":
            values[model_field] = value
        elif column.kind == "integer":
            if not value:
                # Only gpu_count is an optional integer column.
                values[model_field] = 0
            else:
                number = parse_integer(value)
                if number is None:
                    result.error(column.name, whole_number_error(column, value))
                else:
                    values[model_field] = number
        elif column.kind == "choice":
            accepted = {}
            for choice_value, label in column.choices:
                accepted[choice_value.lower()] = choice_value
                accepted[normalize_header(label)] = choice_value
            choice = accepted.get(normalize_header(value))
            if choice is None:
                allowed = ", ".join(choice_value for choice_value, _label in column.choices)
                result.error(column.name, f"must be one of {allowed}, got {value!r}")
            else:
                values[model_field] = choice
        elif column.kind == "cloud_account":
            account = context.accounts.get(value)
            if account is None:
                labels = ", ".join(repr(label) for label in sorted(context.accounts)) or "none yet"
                result.error(
                    column.name, f"you have no cloud account labelled {value!r}; your cloud accounts are {labels}"
                )
            else:
                values[model_field] = account

    if "recipe_slug" in parsed.positions:
        recipe_version = _row_recipe_version(result, context=context, parsed=parsed, cells=cells)
        if recipe_version is not False:
            values["recipe_version"] = recipe_version
    return values


def _row_recipe_version(
    result: RowResult, *, context: _ImportContext, parsed: ParsedFile, cells: list[str]
) -> RecipeVersion | None | Literal[False]:
    """Return the recipe version the row names, None for none, or False after recording an error."""
    recipe_slug = read_cell(parsed, cells, "recipe_slug")
    number_text = read_cell(parsed, cells, "recipe_version")
    if not recipe_slug and not number_text:
        return None
    if not recipe_slug:
        result.error("recipe_slug", "is required when recipe_version is set; clear recipe_version for a plain VM")
        return False
    numbers = context.recipe_numbers.get(recipe_slug)
    if numbers is None:
        result.error("recipe_slug", f"no recipe has the slug {recipe_slug!r}")
        return False
    if not number_text:
        result.error(
            "recipe_version", f"is required when recipe_slug is set; the latest version of {recipe_slug!r} is {numbers[-1]}"
        )
        return False
    number = parse_integer(number_text)
    if number is None:
        result.error("recipe_version", whole_number_error(COLUMNS_BY_NAME["recipe_version"], number_text))
        return False
    version = context.recipe_versions.get((recipe_slug, number))
    if version is None:
        result.error(
            "recipe_version",
            f"recipe {recipe_slug!r} has no version {number}; its versions are {', '.join(map(str, numbers))}",
        )
        return False
    return version


def _record_service_errors(result: RowResult, exc: ValidationError, *, parsed: ParsedFile, cells: list[str]) -> None:
    """Attach a service's ValidationError to the row, on the column of each field it names.

    A message that does not quote the cell's value gets "Got '<value>'." appended.
    """
    if not hasattr(exc, "error_dict"):
        for message in exc.messages:
            result.error(None, message)
        return
    for model_field, messages in exc.message_dict.items():
        column = None if model_field == NON_FIELD_ERRORS else _FIELD_COLUMNS.get(model_field)
        value = read_cell(parsed, cells, column) if column else ""
        for message in messages:
            if column is None and model_field != NON_FIELD_ERRORS:
                message = f"{model_field}: {message}"
            if value and repr(value) not in message:
                message = f"{message} Got {value!r}."
            result.error(column, message)


def _match_offering(
    result: RowResult, *, parsed: ParsedFile, cells: list[str], context: _ImportContext, seen_slugs: dict[str, int]
) -> Offering | None:
    """Return the provider's offering the row updates, or None for a new one, recording row errors on `result`."""
    if len(cells) != parsed.cell_count:
        result.error(
            None,
            f"has {len(cells)} cells but the header row has {parsed.cell_count}; enclose cells that contain "
            f"the delimiter {parsed.delimiter!r} in double quotes",
        )
        return None
    slug = result.slug
    if not slug:
        return None
    if slug in seen_slugs:
        result.error("slug", f"{slug!r} already appears in row {seen_slugs[slug]}; each offering may appear once")
        return None
    seen_slugs[slug] = result.row

    owner_id = context.offering_ids.get(slug)
    if owner_id is None:
        return None
    if owner_id != context.provider.pk:
        result.error("slug", f"{slug!r} is the slug of another provider's offering; choose another slug")
        return None
    existing = context.own_offerings.get(slug)
    if existing is None:
        # Deleted or moved between the two queries of _ImportContext.
        result.error("slug", f"the offering {slug!r} changed during the import; upload the file again")
    return existing


def _import_row(
    *, row_number: int, cells: list[str], parsed: ParsedFile, context: _ImportContext, seen_slugs: dict[str, int], dry_run: bool
) -> RowResult:
    """Check one row against the offering it creates or updates and, unless `dry_run`, save it."""
    slug = read_cell(parsed, cells, "slug")
    result = RowResult(row=row_number, slug=slug, name=read_cell(parsed, cells, "name"))
    existing = _match_offering(result, parsed=parsed, cells=cells, context=context, seen_slugs=seen_slugs)
    if result.errors:
        return result
    if existing is not None:
        result.name = result.name or existing.name

    values = _row_values(result, context=context, parsed=parsed, cells=cells, is_new=existing is None)
    if result.errors:
        return result

    # The backend catalog is loaded here, outside any transaction, and once per cloud account.
    catalog = context.catalog(values.get("cloud_account") or existing.cloud_account)
    if isinstance(catalog, ValidationError):
        _record_service_errors(result, catalog, parsed=parsed, cells=cells)
        return result

    before = _offering_cells(existing) if existing is not None else None
    try:
        candidate = offering_validate(user=context.user, values=values, offering=existing, slug=slug, catalog=catalog)
    except ValidationError as exc:
        _record_service_errors(result, exc, parsed=parsed, cells=cells)
        return result
    after = _offering_cells(candidate)
    result.slug = candidate.slug
    result.name = candidate.name
    if before is None:
        result.action = RowAction.CREATE
    else:
        result.changes = {
            name: {"old": before[name], "new": after[name]} for name in COLUMN_NAMES if before[name] != after[name]
        }
        result.action = RowAction.UPDATE if result.changes else RowAction.UNCHANGED

    if dry_run or result.action == RowAction.UNCHANGED:
        return result
    try:
        if existing is None:
            result.slug = offering_create(user=context.user, values=values, slug=slug, catalog=catalog).slug
        else:
            offering_update(offering=existing, user=context.user, values=values, catalog=catalog)
    except ValidationError as exc:
        result.changes = {}
        _record_service_errors(result, exc, parsed=parsed, cells=cells)
    return result


def offering_csv_import(*, user: User, text: str, dry_run: bool) -> ImportReport:
    """Validate every row of `text` and, unless `dry_run`, create or update the valid ones.

    Rows are matched to `user`'s offerings by slug. Each row is saved by `offering_create` or
    `offering_update` in its own transaction, so an error in one row keeps the others. There is
    no transaction around the whole file. Raises CsvFileError for problems of the whole file
    and PermissionError when `user` has no provider profile.
    """
    provider = ProviderProfile.objects.filter(user=user).first()
    if provider is None:
        raise PermissionError(f"User {user.pk} has no provider profile.")
    parsed = csv_parse(text)
    context = _ImportContext(user=user, provider=provider, parsed=parsed)
    seen_slugs: dict[str, int] = {}
    rows = [
        _import_row(
            row_number=row_number, cells=cells, parsed=parsed, context=context, seen_slugs=seen_slugs, dry_run=dry_run
        )
        for row_number, cells in parsed.records
    ]
    columns = sorted(parsed.positions, key=parsed.positions.get)
    report = ImportReport(dry_run=dry_run, delimiter=parsed.delimiter, columns=columns, warnings=parsed.warnings, rows=rows)
    summary = report.summary
    logger.info(
        "Offerings CSV %s by user %s (provider %s): %s to create, %s to update, %s unchanged, %s with errors",
        "checked" if dry_run else "applied",
        user.pk,
        provider.pk,
        summary["create"],
        summary["update"],
        summary["unchanged"],
        summary["error"],
    )
    return report


# --- import through the preview page -------------------------------------------------------


class ImportNotApplicable(Exception):
    """A stored import cannot be applied: it was applied already or it expired."""


def offering_import_create(*, user: User, filename: str, data: bytes) -> OfferingImport:
    """Check an uploaded CSV file and store it with its preview until it is applied or expires.

    Deletes expired imports of every provider on the way. Raises CsvFileError for problems of
    the whole file and PermissionError when `user` has no provider profile.
    """
    provider = ProviderProfile.objects.filter(user=user).first()
    if provider is None:
        raise PermissionError(f"User {user.pk} has no provider profile.")
    text = csv_decode(data)
    report = offering_csv_import(user=user, text=text, dry_run=True)

    now = timezone.now()
    deleted, _ = OfferingImport.objects.filter(expires_at__lte=now).delete()
    if deleted:
        logger.info("Deleted %s expired offering imports", deleted)
    offering_import = OfferingImport.objects.create(
        provider=provider,
        uploaded_by=user,
        filename=filename[:255],
        content=text,
        preview=report.as_dict(),
        created_at=now,
        expires_at=now + timedelta(seconds=settings.OFFERING_CSV_PREVIEW_SECONDS),
    )
    logger.info("Offering import %s stored for provider %s by user %s", offering_import.public_id, provider.pk, user.pk)
    return offering_import


def offering_import_apply(*, user: User, offering_import: OfferingImport) -> ImportReport:
    """Parse and validate the stored file again and save its valid rows.

    Marks the import applied first with a compare-and-set, so a second click or a concurrent
    request gets ImportNotApplicable instead of applying the file twice.
    """
    # NOTE: This runs inside the web request, a few database queries per row. Files much larger
    # than the default OFFERING_CSV_MAX_ROWS would need a Celery task instead.
    now = timezone.now()
    claimed = OfferingImport.objects.filter(
        pk=offering_import.pk, provider__user=user, applied_at__isnull=True, expires_at__gt=now
    ).update(applied_at=now)
    if not claimed:
        current = OfferingImport.objects.filter(pk=offering_import.pk, provider__user=user).first()
        if current is None:
            raise PermissionError(f"User {user.pk} may not apply offering import {offering_import.pk}.")
        if current.applied_at is not None:
            raise ImportNotApplicable(
                f"This file was applied already, at {current.applied_at:%Y-%m-%d %H:%M} UTC. "
                "Upload it again to apply it again."
            )
        raise ImportNotApplicable(
            f"This preview expired at {current.expires_at:%Y-%m-%d %H:%M} UTC. Upload the file again."
        )

    try:
        report = offering_csv_import(user=user, text=offering_import.content, dry_run=False)
    except CsvFileError:
        # The file passed these checks at upload, but a limit lowered since then can reject it now.
        OfferingImport.objects.filter(pk=offering_import.pk).update(applied_at=None)
        raise
    OfferingImport.objects.filter(pk=offering_import.pk).update(result=report.as_dict())
    logger.info("Offering import %s applied by user %s", offering_import.public_id, user.pk)
    return report
