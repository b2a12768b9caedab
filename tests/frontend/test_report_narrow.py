"""The HTML report read in a narrow window (800 px, a laptop's half screen): its wide tables scroll inside
themselves; the page itself never scrolls sideways (at 800 px the results table pushed the page to 1,031 px)."""
import pytest

from tests.backend.conftest import api  # noqa: F401  (the real app on a fresh home, as the report tests use it)
from tests.backend.test_reproduction_report import _lab

from .conftest import ARTIFACTS

pytestmark = pytest.mark.browser


@pytest.mark.parametrize("width", [800, 1400])
def test_the_report_page_never_scrolls_sideways(api, browser, width):  # noqa: F811
    ids, k0, k2, other = _lab(api)
    html = api.get("/api/report.html", params={"jobs": ",".join(map(str, [*ids, k0, k2, other]))}).text
    ctx = browser.new_context(viewport={"width": width, "height": 900})
    try:
        page = ctx.new_page()
        page.set_content(html, wait_until="load")
        page.wait_for_selector("table")
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"report-narrow-{width}.png"), full_page=True)
        page_width = page.evaluate("document.documentElement.scrollWidth")
        assert page_width <= width, f"the report is {page_width} px wide in a {width} px window"
        widest = page.evaluate("Math.max(...[...document.querySelectorAll('table')].map(t => t.scrollWidth))")
        assert widest > 0  # the tables are there, each whole (scrolled inside itself where it must)
    finally:
        ctx.close()
