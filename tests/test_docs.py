"""The documentation that is derived from code stays current, and the README stays a first screen."""
from __future__ import annotations

import re

from core.settings import Settings
from tests.conftest import ROOT
from tools import gen_config_doc


def test_configuration_page_is_what_the_settings_class_writes():
    page = gen_config_doc.DOC.read_text()
    assert page == gen_config_doc.render(page), "docs/configuration.md is stale: run `python -m tools.gen_config_doc`"


def test_every_setting_is_documented():
    docs = gen_config_doc.field_docs()
    missing = [name for name in Settings.model_fields if not docs.get(name)]
    assert not missing, f"settings without a comment to document them in core/settings.py: {missing}"


def test_a_new_setting_makes_the_page_stale(monkeypatch):
    """The staleness check can fail: a planted setting that the committed page does not list."""

    class Planted(Settings):
        planted_limit: int = 7

    monkeypatch.setattr(gen_config_doc, "Settings", Planted)
    page = gen_config_doc.DOC.read_text()
    assert "`BLOCKLAB_PLANTED_LIMIT` | `7`" in gen_config_doc.render(page)
    assert gen_config_doc.render(page) != page


def test_readme_is_a_first_screen_and_its_links_resolve():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.encode()) <= 15_000
    for target in re.findall(r"\]\(((?:docs|notebooks)/[^)#]+)", readme):
        assert (ROOT / target).exists(), f"README links to a missing file: {target}"


def test_the_docs_quote_the_bf16_reference_as_the_catalogue_declares_it():
    """The engine's bf16 measurement is a fact declared once (core.catalogue.BF16_REFERENCE, which the plan quotes);
    the pages that cite it say the same numbers."""
    from core.catalogue import BF16_REFERENCE as ref
    method = " ".join((ROOT / "docs" / "method.md").read_text().split())
    assert (f"{100 * ref['fp32_best_val_acc']:.2f}% in fp32, {100 * ref['bf16_best_val_acc']:.2f}% in bf16"
            in method)
    effect = 100 * (ref["bf16_best_val_acc"] - ref["fp32_best_val_acc"])
    assert f"{effect:+.2f} points" in " ".join((ROOT / "docs" / "plan-estimates.md").read_text().split())
