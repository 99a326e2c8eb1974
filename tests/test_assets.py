import hashlib
import json
import shutil

import pytest

from simslm import assets


def test_registry_has_the_offline_assets():
    assert {"tinystories-sample", "stories260K", "blimp", "librispeech-samples"} <= set(assets.REGISTRY)
    assert len(assets.get("blimp").files) == 67


@pytest.mark.parametrize("name", sorted(assets.REGISTRY))
def test_every_asset_resolves_from_the_mirror_with_matching_checksums(name, mirror):
    resolved = assets.resolve(name)
    assert resolved.source == "mirror"
    for asset_file in assets.get(name).files:
        path = resolved.paths[asset_file.path]
        assert path == (mirror / asset_file.path).resolve()
        assert hashlib.sha256(path.read_bytes()).hexdigest() == asset_file.sha256
    recorded = json.loads((assets.cache_dir() / "resolved.json").read_text())[name]
    assert recorded["source"] == "mirror" and len(recorded["files"]) == len(assets.get(name).files)


def test_explicit_path_wins_and_may_be_the_assets_own_folder(mirror):
    resolved = assets.resolve("stories260K", path=mirror / "stories260K")
    assert resolved.source == "path" and resolved.file("tok512.model").name == "tok512.model"


def test_offline_without_mirror_names_the_asset_and_how_to_provide_it(monkeypatch):
    monkeypatch.delenv("SIMSLM_MIRROR")
    with pytest.raises(assets.AssetError) as caught:
        assets.resolve("blimp")
    message = str(caught.value)
    assert "asset 'blimp' is not available" in message and "SIMSLM_MIRROR" in message
    assert "alexwarstadt/blimp" in message


def test_a_corrupt_copy_fails_its_checksum(tmp_path, mirror):
    copy = tmp_path / "stories260K"
    shutil.copytree(mirror / "stories260K", copy)
    (copy / "tok512.model").write_bytes((copy / "tok512.model").read_bytes()[:-10])
    with pytest.raises(assets.AssetError, match="sha256"):
        assets.resolve("stories260K", path=copy)


def test_origin_download_goes_to_the_cache_and_is_reused(tmp_path, monkeypatch):
    origin = tmp_path / "origin.txt"
    origin.write_text("hello\n")
    test_asset = assets.Asset(name="test-download", description="a test", origin="file", license="none",
                              files=(assets.AssetFile(path="test/origin.txt", url=origin.as_uri(),
                                                      sha256=hashlib.sha256(b"hello\n").hexdigest()),))
    monkeypatch.setitem(assets.REGISTRY, test_asset.name, test_asset)
    monkeypatch.delenv("SIMSLM_OFFLINE")
    first = assets.resolve("test-download")
    assert first.source == "origin" and first.file("origin.txt").read_text() == "hello\n"
    assert first.file("origin.txt").is_relative_to(assets.cache_dir())
    origin.unlink()
    assert assets.resolve("test-download").source == "cache"


def test_reference_alignment_rebuilds_the_mirrors_ctm_byte_for_byte(mirror):
    assert assets.reference_alignment_ctm() == (mirror / "librispeech" / "1272-128104-0000.ctm").read_text()


def test_resolve_file_takes_a_path_or_a_single_file_asset(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("hi\n")
    assert assets.resolve_file(corpus) == corpus
    assert assets.resolve_file("tinystories-sample").name == "tinystories_2316.jsonl"
    with pytest.raises(assets.AssetError, match="no such file"):
        assets.resolve_file("nonexistent.jsonl")
