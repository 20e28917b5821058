from __future__ import annotations

import json

from langchain_fslm import models
from langchain_fslm.models import gguf_cache


def test_file_hash_is_remembered_and_invalidated_by_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    f = tmp_path / "m.gguf"
    f.write_bytes(b"abc")
    first = gguf_cache._file_hash(f)
    assert first == gguf_cache.sha256_file(f)
    memo = json.loads((tmp_path / "cache" / "gguf" / "hashes.json").read_text())
    assert list(memo.values()) == [first]
    calls = []
    # patched where _file_hash looks it up (the GGUF cache module), so the patch takes effect
    monkeypatch.setattr(gguf_cache, "sha256_file", lambda p: calls.append(p) or "x")
    assert gguf_cache._file_hash(f) == first and calls == []  # remembered: the file is not re-read
    f.write_bytes(b"abcd")  # size changes -> hashed again
    assert gguf_cache._file_hash(f) == "x" and calls == [f]


def test_a_folder_or_file_that_is_not_a_model_is_a_clear_error(tmp_path, monkeypatch):
    import pytest

    monkeypatch.setenv("FSLM_CACHE_DIR", str(tmp_path / "cache"))
    empty = tmp_path / "empty"
    empty.mkdir()
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"not a gguf file" * 8)
    for source, named in ((empty, "empty"), (junk, "junk.gguf")):
        with pytest.raises(models.ModelNotFoundError, match=named) as failure:
            models.load_base_model(str(source))
        assert ".." not in str(failure.value)  # one sentence, one period
