"""Render an invoice or credit note as PDF with fpdf2, from the document's stored snapshot only.

The output depends only on the document row (the creation date is its issue time) and the
fonts, so two downloads are byte-for-byte the same. Text uses DejaVu Sans (Debian package
fonts-dejavu-core) with Droid Sans Fallback (fonts-droid-fallback) for CJK characters. Without
DejaVu the text is set in Helvetica, which prints characters outside Latin-1 as '?'.
"""

from __future__ import annotations

import datetime as dt
import logging
from decimal import Decimal
from pathlib import Path

from django.conf import settings
from fpdf import FPDF
from fpdf.fonts import FontFace

from billing.models import BillingDocument, CreditNote, TaxSource
from marketplace.templatetags.money import money

logger = logging.getLogger(__name__)



def format_rate(rate_bps: int) -> str:
    """Format basis points as a percentage: 1900 -> "19 %", 750 -> "7.5 %"."""
    percent = (Decimal(rate_bps) / 100).normalize()
    return f"{percent:f} %"


def _period(line: dict) -> str:
    start = line.get("period_start")
    end = line.get("period_end")
    if not start or not end:
        return ""
    return f"{dt.datetime.fromisoformat(start):%Y-%m-%d} – {dt.datetime.fromisoformat(end):%Y-%m-%d}"


class _DocumentPdf(FPDF):
    """An A4 page set up with a Unicode font, or Helvetica (Latin-1 only) when DejaVu is missing."""

    def __init__(self, *, document: BillingDocument):
        super().__init__(format="A4")
        self.document = document
        self.set_creation_date(document.issued_at)
        self.set_title(f"{self.kind} {document.number}")
        self.set_author(document.seller_name)
        self.set_auto_page_break(auto=True, margin=18)

        font_dir = Path(settings.BILLING_PDF_FONT_DIR)
        regular = font_dir / "DejaVuSans.ttf"
        bold = font_dir / "DejaVuSans-Bold.ttf"
        cjk_fallback = Path(settings.BILLING_PDF_CJK_FONT)
        self.unicode_font = regular.exists() and bold.exists()

        if self.unicode_font:
            self.add_font("DejaVu", "", str(regular))
            self.add_font("DejaVu", "B", str(bold))
            self.family = "DejaVu"
            if cjk_fallback.exists():
                self.add_font("CjkFallback", "", str(cjk_fallback))
                self.set_fallback_fonts(["CjkFallback"], exact_match=False)
            else:
                logger.warning(
                    "Font %s not found (Debian package fonts-droid-fallback); document %s shows no CJK characters",
                    cjk_fallback, document.number,
                )
        else:
            logger.warning(
                "Font %s not found (Debian package fonts-dejavu-core); document %s is rendered in Helvetica, "
                "which shows characters outside Latin-1 as '?'",
                regular, document.number,
            )
            self.family = "Helvetica"

    @property
    def kind(self) -> str:
        return "Credit note" if isinstance(self.document, CreditNote) else "Invoice"

    def text_for_font(self, text: str) -> str:
        """Return `text` unchanged for the Unicode font; for Helvetica, replace what Latin-1 lacks with '?'."""
        if self.unicode_font:
            return text
        return text.replace("–", "-").encode("latin-1", errors="replace").decode("latin-1")

    def write_lines(self, lines: list[str], *, size: float = 10, bold: bool = False, height: float = 5) -> None:
        self.set_font(self.family, "B" if bold else "", size)
        for line in lines:
            self.multi_cell(0, height, self.text_for_font(line), new_x="LMARGIN", new_y="NEXT")

    def footer(self) -> None:
        self.set_y(-14)
        self.set_font(self.family, "", 8)
        text = f"{self.document.number} · page {self.page_no()}/{{nb}}"
        self.cell(0, 6, self.text_for_font(text), align="C")


def _party_lines(document: BillingDocument, *, seller: bool) -> list[str]:
    if seller:
        lines = [document.seller_name, *document.seller_address_lines]
        if document.seller_vat_id:
            lines.append(f"VAT id: {document.seller_vat_id}")
        if document.seller_email:
            lines.append(document.seller_email)
        return lines
    lines = [document.buyer_name, *document.buyer_address_lines]
    if document.buyer_vat_id:
        lines.append(f"VAT id: {document.buyer_vat_id}")
    if document.buyer_email and document.buyer_email != document.buyer_name:
        lines.append(document.buyer_email)
    return lines


def render_document_pdf(document: BillingDocument) -> bytes:
    """Return the PDF of an invoice or credit note."""
    pdf = _DocumentPdf(document=document)
    pdf.add_page()
    currency = document.currency

    pdf.write_lines([f"{pdf.kind} {document.number}"], size=18, bold=True, height=9)
    if document.is_sandbox:
        pdf.set_text_color(180, 0, 0)
        pdf.write_lines(["Sandbox: no money was charged"], size=13, bold=True, height=7)
        pdf.set_text_color(0, 0, 0)
    details = [f"Issued: {document.issued_at.astimezone(dt.UTC):%Y-%m-%d %H:%M} UTC", f"Currency: {currency}"]
    if isinstance(document, CreditNote):
        details.insert(1, f"Credits invoice: {document.invoice.number}")
    pdf.write_lines(details)
    pdf.ln(4)

    pdf.set_font(pdf.family, "", 10)
    headings = FontFace(emphasis="BOLD")
    with pdf.table(borders_layout="NONE", col_widths=(1, 1), headings_style=headings, line_height=5) as table:
        heading = table.row()
        heading.cell("From")
        heading.cell("Bill to")
        row = table.row()
        row.cell(pdf.text_for_font("\n".join(_party_lines(document, seller=True))))
        row.cell(pdf.text_for_font("\n".join(_party_lines(document, seller=False))))
    pdf.ln(4)

    rate = format_rate(document.tax_rate_bps)
    if document.tax_source == TaxSource.PROCESSOR:
        rate = f"≈ {rate}" if pdf.unicode_font else f"about {rate}"
    with pdf.table(
        col_widths=(62, 48, 25, 25, 25), text_align=("LEFT", "LEFT", "RIGHT", "RIGHT", "RIGHT"),
        headings_style=headings, line_height=6,
    ) as table:
        heading = table.row()
        for title in ("Description", "Period (UTC)", "Net", f"Tax ({rate})", "Total"):
            heading.cell(pdf.text_for_font(title))
        for line in document.lines:
            row = table.row()
            row.cell(pdf.text_for_font(line.get("description", "")))
            row.cell(pdf.text_for_font(_period(line)))
            row.cell(pdf.text_for_font(money(line["net_cents"], currency)))
            row.cell(pdf.text_for_font(money(line["tax_cents"], currency)))
            row.cell(pdf.text_for_font(money(line["gross_cents"], currency)))
    pdf.ln(3)

    with pdf.table(
        col_widths=(150, 35), text_align=("RIGHT", "RIGHT"), borders_layout="NONE",
        first_row_as_headings=False, line_height=6,
    ) as table:
        for label, cents in (("Net", document.net_cents), (f"Tax ({rate})", document.tax_cents)):
            row = table.row()
            row.cell(pdf.text_for_font(label))
            row.cell(pdf.text_for_font(money(cents, currency)))
        row = table.row(style=headings)
        row.cell("Total")
        row.cell(pdf.text_for_font(money(document.gross_cents, currency)))
    pdf.ln(4)

    if document.notes:
        pdf.write_lines(document.notes.splitlines(), size=9)
    return bytes(pdf.output())
