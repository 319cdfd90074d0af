"""Which images `iei embed` reads: a folder (recursive), a text file of paths, or a column of a
Parquet or CSV table.

Paths are kept as the input names them (a folder's files are joined onto the folder as given;
a list's relative paths are relative to the current directory), because that string is the key
a resumed run matches against the output.
"""

from __future__ import annotations

import csv
from pathlib import Path

from iei.errors import InputError
from iei.extras import require

# File name endings taken from a folder; other files are left alone. (A list or a table is taken
# as it is: whatever it names is tried, and what is not an image is reported as a bad file.)
IMAGE_SUFFIXES = frozenset({
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".avif", ".tif", ".tiff", ".bmp", ".dib",
    ".ico", ".ppm", ".pgm", ".pbm", ".pnm", ".tga", ".qoi",
})


class InputListError(Exception):
    """INPUT cannot be listed (missing, unreadable, no such column). The message says why."""


def list_images(source: str, column: str | None = None) -> list[str]:
    """The image paths INPUT stands for, in a stable order, without duplicates."""
    path = Path(source).expanduser()
    if path.is_dir():
        if column:
            raise InputListError(f"--column applies to a Parquet or CSV table, but {source} is a folder")
        return _folder_images(path, source)
    if not path.is_file():
        raise InputListError(f"{source} is neither a folder nor a file")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        paths = _parquet_column(path, column or "path")
    elif suffix in (".csv", ".tsv"):
        paths = _csv_column(path, column or "path", "\t" if suffix == ".tsv" else ",")
    elif column:
        raise InputListError(f"--column applies to a Parquet or CSV table, not {source}")
    else:
        paths = _text_lines(path)
    return list(dict.fromkeys(paths))


def _folder_images(folder: Path, as_given: str) -> list[str]:
    root = Path(as_given)
    found = (p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    return sorted(str(root / p.relative_to(folder)) for p in found)


def _text_lines(path: Path) -> list[str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise InputListError(f"cannot read the file list {path}: {e}") from None
    return [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def _parquet_column(path: Path, column: str) -> list[str]:
    pq = require("pyarrow.parquet", "a Parquet list of images")

    try:
        schema = pq.read_schema(path)
        if column not in schema.names:
            raise InputListError(f"{path} has no column {column!r} (columns: {', '.join(schema.names)}); pick one with --column")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise InputListError(f"cannot read the table {path}: {e}") from None
    return [str(v) for v in values if v]


def _csv_column(path: Path, column: str, delimiter: str) -> list[str]:
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter=delimiter)
            if reader.fieldnames is None or column not in reader.fieldnames:
                names = ", ".join(reader.fieldnames or [])
                raise InputListError(f"{path} has no column {column!r} (columns: {names}); pick one with --column")
            return [row[column].strip() for row in reader if row[column] and row[column].strip()]
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InputListError(f"cannot read the table {path}: {e}") from None


def read_image_file(path: str) -> bytes:
    """The file's bytes. Raises InputError naming what went wrong (missing, unreadable, empty)."""
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise InputError("no such file") from None
    except IsADirectoryError:
        raise InputError("a folder, not an image file") from None
    except OSError as e:
        raise InputError(f"cannot read the file ({e.strerror or type(e).__name__})") from None
    if not data:
        raise InputError("empty file")
    return data
