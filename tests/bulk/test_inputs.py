"""Listing INPUT: folders, file lists, Parquet and CSV columns; reading files with clear errors."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from iei.bulk.inputs import InputListError, list_images, read_image_file
from iei.errors import InputError


def test_folder_is_searched_recursively_for_images_only(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    for name in ("x.jpg", "a/y.PNG", "a/b/z.webp", "notes.txt", "a/b/model.json"):
        (tmp_path / name).write_bytes(b"-")
    assert list_images(str(tmp_path)) == sorted(str(tmp_path / n) for n in ("x.jpg", "a/y.PNG", "a/b/z.webp"))


def test_file_list_keeps_order_drops_blanks_comments_and_duplicates(tmp_path):
    listing = tmp_path / "list.txt"
    listing.write_text("b.jpg\n\n# a comment\n  a.jpg  \nb.jpg\n")
    assert list_images(str(listing)) == ["b.jpg", "a.jpg"]


def test_parquet_and_csv_columns(tmp_path):
    pq.write_table(pa.table({"file": ["p1.jpg", None, "p2.jpg"], "label": [1, 2, 3]}), tmp_path / "t.parquet")
    assert list_images(str(tmp_path / "t.parquet"), "file") == ["p1.jpg", "p2.jpg"]
    (tmp_path / "t.csv").write_text("id,path\n1,c1.jpg\n2,\n3,c2.jpg\n")
    assert list_images(str(tmp_path / "t.csv")) == ["c1.jpg", "c2.jpg"]


@pytest.mark.parametrize("table", ["t.parquet", "t.csv"])
def test_missing_column_names_the_columns_there_are(tmp_path, table):
    pq.write_table(pa.table({"file": ["a"]}), tmp_path / "t.parquet")
    (tmp_path / "t.csv").write_text("file\na\n")
    with pytest.raises(InputListError, match=r"no column 'path' \(columns: file\)"):
        list_images(str(tmp_path / table))


def test_unusable_inputs_fail_clearly(tmp_path):
    with pytest.raises(InputListError, match="neither a folder nor a file"):
        list_images(str(tmp_path / "missing"))
    with pytest.raises(InputListError, match="--column"):
        list_images(str(tmp_path), "path")


def test_read_image_file_names_the_problem(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(InputError, match="no such file"):
        read_image_file(str(tmp_path / "gone.jpg"))
    with pytest.raises(InputError, match="empty file"):
        read_image_file(str(tmp_path / "empty.jpg"))
    with pytest.raises(InputError, match="a folder"):
        read_image_file(str(tmp_path))
