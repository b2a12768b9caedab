"""BlockLab from notebook cells: `run(...)` trains one job of the engine in the cell and draws it as it goes.

For students in Colab or Kaggle who prefer cells to the web UI (issue 16; notebooks/blocklab.ipynb). The keyword
arguments are the lab's options (core.config, the one schema the API, the CLI and the form derive from), applied
over a preset (the paper's unless told), so `run(model="deit_base_distilled_patch16_224")` is the paper's method
and every other value is a named deviation, listed beside the result.

While it trains the cell shows a progress bar per phase (tqdm.auto: a widget in Jupyter when ipywidgets is there,
text otherwise) and a Plotly chart redrawn after every epoch: this run's validation and training accuracy against
the paper's curve (its figures and the authors' logs, core/paper/curves.csv) and its Table 1 value as a line, and
the losses. At the end a table sets the run against Table 1 and names every way it differs from the paper's method
(the method card's known deviations and the options changed from the preset), on the same screen as the number.

Interrupting the cell (Jupyter's stop button sends SIGINT to the kernel) stops the run within a layer of the model;
the checkpoint of the last finished epoch is kept. Calling `run` again with the same options resumes from it: the
run's folder is named by the options that change a result (epochs aside, so raising `epochs` trains on), and the
engine's checkpoint carries the config it belongs to.
"""
from __future__ import annotations

import hashlib
import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

from core import catalogue
from core.config import OPTIONS_BY_NAME, TrainConfig, method_card, result_options
from core.config import preset as _preset
from core.protocol import RunStatus
from core.settings import get_settings

log = logging.getLogger("blocklab.notebook")


class RunError(RuntimeError):
    """A run that cannot go on for a reason its user can fix (data, weights, storage, device, teacher, a diverged
    loss): the engine's message, which says where it looked and what to do, without the engine's stack."""


# -- the config ---------------------------------------------------------------------------------------------------
def config(preset: str = "paper", **options: Any) -> TrainConfig:
    """The run's config: `preset` (paper or quick), the model's own paper values, then `options`. An unknown or
    invalid option raises ValueError naming it, as the API's 422 does."""
    unknown = sorted(set(options) - set(OPTIONS_BY_NAME))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; the options are: {', '.join(OPTIONS_BY_NAME)}")
    try:
        return _preset(preset, **options)
    except KeyError:
        raise ValueError(f"unknown preset {preset!r}; use 'paper' or 'quick'") from None
    except ValueError as err:  # pydantic's ValidationError is one: say which fields, without its URLs
        errors = getattr(err, "errors", None)
        if errors is None:
            raise
        text = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                         for e in errors(include_url=False))
        raise ValueError(f"invalid option(s): {text}") from None


def run_folder(cfg: TrainConfig, root: Path) -> Path:
    """Where a config's run lives under `root`: named by the model and a digest of the options that change a
    result, except `epochs`, so the same call finds its checkpoint again and a longer one trains on."""
    key = {o.name: getattr(cfg, o.name) for o in result_options() if o.name != "epochs"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:10]
    return root / f"{cfg.model}-{digest}"


# -- what the cell shows --------------------------------------------------------------------------------------------
def _ipython_display():
    """IPython's display function inside a kernel, else None (a plain script prints lines instead)."""
    try:
        from IPython import get_ipython
        from IPython.display import display
    except ImportError:
        return None
    return display if get_ipython() is not None else None


def changed_options(cfg: TrainConfig) -> list[dict]:
    """Options where `cfg` leaves the model's paper preset ({option, label, value, paper}): the method card's, and
    the epochs (the card leaves them out: a run may resume with more)."""
    changed = list(method_card(cfg)["config_deviations"])
    paper_epochs = _preset("paper", model=cfg.model).epochs
    if cfg.epochs != paper_epochs:
        changed.insert(0, {"option": "epochs", "label": OPTIONS_BY_NAME["epochs"].title, "value": cfg.epochs,
                           "paper": paper_epochs})
    return changed


def differences(cfg: TrainConfig) -> list[str]:
    """Every way this run differs from the paper's method, in words: options changed from the paper preset, then
    the known deviations of the preset itself (core.catalogue; none for a model the paper did not run, which has
    no paper number to set beside it)."""
    card = method_card(cfg)
    changed = changed_options(cfg)
    out = [f"{d['label']}: {_spoken(d['option'], d['value'])} (the paper: {_spoken(d['option'], d['paper'])})"
           for d in changed]
    out += [d["what"] for d in card["deviations"]]
    return out


def _spoken(option: str, value: Any) -> str:
    """An option's value as the form says it: an empty value is what it means ("all 10,000")."""
    o = OPTIONS_BY_NAME[option]
    return str(o.none_means or "none") if value is None else str(value)


class Chart:
    """The live figure: accuracy (this run's, the paper's curve and Table 1 value) and loss, per epoch."""

    def __init__(self, cfg: TrainConfig):
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        spec = catalogue.get(cfg.model)
        self.paper = catalogue.paper_row(spec, cfg.dataset) if spec else None
        changed = [d["label"] for d in changed_options(cfg)]
        title = f"{cfg.model}: single-block fine-tuning"
        if self.paper is None:
            title += " (no paper number for this model and dataset)"
        elif changed:
            title += " (differs from the paper's method: " + ", ".join(changed) + ")"
        fig = make_subplots(rows=1, cols=2, subplot_titles=("Validation accuracy", "Loss"))
        fig.add_trace(go.Scatter(name="validation accuracy", mode="lines+markers", x=[], y=[]), 1, 1)
        fig.add_trace(go.Scatter(name="training accuracy", mode="lines+markers", x=[], y=[],
                                 line={"dash": "dot"}), 1, 1)
        fig.add_trace(go.Scatter(name="validation loss", mode="lines+markers", x=[], y=[]), 1, 2)
        fig.add_trace(go.Scatter(name="training loss", mode="lines+markers", x=[], y=[], line={"dash": "dot"}), 1, 2)
        curve = catalogue.paper_curves().get(self.paper["paper_name"], []) if self.paper else []
        if curve:
            fig.add_trace(go.Scatter(name=f"the paper's {self.paper['paper_name']} (its figure/logs)",
                                     mode="lines", x=[p["epoch"] for p in curve], y=[p["val_acc"] for p in curve],
                                     line={"dash": "dash", "color": "gray"}), 1, 1)
        if self.paper:
            fig.add_hline(y=self.paper["val_acc"], line={"dash": "dot", "color": "black"}, row=1, col=1,
                          annotation_text=f"Table 1: {self.paper['val_acc']:.4f}")
        fig.update_layout(title=title, height=420, legend={"orientation": "h", "y": -0.2})
        fig.update_xaxes(title_text="epoch")
        self.fig = fig

    def update(self, rows: list[dict]) -> None:
        epochs = [r["epoch"] for r in rows]
        for trace, key in zip(self.fig.data[:4], ("val_acc", "train_acc", "val_loss", "train_loss")):
            trace.x, trace.y = epochs, [r.get(key) for r in rows]


class Result:
    """What `run` returns: the engine's summary, the per-epoch rows, the run folder, and the comparison with
    Table 1 (shown as a table when it is a cell's last value)."""

    def __init__(self, cfg: TrainConfig, summary: dict, rows: list[dict], out: Path):
        self.config, self.summary, self.rows, self.out = cfg, summary, rows, out
        self.status = summary["status"]

    def table(self) -> list[tuple[str, str]]:
        """(what, value) rows: this run against Table 1, then every difference from the paper's method."""
        s, cfg = self.summary, self.config
        best, paper = s.get("best_val_acc"), s.get("paper_val_acc")
        rows = [("Model", f"{cfg.model}" + (f" (the paper's {s['paper_name']})" if s.get("paper_name") else "")),
                ("Status", f"{self.status}: {s.get('epochs_run')} of {cfg.epochs} epochs"),
                ("Best validation accuracy", "-" if best is None else f"{best:.4f} (epoch {s.get('best_epoch')})"),
                ("Table 1", "no number for this model and dataset" if paper is None else f"{paper:.4f}")]
        if best is not None and paper is not None:
            rows.append(("Difference", f"{(best - paper) * 100:+.2f} points"))
        if s.get("trainable_params"):
            rows.append(("Trainable parameters", f"{s['trainable_params']:,}" + (
                f" (Table 1: {s['paper_trainable_params']:,})" if s.get("paper_trainable_params") else "")))
        rows.append(("Ran on", f"{s.get('device') or '-'}, {s.get('precision') or '-'}, "
                               f"{s.get('seconds') or 0:.0f} s"))
        diffs = differences(cfg) if catalogue.get(cfg.model) else []
        rows.append(("Differences from the paper's method", "; ".join(diffs) if diffs else "none"))
        if self.status == RunStatus.STOPPED:
            rows.append(("Resume", "call run(...) again with the same options: it resumes from the last finished "
                                   "epoch"))
        rows.append(("Folder", str(self.out)))
        return rows

    def _repr_html_(self) -> str:
        from html import escape
        body = "".join(f"<tr><th style='text-align:left'>{escape(k)}</th><td style='text-align:left'>{escape(v)}"
                       "</td></tr>" for k, v in self.table())
        return f"<table>{body}</table>"

    def __repr__(self) -> str:
        return "\n".join(f"{k}: {v}" for k, v in self.table())


# -- the run ----------------------------------------------------------------------------------------------------------
def keyword_terms():
    """The notebook's terms for a fix (core/errors.py): a keyword argument of `run`
    (`run(..., weights='none')`), a folder by its keyword (`weights_dir=`). Made on first use: the engine's Terms
    come with the engine, which imports torch."""
    from worker.engine import Terms

    class Keywords(Terms):
        FOLDERS = {"weights_dir": "weights_dir=", "data_dir": "data_dir=", "out": "out=", "cache_dir": "cache_dir="}

        def option(self, name, value):
            return f"call run(..., {name}={value!r})"

        def folder(self, name, path):
            kw = self.FOLDERS.get(name, name)
            return f"{path} (run(..., {kw}...))" if path is not None else f"another folder (run(..., {kw}...))"
    return Keywords()


def _interrupts(stop: threading.Event, say):
    """While the run lasts, SIGINT (the notebook's stop button, Ctrl-C) asks the engine to stop; a second one
    aborts at once. Only the main thread may set handlers: elsewhere the caller's stop event is the way."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def handler(signum, frame):
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        say("stopping: the last finished epoch is kept; run the cell again to resume (interrupt again to abort)")
    return signal.signal(signal.SIGINT, handler)


def run(model: str | None = None, *, preset: str = "paper", out: str | Path | None = None,
        data_dir: str | Path | None = None, weights_dir: str | Path | None = None,
        cache_dir: str | Path | None = None, teacher_dir: str | Path | None = None, download: bool | None = None,
        show: bool = True, stop: threading.Event | None = None, gallery: str | Path | None = None,
        **options: Any) -> Result:
    """Train one run of the engine in this process and show it live; returns its Result.

    model and **options: the lab's options (see `options()`), over `preset`. Folders default to the lab's settings
    (BLOCKLAB_HOME: <home>/data, /weights, /cache/features; runs under <home>/notebook), so the notebook's lab and
    this function share data, weights and feature caches. `download`: may the engine fetch CIFAR (md5-checked);
    default the lab's setting. `stop`: an Event another thread may set (the cell's interrupt does it here).
    `gallery`: a file to write the best epoch's misclassified validation images to, one self-contained HTML page.
    """
    from worker.engine import USER_ERRORS, Callbacks, SetupError, assemble, lab_paths, user_error_text
    from worker.finetune import Bars

    if model and options.get("model", model) != model:
        raise ValueError(f"two models given: {model!r} and model={options['model']!r}")
    cfg = config(preset, **{**options, **({"model": model} if model else {})})
    s = get_settings()
    folder = Path(out) if out else run_folder(cfg, s.home / "notebook")
    display = _ipython_display() if show else None
    bars = Bars(auto=True) if show else None
    say = bars.write if bars else (lambda text: None)

    paths = lab_paths(s, folder, data_dir=data_dir, weights_dir=weights_dir, cache_dir=cache_dir,
                      allow_download=download, teacher_dir=teacher_dir)
    try:
        assembled = assemble(cfg, paths)
    except SetupError as err:  # the fix in keyword arguments, without the engine's stack
        raise RunError(err.phrase(keyword_terms())) from None
    prior = assembled.prior
    rows = list(prior.history) if prior else []
    chart = handle = None
    if display is not None:
        chart = Chart(cfg)
        chart.update(rows)
        handle = display(chart.fig, display_id=True)
    if prior and prior.complete:
        say(f"{folder} already holds this run, complete ({prior.epoch} of {cfg.epochs} epochs): nothing to train")
        result = Result(cfg, assembled.complete_summary(), rows, folder)
        if display is not None:
            display(result)
        _gallery(folder, Path(data_dir) if data_dir else s.data_path, gallery, say)
        return result
    say(f"resuming from epoch {prior.epoch + 1} ({prior.epoch} of {cfg.epochs} done) in {folder}" if prior
        else f"training {cfg.model} for {cfg.epochs} epochs into {folder}")

    def on_epoch(row: dict) -> None:
        rows.append(row)
        if bars:
            bars.on_epoch(row)
        if handle is not None:
            chart.update(rows)
            handle.update(chart.fig)

    stop = stop or threading.Event()
    if bars:
        bars.epochs = cfg.epochs
    previous = _interrupts(stop, say)
    try:
        summary = assembled.run(Callbacks(on_epoch=on_epoch, stop=stop,
                                          on_progress=bars.on_progress if bars else None))
    except USER_ERRORS as err:  # in the keyword arguments' words
        raise RunError(user_error_text(err, keyword_terms())) from None
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
        if bars:
            bars.close()
    result = Result(cfg, summary, rows, folder)
    if display is not None:
        display(result)
    elif show:
        print(repr(result))
    _gallery(folder, paths.data_dir, gallery, print if show else (lambda text: None))
    return result


def _gallery(folder: Path, data_dir: Path, gallery: str | Path | None, say) -> None:
    if gallery:
        from core import mistakes
        try:
            say(f"gallery of mistakes: {mistakes.write_gallery(folder, data_dir, Path(gallery))}")
        except mistakes.NoPredictions as e:
            say(f"no gallery: {e}")


def options() -> list[dict]:
    """The options `run` takes, as the API lists them: name, default, help."""
    return [{"name": o.name, "default": o.default, "help": o.help} for o in OPTIONS_BY_NAME.values()]
