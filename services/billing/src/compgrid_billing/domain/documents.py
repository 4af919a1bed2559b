"""Invoice documents: the PDF people read and the CSV files finance systems read.

Pure functions of an :class:`InvoiceDocument` (or of export rows); the only I/O is reading a
font file. Amounts are printed exactly as given (they are already rounded); quantities are
formatted from Decimal, never through float. Times are shown in UTC.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from fpdf import FPDF
from fpdf.fonts import FontFace, TTFFont

from compgrid_billing.domain.invoice import ExportRow, InvoiceDocument, InvoiceLine, LineKind

FontFiles = tuple[str | Path, str | Path]
"""A font family as two files: regular and bold."""

DEJAVU_SANS: tuple[FontFiles, ...] = (
    # Debian and Ubuntu (package fonts-dejavu-core)
    (
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    ),
    # Fedora and RHEL (dejavu-sans-fonts)
    (
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
        "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans-Bold.ttf",
    ),
    # Alpine (font-dejavu), older Fedora
    ("/usr/share/fonts/dejavu/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf"),
    # Arch (ttf-dejavu)
    ("/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf"),
)
"""Where DejaVu Sans is usually installed; the first existing pair is used."""

INVOICE_CSV_COLUMNS = (
    "invoice_number",
    "period_start",
    "period_end",
    "project_name",
    "budget_code",
    "kind",
    "instance_id",
    "instance_name",
    "resource",
    "model",
    "quantity",
    "unit",
    "rate",
    "amount",
    "currency",
)
"""Header row of :func:`render_csv`."""

EXPORT_CSV_COLUMNS = (
    "cost_centre",
    "budget_code_id",
    "project_id",
    "project_name",
    "invoice_number",
    "issued_at",
    "period_start",
    "period_end",
    "kind",
    "instance_id",
    "instance_name",
    "resource",
    "model",
    "quantity",
    "unit",
    "rate",
    "amount",
    "currency",
)
"""Header row of :func:`export_csv`."""

CORRECTIONS_TITLE = "Earlier periods: corrections and late usage"

_FAMILY = "InvoiceSans"
_CORE_FAMILY = "Helvetica"
_BRAND = (22, 52, 92)
_BRAND_LIGHT = (232, 238, 246)
_STRIPE = (246, 248, 251)
_TEXT = (33, 37, 41)
_MUTED = (108, 117, 125)
_WHITE = (255, 255, 255)

# Typographic characters the core font cannot show, spelled in ASCII instead of "?".
_ASCII_LOOKALIKES = str.maketrans(
    {
        "\u2010": "-",
        "\u2011": "-",
        "\u2012": "-",
        "\u2013": "-",
        "\u2014": "-",
        "\u2018": "'",
        "\u2019": "'",
        "\u201c": '"',
        "\u201d": '"',
        "\u2026": "...",
        "\u2212": "-",
        "\u00a0": " ",
    }
)

_COLUMN_WIDTHS = (78, 42, 28, 32)
_ROW_HEIGHT = 5.5


# -- PDF ------------------------------------------------------------------------------------------


def render_pdf(
    doc: InvoiceDocument,
    *,
    issuer: str = "CompGrid",
    font_paths: Sequence[FontFiles] = DEJAVU_SANS,
) -> bytes:
    """The invoice as an A4 PDF.

    Uses the first font in ``font_paths`` whose regular file exists (its bold file is optional),
    else the core Helvetica font; characters the chosen font cannot show are printed as "?".
    """
    pdf = _InvoicePdf(doc, issuer, font_paths)
    pdf.add_page()
    _bill_to(pdf, doc)
    usage = [line for line in doc.lines if line.kind is not LineKind.ADJUSTMENT]
    corrections = [line for line in doc.lines if line.kind is LineKind.ADJUSTMENT]
    _section(pdf, "Usage in this period", usage, doc.currency, empty="No usage in this period.")
    if corrections:
        pdf.ln(6)
        _section(pdf, CORRECTIONS_TITLE, corrections, doc.currency, empty="")
    _totals(pdf, doc)
    return bytes(pdf.output())


class _InvoicePdf(FPDF):
    """An A4 page with the issuer's header band and a page-numbered footer."""

    def __init__(self, doc: InvoiceDocument, issuer: str, font_paths: Sequence[FontFiles]):
        super().__init__(orientation="portrait", unit="mm", format="A4")
        self._doc = doc
        self._issuer = issuer
        self.set_margins(15, 15, 15)
        self.set_auto_page_break(auto=True, margin=20)
        self._family, self._shown = self._load_font(font_paths)
        self.set_creation_date(_utc(doc.issued_at))
        self.set_lang("en")
        self.set_title(f"Invoice {doc.number}")
        self.set_author(issuer)
        self.set_creator(issuer)
        self.set_subject(f"{doc.project_name}: {_period(doc)}")

    def _load_font(self, font_paths: Sequence[FontFiles]) -> tuple[str, frozenset[int] | None]:
        """Register the first available TTF family; None as shown characters means core font."""
        for regular, bold in font_paths:
            if not Path(regular).is_file():
                continue
            self.add_font(_FAMILY, "", regular)
            self.add_font(_FAMILY, "B", bold if Path(bold).is_file() else regular)
            shown: set[int] | None = None
            for style in ("", "B"):
                font = self.fonts[f"{_FAMILY.lower()}{style}"]
                covered = set(font.cmap) if isinstance(font, TTFFont) else set()
                shown = covered if shown is None else shown & covered
            return _FAMILY, frozenset(shown or ())
        return _CORE_FAMILY, None

    def clean(self, text: str) -> str:
        """``text`` on one line, with characters the font cannot show replaced by "?"."""
        text = unicodedata.normalize("NFC", text)
        text = "".join(" " if unicodedata.category(char) == "Cc" else char for char in text)
        if self._shown is None:
            text = text.translate(_ASCII_LOOKALIKES)
            return text.encode("latin-1", errors="replace").decode("latin-1")
        shown = self._shown
        return "".join(char if char == " " or ord(char) in shown else "?" for char in text)

    def dash(self) -> str:
        """An en dash when the font has one, else a hyphen."""
        return self.clean("\u2013")

    def text_style(
        self, bold: bool = False, size: float = 9, colour: tuple[int, int, int] = _TEXT
    ) -> None:
        """Set the font and the text colour."""
        self.set_font(self._family, "B" if bold else "", size)
        self.set_text_color(*colour)

    def header(self) -> None:
        """The brand band: large on the first page, slim on the others."""
        first = self.page_no() == 1
        height = 30.0 if first else 14.0
        self.set_fill_color(*_BRAND)
        self.rect(0, 0, self.w, height, style="F")
        half = self.epw / 2
        self.set_xy(self.l_margin, 9 if first else 3)
        self.text_style(bold=True, size=20 if first else 12, colour=_WHITE)
        self.cell(half, 12 if first else 8, self.clean(self._issuer), align="L")
        self.text_style(bold=True, size=14 if first else 10, colour=_WHITE)
        title = f"Invoice {self._doc.number}" + ("" if first else " (continued)")
        self.cell(half, 12 if first else 8, self.clean(title), align="R")
        self.set_y(height + 8)
        self.text_style()

    def footer(self) -> None:
        """Page numbers on the left, the issuer and invoice number on the right."""
        self.set_y(-13)
        self.set_draw_color(*_BRAND_LIGHT)
        self.line(self.l_margin, self.y, self.l_margin + self.epw, self.y)
        self.set_y(-11)
        self.text_style(size=8, colour=_MUTED)
        half = self.epw / 2
        self.cell(half, 5, f"Page {self.page_no()} of {self.str_alias_nb_pages}", align="L")
        self.cell(
            half, 5, self.clean(f"{self._issuer} \u00b7 Invoice {self._doc.number}"), align="R"
        )


def _bill_to(pdf: _InvoicePdf, doc: InvoiceDocument) -> None:
    """Who is billed (left) and the invoice's facts (right)."""
    top = pdf.get_y()
    left = 98.0
    pdf.text_style(bold=True, size=8, colour=_MUTED)
    pdf.cell(left, 5, "BILL TO", new_x="LMARGIN", new_y="NEXT")
    pdf.text_style(bold=True, size=12)
    pdf.multi_cell(left, 6, pdf.clean(doc.project_name), new_x="LMARGIN", new_y="NEXT")
    pdf.text_style(size=9)
    people = []
    if doc.pi_name:
        people.append(f"PI: {doc.pi_name}")
    if doc.pi_email:
        people.append(doc.pi_email if doc.pi_name else f"PI: {doc.pi_email}")
    centre = doc.budget_code
    if doc.budget_name:
        centre = f"{doc.budget_code} {pdf.dash()} {doc.budget_name}"
    for text in [*people, f"Cost centre: {centre}"]:
        pdf.multi_cell(left, 5, pdf.clean(text), new_x="LMARGIN", new_y="NEXT")
    bottom_left = pdf.get_y()

    facts = [
        ("Invoice", doc.number),
        ("Issue date", _day(doc.issued_at).isoformat()),
        ("Period", _period(doc, pdf.dash())),
        ("Currency", doc.currency),
    ]
    x = pdf.l_margin + pdf.epw - 78
    pdf.set_y(top)
    for label, value in facts:
        pdf.set_x(x)
        pdf.text_style(bold=True, size=9, colour=_MUTED)
        pdf.cell(24, 5.5, label)
        pdf.text_style(size=9)
        pdf.cell(54, 5.5, pdf.clean(value), align="R", new_x="LMARGIN", new_y="NEXT")
    pdf.set_x(x)
    pdf.text_style(size=7, colour=_MUTED)
    pdf.cell(78, 4.5, "Period dates are UTC, both days included.", align="R")
    pdf.set_y(max(bottom_left, pdf.get_y() + 4.5) + 8)
    pdf.text_style()


def _section(
    pdf: _InvoicePdf, title: str, lines: Sequence[InvoiceLine], currency: str, *, empty: str
) -> None:
    """A titled table of lines; its header row repeats on every page it spans."""
    if pdf.will_page_break(8 + 3 * _ROW_HEIGHT):
        pdf.add_page()
    pdf.text_style(bold=True, size=11, colour=_BRAND)
    pdf.cell(pdf.epw, 7, title, new_x="LMARGIN", new_y="NEXT")
    pdf.ln(1)
    if not lines:
        pdf.text_style(size=9, colour=_MUTED)
        pdf.cell(pdf.epw, _ROW_HEIGHT, empty, new_x="LMARGIN", new_y="NEXT")
        pdf.text_style()
        return
    pdf.text_style(size=9)
    pdf.set_draw_color(*_BRAND_LIGHT)
    headings = FontFace(emphasis="BOLD", color=_WHITE, fill_color=_BRAND)
    with pdf.table(
        width=pdf.epw,
        col_widths=_COLUMN_WIDTHS,
        text_align=("LEFT", "RIGHT", "RIGHT", "RIGHT"),
        borders_layout="HORIZONTAL_LINES",
        headings_style=headings,
        cell_fill_color=_STRIPE,
        cell_fill_mode="ROWS",
        line_height=_ROW_HEIGHT,
        padding=(1, 1.5),
        repeat_headings=1,
    ) as table:
        heading = table.row()
        for text in ("Description", "Quantity", f"Rate ({currency})", f"Amount ({currency})"):
            heading.cell(pdf.clean(text))
        for line in lines:
            row = table.row()
            row.cell(pdf.clean(line.description))
            row.cell(pdf.clean(f"{_quantity(line.quantity)} {line.unit}"))
            row.cell("varies" if line.rate is None else _money(line.rate))
            row.cell(_money(line.amount))
    pdf.text_style()


def _totals(pdf: _InvoicePdf, doc: InvoiceDocument) -> None:
    """Subtotal, adjustments and total, kept together at the right."""
    row = 7.0
    if pdf.will_page_break(8 + 3 * row + 12):
        pdf.add_page()
    pdf.ln(8)
    width = 90.0
    x = pdf.l_margin + pdf.epw - width
    currency = pdf.clean(doc.currency)
    for label, amount in (("Subtotal", doc.subtotal), ("Adjustments", doc.adjustments)):
        pdf.set_x(x)
        pdf.text_style(size=10)
        pdf.cell(45, row, label)
        pdf.cell(width - 45, row, f"{_money(amount)} {currency}", align="R")
        pdf.ln(row)
    pdf.set_draw_color(*_BRAND)
    pdf.line(x, pdf.y + 0.5, x + width, pdf.y + 0.5)
    pdf.ln(1.5)
    pdf.set_x(x)
    pdf.set_fill_color(*_BRAND_LIGHT)
    pdf.text_style(bold=True, size=12, colour=_BRAND)
    pdf.cell(45, row + 2, "Total", fill=True)
    pdf.cell(width - 45, row + 2, f"{_money(doc.total)} {currency}", align="R", fill=True)
    pdf.ln(row + 6)
    pdf.text_style(size=8, colour=_MUTED)
    pdf.multi_cell(
        pdf.epw,
        4.5,
        pdf.clean(
            f'Amounts in {doc.currency}. Rates are per unit; "varies" marks a line whose '
            "price changed during the period."
        ),
        new_x="LMARGIN",
        new_y="NEXT",
    )


# -- CSV ------------------------------------------------------------------------------------------


def render_csv(doc: InvoiceDocument) -> bytes:
    """The invoice's lines as UTF-8 CSV: a header row, then one row per line, no totals."""
    head = [doc.number, _iso(doc.period_start), _iso(doc.period_end), doc.project_name]
    rows = ([*head, doc.budget_code, *_line_fields(line), doc.currency] for line in doc.lines)
    return _csv(INVOICE_CSV_COLUMNS, rows)


def export_csv(rows: Iterable[ExportRow]) -> bytes:
    """The finance export of a period as UTF-8 CSV: a header row, then one row per invoice line
    in the order given."""
    return _csv(
        EXPORT_CSV_COLUMNS,
        (
            [
                row.cost_centre,
                str(row.budget_code_id),
                str(row.project_id),
                row.project_name,
                row.invoice_number,
                _iso(row.issued_at),
                _iso(row.period_start),
                _iso(row.period_end),
                *_line_fields(row.line),
                row.currency,
            ]
            for row in rows
        ),
    )


def _line_fields(line: InvoiceLine) -> list[str]:
    """The columns from ``kind`` to ``amount`` shared by both CSV layouts."""
    return [
        line.kind.value,
        str(line.instance_id),
        line.instance_name,
        line.resource.value,
        line.model,
        _plain(line.quantity),
        line.unit,
        "" if line.rate is None else _plain(line.rate),
        _plain(line.amount),
    ]


def _csv(columns: Sequence[str], rows: Iterable[Sequence[str]]) -> bytes:
    """Header and rows as UTF-8 CSV (RFC 4180 quoting and line endings)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    writer.writerows(rows)
    return out.getvalue().encode("utf-8")


# -- Formatting -----------------------------------------------------------------------------------


def _money(amount: Decimal) -> str:
    """An amount as given, with thousands separators: ``1,234.50``."""
    return f"{amount:,f}"


def _quantity(quantity: Decimal) -> str:
    """A quantity rounded half-up to at most 3 decimals, trailing zeros dropped: ``1,234.5``."""
    rounded = quantity.quantize(Decimal("0.001"), rounding=ROUND_HALF_UP)
    if rounded == 0:
        rounded = abs(rounded)
    text = f"{rounded:,f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def _plain(number: Decimal) -> str:
    """A number as a plain decimal string, exactly: no exponent, no separators."""
    return f"{number:f}"


def _utc(moment: datetime) -> datetime:
    """``moment`` in UTC (a naive time is taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _iso(moment: datetime) -> str:
    """ISO 8601 in UTC with a ``Z`` suffix."""
    return _utc(moment).isoformat().replace("+00:00", "Z")


def _day(moment: datetime) -> date:
    """The UTC calendar day of ``moment``."""
    return _utc(moment).date()


def _period(doc: InvoiceDocument, dash: str = "\u2013") -> str:
    """First and last day of the period (its end is exclusive), in UTC."""
    first = _day(doc.period_start)
    last = max(first, _day(_utc(doc.period_end) - timedelta(microseconds=1)))
    return f"{first.isoformat()} {dash} {last.isoformat()}"
