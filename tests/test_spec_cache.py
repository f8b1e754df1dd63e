"""The content-hash cache: an unchanged valid spec is not validated again; any change is."""

from __future__ import annotations

from pathlib import Path

import pytest

from flexflow.spec import SpecError, parse, parse_spec
from flexflow.spec.cache import SpecCache
from tests.conftest import ROOT

TEXT = (ROOT / "specs/spring_social_refresh.yaml").read_text()


def forbid_validation(monkeypatch: pytest.MonkeyPatch) -> None:
    def validated(*args: object) -> None:
        raise AssertionError("validated again")

    monkeypatch.setattr(parse, "load", validated)


def test_a_cached_spec_is_built_without_validation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = SpecCache(tmp_path)
    first = parse_spec(TEXT, "a.yaml", cache)
    assert len(list(tmp_path.glob("*.json"))) == 1
    forbid_validation(monkeypatch)
    second = parse_spec(TEXT, "a.yaml", cache)
    assert second == first


def test_a_changed_spec_is_validated_again(tmp_path: Path) -> None:
    cache = SpecCache(tmp_path)
    parse_spec(TEXT, "a.yaml", cache)
    with pytest.raises(SpecError, match="guidance"):
        parse_spec(TEXT.replace("seed: 42", "seed: 42, guidance: 3.33"), "a.yaml", cache)
    assert len(list(tmp_path.glob("*.json"))) == 1, "invalid specs are never cached"


def test_an_unusable_cache_is_only_a_miss(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = SpecCache(blocker / "cache")
    assert parse_spec(TEXT, "a.yaml", cache).dag_id == "spring_social_refresh"
    (tmp_path / "corrupt").mkdir()
    corrupt = SpecCache(tmp_path / "corrupt")
    corrupt.put(TEXT, {"ok": True})
    next((tmp_path / "corrupt").glob("*.json")).write_text("{not json")
    assert corrupt.get(TEXT) is None


def test_a_damaged_entry_is_validated_again(tmp_path: Path) -> None:
    cache = SpecCache(tmp_path)
    cache.put(TEXT, {})  # parses as JSON, but is no spec
    assert parse_spec(TEXT, "a.yaml", cache).dag_id == "spring_social_refresh"
    assert cache.get(TEXT)["dag_id"] == "spring_social_refresh", "the entry was rewritten"
