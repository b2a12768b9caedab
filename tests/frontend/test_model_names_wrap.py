"""At 800 px a timm name in the compare view's tables wraps after an underscore, never inside a word: the picker
and the runs table showed "deit_tiny_patch16_22" over "4". Each piece between underscores must sit on one line."""
import pytest

from .conftest import shot
from .test_jobs_list import narrow, post  # noqa: F401 (narrow: the 800 px page fixture)

pytestmark = pytest.mark.browser

NAME = "deit_tiny_patch16_224"
# Each text piece of the cell (the name's pieces between <wbr>s, the swatch's glyph): how many lines it takes.
LINES_PER_PIECE = """(sel) => [...document.querySelector(sel).childNodes].filter(n => n.nodeType === 3 && n.data.trim())
  .map(n => { const r = document.createRange(); r.selectNodeContents(n);
              return [n.data, new Set([...r.getClientRects()].map(x => Math.round(x.top))).size]; })"""


def test_a_long_model_name_wraps_only_after_its_underscores(make_lab, narrow):  # noqa: F811
    lab = make_lab()  # no worker: the jobs stay queued, the tables list them all the same
    ids = [post(lab, "/api/experiments", name=f"run {i}", config={"model": NAME, "weights": "none", "epochs": 1})
           ["jobs"][0]["id"] for i in range(2)]
    narrow.goto(lab.url + f"/#/compare?jobs={','.join(map(str, ids))}")
    for sel in (f"#run-table tr[data-job='{ids[0]}'] td.model", f"#compare-table tr[data-job='{ids[0]}'] td.model"):
        narrow.wait_for_selector(sel)
        assert narrow.text_content(sel).replace("\u00a0", " ").strip().endswith(NAME)  # the text is the name
        pieces = narrow.evaluate(LINES_PER_PIECE, sel)
        assert "".join(p for p, _ in pieces).strip().endswith(NAME)
        assert all(lines == 1 for _, lines in pieces), (sel, pieces)  # no piece broken across lines
    shot(narrow, "compare-model-names-800px")
    assert not narrow.errors
