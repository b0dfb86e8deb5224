"""The documentation site builds strictly (mkdocs-material, `mkdocs.yml`): a broken link, a missing page, a
page neither in the nav nor declared outside it fails. And the README stays a front door, not a notebook."""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_site_builds_strictly(tmp_path):
    """What `mkdocs build --strict` does, in-process (its own logger's warnings are counted as errors)."""
    pytest.importorskip("material", reason="mkdocs-material is in the dev extra")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config

    config = load_config(str(ROOT / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site"))
    build(config)  # raises mkdocs.exceptions.Abort on any warning under strict
    assert (tmp_path / "site" / "index.html").is_file()
    for page in ("results", "baselines", "studies", "speed", "cluster", "failure", "world", "design"):
        assert (tmp_path / "site" / page / "index.html").is_file(), page


def test_a_broken_link_fails_the_build(tmp_path):
    pytest.importorskip("material", reason="mkdocs-material is in the dev extra")
    from mkdocs.commands.build import build
    from mkdocs.config import load_config
    from mkdocs.exceptions import Abort

    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "index.md").write_text("# Home\n\n[gone](nowhere.md)\n")
    (tmp_path / "mkdocs.yml").write_text((ROOT / "mkdocs.yml").read_text().split("\nnav:")[0] + "\n")
    config = load_config(str(tmp_path / "mkdocs.yml"), strict=True, site_dir=str(tmp_path / "site"))
    with pytest.raises(Abort):
        build(config)


def test_the_readme_is_short_and_names_both_test_tiers():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300
    assert re.search(r'^python -m pytest -q -m "not slow"(\s|$)', text, re.MULTILINE), "the fast tier"
    assert re.search(r"^python -m pytest -q(\s+#.*)?$", text, re.MULTILINE), "the full suite"


def test_every_readme_link_to_the_docs_names_a_page_that_exists():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((docs/[^)#]+)", text)
    assert targets, "the README points into docs/"
    missing = [t for t in targets if not (ROOT / t).exists()]
    assert not missing, missing
