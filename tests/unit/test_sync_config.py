"""sync.toml parsing and the pieces of the SQL source that need no database."""

from __future__ import annotations

import datetime as dt
import decimal
from pathlib import Path

import pytest

from semsearch.adapters.sources.sql import decode_value, encode_value, normalize_url, step_back
from semsearch.errors import InputError
from semsearch.services.sync_config import load_sync_file, mask_password, spec_from_mapping

REPO = Path(__file__).resolve().parents[2]


def test_the_shipped_example_parses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SHOP_DATABASE_URL", "postgresql://u:pw@db:5432/shop")
    specs = load_sync_file(REPO / "deploy" / "sync.toml.example")
    assert [(s.name, s.collection, s.is_sql) for s in specs] == [
        ("shop", "products", True), ("handbook", "handbook", False)]
    assert specs[0].text == ("description",) and specs[0].lookback_seconds == 60
    assert specs[0].public()["source"] == "postgresql://u:***@db:5432/shop"


def test_config_errors_are_precise(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = tmp_path / "sync.toml"
    monkeypatch.delenv("NOPE_URL", raising=False)
    f.write_text('[[source]]\nurl = "${NOPE_URL}"\ntable = "t"\ncollection = "c"\n')
    with pytest.raises(InputError, match="environment variable NOPE_URL is not set"):
        load_sync_file(f)
    f.write_text('[[source]]\nurl = "sqlite:///x.db"\ntable = "t"\ncollection = "c"\n'
                 'colour = "red"\n')
    with pytest.raises(InputError, match=r"unknown key.*colour"):
        load_sync_file(f)
    f.write_text('[[source]]\nurl = "sqlite:///x.db"\ntable = "t"\ncollection = "c"\n'
                 '[[source]]\nsource = "docs"\ncollection = "c"\n')
    with pytest.raises(InputError, match="both write collection 'c'"):
        load_sync_file(f)
    f.write_text("[[source]\n")
    with pytest.raises(InputError, match="not valid TOML"):
        load_sync_file(f)
    with pytest.raises(InputError, match="exactly one of --table and --query"):
        spec_from_mapping({"source": "sqlite:///x.db", "collection": "c"}, "flags")


def test_passwords_are_masked() -> None:
    assert mask_password("postgresql://me:s3cr%40t@h/db") == "postgresql://me:***@h/db"
    assert mask_password("postgresql://me@h/db") == "postgresql://me@h/db"
    assert mask_password("sqlite:///a.db") == "sqlite:///a.db"


def test_watermark_values_round_trip_their_type() -> None:
    for v in (dt.datetime(2026, 1, 2, 3, 4, 5, 6), dt.datetime(2026, 1, 2, tzinfo=dt.UTC),
              dt.date(2026, 1, 2), decimal.Decimal("12.50"), 17, "abc", 1.5):
        back = decode_value(encode_value(v))
        assert back == v and type(back) is type(v)


def test_step_back_keeps_the_type() -> None:
    assert step_back(dt.datetime(2026, 1, 1, 0, 1), 60) == dt.datetime(2026, 1, 1)
    assert step_back(dt.date(2026, 1, 2), 60) == dt.date(2026, 1, 1)
    assert step_back(1000, 60) == 940
    assert step_back(decimal.Decimal("100.5"), 60) == decimal.Decimal("40.5")
    assert step_back("2026-01-01", 60) == "2026-01-01"  # strings cannot be moved
    assert step_back(dt.datetime(2026, 1, 1), 0) == dt.datetime(2026, 1, 1)


def test_driverless_urls_get_installed_drivers() -> None:
    assert normalize_url("postgresql://u@h/db").startswith("postgresql+psycopg://") or \
        normalize_url("postgresql://u@h/db") == "postgresql://u@h/db"
    assert normalize_url("mysql://root@h/db") in ("mysql+pymysql://root@h/db",
                                                  "mysql://root@h/db")
    assert normalize_url("sqlite:///x.db") == "sqlite:///x.db"
