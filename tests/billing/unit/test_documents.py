"""Invoice documents: the PDF (readable, paged, Unicode-safe) and the CSV files (exact numbers)."""

from __future__ import annotations

import csv
import io
import uuid
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path

import pytest
from pypdf import PdfReader
from pypdf.generic import DictionaryObject

from compgrid_billing.domain.documents import (
    CORRECTIONS_TITLE,
    DEJAVU_SANS,
    EXPORT_CSV_COLUMNS,
    INVOICE_CSV_COLUMNS,
    export_csv,
    render_csv,
    render_pdf,
)
from compgrid_billing.domain.invoice import (
    UNITS,
    ExportRow,
    InvoiceDocument,
    InvoiceLine,
    LineKind,
    Resource,
)

UNICODE_NAME = "Ümlaut Ω lab 研究"
DASH = "\u2013"  # en dash
BUDGET_NAME = "Grant \u201cΩ\u201d \u2013 2026"  # typographic quotes and dash
MISSING_FONT = ("/nonexistent/fonts/Sans.ttf", "/nonexistent/fonts/Sans-Bold.ttf")


def line(
    position: int,
    resource: Resource,
    quantity: str,
    rate: str | None,
    amount: str,
    *,
    name: str = "train-01",
    model: str = "",
    kind: LineKind = LineKind.USAGE,
) -> InvoiceLine:
    return InvoiceLine(
        position=position,
        kind=kind,
        instance_id=uuid.uuid4(),
        instance_name=name,
        resource=resource,
        model=model,
        quantity=Decimal(quantity),
        unit=UNITS[resource],
        rate=None if rate is None else Decimal(rate),
        amount=Decimal(amount),
    )


LINES = (
    line(1, Resource.VCPU, "1234.5", "0.0200", "24.69"),
    line(2, Resource.MEMORY, "4096", "0.0025", "10.24"),
    line(3, Resource.GPU, "100.1256", None, "1812.34", model="a100"),
    line(4, Resource.STORAGE, "500", "0.0300", "15.00", name="scratch"),
    line(
        5, Resource.GPU, "-2.5", "2.1000", "-5.25", name="old-run", model="h100",
        kind=LineKind.ADJUSTMENT,
    ),
    line(6, Resource.VCPU, "10", None, "0.60", name="old-run", kind=LineKind.ADJUSTMENT),
)  # fmt: skip


def document(
    *, lines: tuple[InvoiceLine, ...] = LINES, number: str = "INV-2026-11-0042", **extra: object
) -> InvoiceDocument:
    usage = sum((x.amount for x in lines if x.kind is LineKind.USAGE), Decimal("0.00"))
    adjustments = sum((x.amount for x in lines if x.kind is LineKind.ADJUSTMENT), Decimal("0.00"))
    values: dict[str, object] = {
        "invoice_id": uuid.uuid4(),
        "number": number,
        "issued_at": datetime(2026, 12, 2, 6, 30, tzinfo=UTC),
        "period_start": datetime(2026, 11, 1, tzinfo=UTC),
        "period_end": datetime(2026, 12, 1, tzinfo=UTC),
        "project_id": uuid.uuid4(),
        "project_name": "Protein Folding Lab",
        "budget_code_id": uuid.uuid4(),
        "budget_code": "BC-7",
        "budget_name": "ERC Grant 2026",
        "currency": "EUR",
        "subtotal": usage,
        "adjustments": adjustments,
        "total": usage + adjustments,
        "lines": lines,
        "pi_name": "Dr. Ada Lovelace",
        "pi_email": "ada@example.org",
        **extra,
    }
    return InvoiceDocument(**values)  # type: ignore[arg-type]


def pages_text(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf)).pages]


def font_names(pdf: bytes) -> set[str]:
    """The base names of every font the PDF's pages use (subset prefixes removed)."""
    names = set()
    for page in PdfReader(io.BytesIO(pdf)).pages:
        resources = page["/Resources"].get_object()
        assert isinstance(resources, DictionaryObject)
        fonts = resources["/Font"].get_object()
        assert isinstance(fonts, DictionaryObject)
        for ref in fonts.values():
            font = ref.get_object()
            assert isinstance(font, DictionaryObject)
            names.add(str(font["/BaseFont"]).lstrip("/").split("+")[-1])
    return names


def dejavu() -> tuple[str, str]:
    for regular, bold in DEJAVU_SANS:
        if Path(regular).is_file():
            return str(regular), str(bold)
    pytest.skip("DejaVu Sans is not installed (Debian package fonts-dejavu-core)")


def read_csv(data: bytes) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(data.decode("utf-8"), newline="")))


# -- PDF ------------------------------------------------------------------------------------------


def test_the_pdf_shows_the_invoice_facts_lines_and_totals() -> None:
    doc = document()
    pdf = render_pdf(doc)
    assert pdf.startswith(b"%PDF-")
    [text] = pages_text(pdf)
    for expected in (
        "CompGrid",
        "Invoice INV-2026-11-0042",
        "Protein Folding Lab",
        "PI: Dr. Ada Lovelace",
        "ada@example.org",
        f"Cost centre: BC-7 {DASH} ERC Grant 2026",
        "Issue date 2026-12-02",
        # the period's end is exclusive: the last day shown is the day before it
        f"2026-11-01 {DASH} 2026-11-30",
        "train-01: vcpu 1,234.5 vCPU-hour 0.0200 24.69",
        "train-01: memory 4,096 GiB-hour 0.0025 10.24",
        "train-01: a100 GPU 100.126 GPU-hour varies 1,812.34",
        "scratch: storage 500 GiB-month 0.0300 15.00",
        "Subtotal 1,862.27 EUR",
        "Adjustments -4.65 EUR",
        "Total 1,857.62 EUR",
        "Page 1 of 1",
    ):
        assert expected in text, expected
    assert "2026-12-01" not in text
    # corrections have their own section, between the period's lines and the totals
    usage_at = text.index("Usage in this period")
    corrections_at = text.index(CORRECTIONS_TITLE)
    assert usage_at < text.index("scratch: storage") < corrections_at
    assert corrections_at < text.index("old-run: h100 GPU") < text.index("Subtotal")
    assert "-2.5 GPU-hour 2.1000 -5.25" in text
    assert "-5.25" not in text[:corrections_at]


def test_the_issuer_brands_the_pdf() -> None:
    pdf = render_pdf(document(), issuer="Institute Compute Services")
    [text] = pages_text(pdf)
    assert text.startswith("Institute Compute Services")
    assert "CompGrid" not in text
    metadata = PdfReader(io.BytesIO(pdf)).metadata
    assert metadata is not None
    assert metadata.author == "Institute Compute Services"
    assert metadata.title == "Invoice INV-2026-11-0042"


def test_the_pdf_prints_numbers_from_decimal_without_float() -> None:
    # a float would print 2**53 + 1 as ...992 and round 2.0005 (really 2.000499...) down
    big = line(1, Resource.STORAGE, "9007199254740993", "0.0000001", "1234567890.12")
    half = line(2, Resource.MEMORY, "2.0005", "0.5", "1.00")
    tiny = line(3, Resource.VCPU, "0.0004", "3", "1500")
    [page] = pages_text(render_pdf(document(lines=(big, half, tiny), currency="JPY")))
    text = " ".join(page.split())  # a long quantity may wrap before its unit
    assert "9,007,199,254,740,993 GiB-month 0.0000001 1,234,567,890.12" in text
    assert "train-01: memory 2.001 GiB-hour 0.5 1.00" in text
    assert "train-01: vcpu 0 vCPU-hour 3 1,500" in text
    assert "Amount (JPY)" in text
    assert CORRECTIONS_TITLE not in text


def test_an_invoice_without_lines_or_pi_still_renders() -> None:
    doc = document(lines=(), pi_name="", pi_email="", budget_name="")
    [text] = pages_text(render_pdf(doc))
    assert "No usage in this period." in text
    assert CORRECTIONS_TITLE not in text
    assert "PI:" not in text
    assert "Cost centre: BC-7" in text
    assert "Total 0.00 EUR" in text


def test_the_same_document_renders_to_the_same_bytes() -> None:
    doc = document()
    assert render_pdf(doc) == render_pdf(doc)
    assert render_pdf(doc, font_paths=()) == render_pdf(doc, font_paths=())


def test_a_long_invoice_breaks_across_pages_repeating_the_table_header() -> None:
    lines = tuple(
        line(
            n, Resource.GPU if n % 3 else Resource.VCPU, f"{n}.5", None if n % 5 else "1.25",
            f"{n * 10}.00", name=f"node-{n:03d}", model="a100" if n % 3 else "",
            kind=LineKind.ADJUSTMENT if n > 390 else LineKind.USAGE,
        )
        for n in range(1, 401)
    )  # fmt: skip
    doc = document(lines=lines)
    pages = pages_text(render_pdf(doc))
    count = len(pages)
    assert count > 1
    for number, text in enumerate(pages, start=1):
        assert f"Page {number} of {count}" in text
        assert "Invoice INV-2026-11-0042" in text
    # every page holding lines starts their table with the header row
    for text in pages:
        if "node-" in text:
            assert "Description Quantity Rate (EUR) Amount (EUR)" in text
    # every line is printed exactly once
    everything = "\n".join(pages)
    for n in (1, 123, 390, 391, 400):
        assert everything.count(f"node-{n:03d}:") == 1
    assert everything.count(CORRECTIONS_TITLE) == 1
    assert f"{doc.total:,f}" == "802,000.00"
    assert "Total 802,000.00 EUR" in pages[-1]


def test_unicode_text_renders_with_the_dejavu_font() -> None:
    regular, _ = dejavu()
    pdf = render_pdf(document(project_name=UNICODE_NAME, budget_name=BUDGET_NAME))
    [text] = pages_text(pdf)
    assert any(name.startswith("DejaVuSans") for name in font_names(pdf))
    assert "Helvetica" not in font_names(pdf)
    assert "Ümlaut Ω lab" in text
    assert f"Cost centre: BC-7 {DASH} {BUDGET_NAME}" in text
    # DejaVu Sans has no CJK glyphs: those are shown as "?" instead of disappearing
    assert "Ümlaut Ω lab ??" in text
    assert Path(regular).name == "DejaVuSans.ttf"


def test_a_font_without_its_bold_file_serves_both_styles() -> None:
    regular, _ = dejavu()
    pdf = render_pdf(document(), font_paths=[MISSING_FONT, (regular, "/nonexistent/Bold.ttf")])
    names = font_names(pdf)
    assert names
    assert all(name.startswith("DejaVuSans") for name in names)
    assert "Total 1,857.62 EUR" in pages_text(pdf)[0]


@pytest.mark.parametrize("font_paths", [(), (MISSING_FONT,)], ids=["none", "missing"])
def test_without_a_unicode_font_the_core_font_shows_question_marks(
    font_paths: tuple[tuple[str, str], ...],
) -> None:
    doc = document(project_name=UNICODE_NAME, budget_name=BUDGET_NAME, lines=LINES[:3])
    pdf = render_pdf(doc, font_paths=font_paths)
    assert pdf.startswith(b"%PDF-")
    assert font_names(pdf) <= {"Helvetica", "Helvetica-Bold"}
    [text] = pages_text(pdf)
    # Latin-1 letters stay, others become "?", typographic quotes and dashes turn ASCII
    assert "Ümlaut ? lab ??" in text
    assert 'Cost centre: BC-7 - Grant "?" - 2026' in text
    assert "2026-11-01 - 2026-11-30" in text
    assert f"Total {doc.total:,f} EUR" in text


# -- CSV ------------------------------------------------------------------------------------------


def test_the_invoice_csv_has_one_row_per_line_with_exact_amounts() -> None:
    doc = document(project_name=UNICODE_NAME)
    data = render_csv(doc)
    assert data.decode("utf-8").splitlines()[0] == ",".join(INVOICE_CSV_COLUMNS)
    assert INVOICE_CSV_COLUMNS[:5] == (
        "invoice_number", "period_start", "period_end", "project_name", "budget_code",
    )  # fmt: skip
    rows = read_csv(data)
    assert len(rows) == len(doc.lines)
    amounts = [Decimal(row["amount"]) for row in rows]
    assert amounts == [x.amount for x in doc.lines]
    assert sum(amounts) == doc.subtotal + doc.adjustments == doc.total
    for row, expected in zip(rows, doc.lines, strict=True):
        assert row["invoice_number"] == "INV-2026-11-0042"
        assert row["period_start"] == "2026-11-01T00:00:00Z"
        assert row["period_end"] == "2026-12-01T00:00:00Z"
        assert row["project_name"] == UNICODE_NAME
        assert row["budget_code"] == "BC-7"
        assert row["kind"] == expected.kind.value
        assert uuid.UUID(row["instance_id"]) == expected.instance_id
        assert row["instance_name"] == expected.instance_name
        assert row["resource"] == expected.resource.value
        assert row["model"] == expected.model
        assert Decimal(row["quantity"]) == expected.quantity
        assert row["unit"] == expected.unit
        assert row["rate"] == ("" if expected.rate is None else str(expected.rate))
        assert row["currency"] == "EUR"
    assert [row["quantity"] for row in rows] == ["1234.5", "4096", "100.1256", "500", "-2.5", "10"]
    assert [row["kind"] for row in rows].count("adjustment") == 2


def test_csv_numbers_are_plain_and_times_utc() -> None:
    plus_one = timezone(timedelta(hours=1))
    big = line(1, Resource.STORAGE, "1E+3", "0.0000001", "12345.67")
    doc = document(
        lines=(big,),
        period_start=datetime(2026, 11, 1, 1, tzinfo=plus_one),
        period_end=datetime(2026, 12, 1, 1, tzinfo=plus_one),
    )
    [row] = read_csv(render_csv(doc))
    assert row["quantity"] == "1000"
    assert row["rate"] == "0.0000001"
    assert row["amount"] == "12345.67"
    assert row["period_start"] == "2026-11-01T00:00:00Z"
    assert datetime.fromisoformat(row["period_end"]) == doc.period_end


def test_the_finance_export_has_one_row_per_line_of_every_invoice_in_order() -> None:
    first = document()
    second = document(
        number="INV-2026-11-0043",
        project_name=UNICODE_NAME,
        lines=(line(1, Resource.GPU, "3", "2.00", "6.00", model="h100"),),
    )
    given = [
        ExportRow(
            invoice_number=doc.number,
            issued_at=doc.issued_at,
            period_start=doc.period_start,
            period_end=doc.period_end,
            cost_centre=f"{doc.budget_code} {doc.budget_name}",
            budget_code_id=doc.budget_code_id,
            project_id=doc.project_id,
            project_name=doc.project_name,
            line=item,
            currency=doc.currency,
        )
        for doc in (first, second)
        for item in doc.lines
    ]
    data = export_csv(iter(given))
    assert data.decode("utf-8").splitlines()[0] == ",".join(EXPORT_CSV_COLUMNS)
    rows = read_csv(data)
    assert len(rows) == len(first.lines) + len(second.lines) == 7
    assert [row["invoice_number"] for row in rows] == [first.number] * 6 + [second.number]
    assert [uuid.UUID(row["instance_id"]) for row in rows] == [x.line.instance_id for x in given]
    last = rows[-1]
    assert last["cost_centre"] == "BC-7 ERC Grant 2026"
    assert uuid.UUID(last["budget_code_id"]) == second.budget_code_id
    assert uuid.UUID(last["project_id"]) == second.project_id
    assert last["project_name"] == UNICODE_NAME
    assert last["issued_at"] == "2026-12-02T06:30:00Z"
    assert (last["period_start"], last["period_end"]) == (
        "2026-11-01T00:00:00Z", "2026-12-01T00:00:00Z",
    )  # fmt: skip
    assert (last["kind"], last["resource"], last["model"]) == ("usage", "gpu", "h100")
    assert (last["quantity"], last["unit"], last["rate"]) == ("3", "GPU-hour", "2.00")
    assert (last["amount"], last["currency"]) == ("6.00", "EUR")
    for doc in (first, second):
        mine = [Decimal(row["amount"]) for row in rows if row["invoice_number"] == doc.number]
        assert sum(mine) == doc.total


def test_an_empty_export_is_just_the_header() -> None:
    assert export_csv([]).decode("utf-8") == ",".join(EXPORT_CSV_COLUMNS) + "\r\n"
    assert read_csv(render_csv(document(lines=()))) == []
