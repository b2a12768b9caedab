"""The reproduction report as one document in two renderings: a run that has not finished is marked in both and no
statistic rests on it; the seeds column says how many seeds and which; each run keeps the look the compare view
gives it (core.palette); a name is text in both renderings, also to a Markdown renderer that passes raw HTML."""
import json
import re
from html.parser import HTMLParser

import pytest
from markdown_it import MarkdownIt

from core import palette, stats
from core.protocol import JobStatus

from .test_reproduction_report import DENSENET, _finish, _post

HOSTILE = "<img src=x onerror=alert(1)>"
HOSTILE_NAMES = [HOSTILE, "# <script>alert(2)</script>", "- [x](javascript:alert(3)) *b* `c`",
                 "1. <svg onload=alert(4)>", "x | y <b>bold</b> &lt;i&gt;", "``` <iframe src=x>",
                 "<!-- c --> <a href=javascript:alert(5)>a</a>"]


def _set_status(jid, status):
    from backend.app.db import session_scope
    from backend.app.models import Job
    with session_scope() as db:
        db.get(Job, jid).status = status
        db.commit()


def _unfinished_lab(api):
    """Two finished seeds of one config, and a third seed of it in each unfinished state that has an epoch."""
    done = [_post(api, f"seed {s}", "mixed", model=DENSENET, seed=s) for s in (0, 1)]
    _finish(done[0], [0.90, 0.92])
    _finish(done[1], [0.91, 0.94])
    others = {}
    for seed, status in [(2, JobStatus.RUNNING), (3, JobStatus.CANCELLED), (4, JobStatus.FAILED)]:
        jid = _post(api, f"seed {seed}", "mixed", model=DENSENET, seed=seed, epochs=3)
        _finish(jid, [0.677])  # one of three epochs, a number that would move the mean a lot
        _set_status(jid, status)
        others[status] = jid
    return done, others


def _pieces(text):
    return re.sub(r"\\(.)", r"\1", text)  # Markdown's escapes read as the characters


def test_unfinished_runs_are_marked_in_both_renderings_and_left_out_of_the_statistics(api):
    _, others = _unfinished_lab(api)
    md = api.get("/api/report.md", params={"group": "mixed"}).text
    html = api.get("/api/report.html", params={"group": "mixed"}).text
    s = stats.summary([0.92, 0.94])  # the two finished seeds alone
    # The unfinished seeds are not repeats of a 2-epoch config (epochs differ): their own row has no statistic.
    for page in (md, html):
        assert f"{100 * s['mean']:.2f}%" in page and "2 seeds: 0, 1" in page
        for status, jid in others.items():
            assert f"#{jid} {status}" in page  # named with its status where its row is
            assert f"{status}, 1 of 3 epochs: not a result" in page  # its line in the table of runs
        assert "67.70% (unfinished: not a result)" in page
        assert "none finished" in page and "no finished run" in page  # the row of the unfinished ones
        assert "3 of them not finished" in page
    rows = [line for line in md.splitlines() if line.startswith("| densenet201")]
    unfinished_row = next(r for r in rows if f"#{others[JobStatus.RUNNING]}" in r)
    assert "67.70%" not in unfinished_row and "| 0 | none finished | – |" in unfinished_row
    assert f"job #{others[JobStatus.RUNNING]} seed 2 (running): 67.70%" in _pieces(md)  # the curve says so too


def test_an_unfinished_repeat_of_a_finished_config_is_not_counted(api):
    done = [_post(api, f"seed {s}", "g", model=DENSENET, seed=s) for s in (0, 1, 2)]
    _finish(done[0], [0.91])
    _finish(done[1], [0.93])
    _finish(done[2], [0.50])
    _set_status(done[2], JobStatus.RUNNING)
    md = api.get("/api/report.md", params={"group": "g"}).text
    (row,) = [line for line in md.splitlines() if line.startswith("| densenet201")]
    assert f"| 2 | 2 seeds: 0, 1 | {100 * stats.summary([0.91, 0.93])['mean']:.2f}% |" in row
    assert f"#{done[0]}, #{done[1]}, #{done[2]} (running: unfinished, not counted)" in row


def test_each_run_keeps_its_look_and_a_model_its_colour_in_the_report_and_the_ui(api):
    """The compare view's looks (GET /api/compare/stats), the report's curves and GET /api/models' colours are one
    palette: a clone with one changed option is another shade and marker of its model's colour."""
    a = _post(api, "original", "looks", model=DENSENET)
    clone = _post(api, "clone lr", "looks", model=DENSENET, lr=0.001)
    other = _post(api, "deit", "looks", model="deit_tiny_patch16_224")
    for jid in (a, clone, other):
        _finish(jid, [0.8, 0.85])
    ids = f"{a},{clone},{other}"
    looks = {int(k): v for k, v in api.get("/api/compare/stats", params={"jobs": ids}).json()["looks"].items()}
    models = {m["id"]: m["colour"] for m in api.get("/api/models").json()}
    assert looks[a]["colour"] != looks[clone]["colour"] and looks[a]["symbol"] != looks[clone]["symbol"]
    assert looks[a]["model_colour"] == looks[clone]["model_colour"] == models[DENSENET]
    assert looks[a]["colour"] == models[DENSENET]  # the first run of a model: the model's own colour
    assert looks[other]["colour"] == models["deit_tiny_patch16_224"] != models[DENSENET]
    html = api.get("/api/report.html", params={"jobs": ids}).text
    figures = json.loads(re.search(r"const FIGURES = (.*?);\n", html).group(1).replace("<\\/", "</"))
    for fig in ("fig-curves", "fig-val_loss"):
        traces = {t["name"]: t for t in figures[fig]["data"]}
        for jid, name in [(a, "original"), (clone, "clone lr"), (other, "deit")]:
            t = traces[f"#{jid} {name}"]
            assert (t["line"]["color"], t["marker"]["symbol"]) == (looks[jid]["colour"], looks[jid]["symbol"])
        paper = next(t for n, t in traces.items() if n.startswith("paper"))
        assert paper["line"]["color"] == models[DENSENET] and paper["line"]["dash"] in ("dash", "dot")
        assert "marker" not in paper  # the paper's curve: dashed, no markers, unlike every run
    md = api.get("/api/report.md", params={"jobs": ids}).text
    for jid in (a, clone, other):  # the table of runs names each look, in both renderings
        assert f'title="{looks[jid]["colour"]} {looks[jid]["symbol"]}"' in html
        assert f"{looks[jid]['colour']} {looks[jid]['symbol']}" in _pieces(md)
    # The order asked does not change a run's look: the report of the same runs listed otherwise agrees.
    again = api.get("/api/compare/stats", params={"jobs": f"{other},{clone},{a}"}).json()["looks"]
    assert {int(k): v for k, v in again.items()} == looks


def test_a_run_keeps_its_look_whatever_else_is_selected(api):
    """A run's look is its own (its place among all the lab's runs of its model), not its place among the runs a
    view was asked for: job 4 of four runs of one model draws alike in Compare with jobs 1, 2, 4, with all four,
    alone, in both reports of any selection and in the picker's list of runs."""
    ids = [_post(api, f"run {i}", "sel", model=DENSENET, lr=10.0 ** -(i + 2)) for i in range(4)]
    for jid in ids:
        _finish(jid, [0.8, 0.85])
    last = ids[3]

    def stats_look(selection):
        body = api.get("/api/compare/stats", params={"jobs": ",".join(map(str, selection))}).json()
        return body["looks"][str(last)]
    look = stats_look(ids)
    assert stats_look([ids[0], ids[1], last]) == stats_look([last]) == look
    swatch = f'{look["colour"]} {look["symbol"]}'
    for selection in ([last], [ids[0], last], ids):
        jobs = ",".join(map(str, selection))
        html = api.get("/api/report.html", params={"jobs": jobs}).text
        assert f'title="{swatch}"' in html
        md = api.get("/api/report.md", params={"jobs": jobs}).text
        assert swatch in _pieces(md)
    listed = {j["id"]: j["look"] for j in api.get("/api/jobs").json()}
    assert listed[last] == look  # the picker draws every run, compared or not, in this look
    assert len({(v["colour"], v["symbol"]) for v in listed.values()}) == 4  # and tells the four apart


def test_the_palette_tells_runs_of_one_model_apart():
    looks = palette.run_looks([(i, "densenet201") for i in range(1, 6)] + [(9, "vgg19")])
    assert len({(v["colour"], v["symbol"]) for v in looks.values()}) == 6
    assert len({v["colour"] for k, v in looks.items() if k < 9}) == 5  # five shades of one colour
    assert palette.model_colour("some_timm_model") in palette.PALETTE  # outside the catalogue: still a colour
    assert palette.model_colour("some_timm_model") == palette.model_colour("some_timm_model")


class _Elements(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs, self.comments = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs += [k for k, _ in attrs]

    def handle_comment(self, data):
        self.comments.append(data)


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_a_name_in_the_markdown_report_is_text_to_a_renderer_that_passes_html(api, name):
    """markdown-it with html=True passes raw HTML through, as many viewers do: a name in a heading, a list item or
    a table cell brings no element, no attribute and no link of its own; it reads as the name."""
    jid = _post(api, name, "x", model=DENSENET)
    _finish(jid, [0.9])
    md = api.get("/api/report.md", params={"jobs": str(jid)}).text
    rendered = MarkdownIt("commonmark", {"html": True}).enable("table").render(md)
    clean = MarkdownIt("commonmark", {"html": True}).enable("table").render(
        md.replace(md_name(name), "NAME"))
    got, want = _Elements(), _Elements()
    got.feed(rendered)
    want.feed(clean)
    assert sorted(got.tags) == sorted(want.tags), name  # the name added no element (img, script, a, li, h1 ...)
    assert sorted(got.attrs) == sorted(want.attrs) and got.comments == want.comments
    assert 'href="javascript' not in rendered
    assert rendered.count(f"Job #{jid}: ") == 1  # the heading of "Run it again" carries the name as text
    from html import unescape
    text = unescape(re.sub(r"<[^>]+>", "", rendered))
    assert f"Job #{jid}: {name}" in text


def md_name(name: str) -> str:
    from backend.app.document import md_text
    return md_text(name)


def test_the_reports_depth_sweep_rests_on_finished_runs_and_the_live_view_follows_running_ones(api):
    k1 = _post(api, "k1", "sweep", model=DENSENET)
    k0 = _post(api, "k0", "sweep", model=DENSENET, trainable_blocks=0)
    k2 = _post(api, "k2", "sweep", model=DENSENET, trainable_blocks=2)
    for jid, accs in [(k1, [0.9]), (k0, [0.8]), (k2, [0.99])]:
        _finish(jid, accs)
    _set_status(k2, JobStatus.RUNNING)
    md = api.get("/api/report.md", params={"group": "sweep"}).text
    sweep = md.split("## Depth sweep")[1].split("##")[0]
    depth_rows = [line for line in sweep.splitlines() if line.startswith("| densenet201")]
    assert [r.split(" | ")[1] for r in depth_rows] == ["0", "1"] and "99.00%" not in "".join(depth_rows)
    live = api.get("/api/depth", params={"group": "sweep"}).json()["points"]
    assert [p["depth_text"] for p in live] == ["0", "1", "2"]  # the depth view follows the sweep as it runs


def test_both_reports_list_a_shorter_run_among_where_it_leaves_the_preset(api):
    """A 2-epoch run is not the paper's 20-epoch run: the job page's card and the compare view say so, and the
    report's "Where the config leaves the paper's preset" left the epochs out."""
    jid = _post(api, "short", "short", model=DENSENET, epochs=2)
    _finish(jid, [0.5, 0.6])
    md = api.get("/api/report.md", params={"jobs": str(jid)}).text
    html = api.get("/api/report.html", params={"jobs": str(jid)}).text
    assert "| Epochs (the run's length) | 2 | 20 |" in md
    assert "<td>Epochs (the run&#x27;s length)</td><td>2</td><td>20</td>" in html  # html.escape quotes the '
