"""The worker's self-report, the preflight a plan rests on: what this worker can run and how fast.

At start (Celery's worker_ready), every `worker_report_s` and after each job, the worker sends a `worker` event on
the events queue (job id 0: it speaks for no job) with

- its name and device, and its throughput in effective GFLOP/s: measured once at start by timing a real
  transformer block's forward and backward on its own device for about a second (and, where the device runs bf16
  natively, bf16's speed-up per model family, `bf16_speedup`; None elsewhere), then refined by every finished job (per
  model, image size and the precision it computed in: the job's work over its measured time,
  core.estimate.run_gflops, keyed by core.estimate.measured_key);
- for every catalogue model whether its pretrained weights are here: in the hub cache the engine loads from
  (`<weights_dir>/hub`, Hugging Face's layout, the catalogue's pinned tag) and as a local file
  (`<weights_dir>/<model>.safetensors|.pth`, what weights=local loads), with their size;
- the limits a frozen-feature cache meets here (host memory, GPU memory, free disk at the cache folder), read as
  the engine reads them (worker.engine.limits.machine_limits): the plan places each run's features with them;
  and how fast a finished job read its features back from a memory-mapped cache file on this disk (bytes/s,
  measured by the engine; None until a job has), which replaces the plan's assumed disk rate;
- whether CIFAR-10 is in the data dir (what worker.engine.data.locate accepts), whether the worker may download it
  (settings.allow_download) and whether the hub and the dataset's host are reachable at all.

The backend keeps the latest report per worker (backend/app/workers.py) and answers POST /api/plan from it.
"""
from __future__ import annotations

import logging
import os
import socket
import threading
import time
from pathlib import Path

from celery import signals

from core import catalogue
from core.broker import EventPublisher, transport_options
from core.settings import Settings, get_settings

log = logging.getLogger("blocklab.worker.report")

HUB_HOST = ("huggingface.co", 443)
DATA_HOST = ("www.cs.toronto.edu", 443)


# -- what is here ---------------------------------------------------------------------------------------------
def weights_present(weights_dir: Path) -> dict[str, dict]:
    """Per catalogue model: its hub weights (the pinned tag) in `<weights_dir>/hub`, and a local file for
    weights=local, each with its size in MB (None when absent); and any other timm model with a local file here
    (weights=local works for any timm model, and the plan must see that file)."""
    # The engine's own lookups: what a run would load.
    from worker.engine import cached_hub_file, local_file
    out = {}
    # Every catalogue model, and any timm model with a local file here (weights=local works for any of them).
    local = {p.stem for p in Path(weights_dir).glob("*") if p.suffix in (".safetensors", ".pth")} \
        if Path(weights_dir).is_dir() else set()
    for model in [*catalogue.CATALOGUE, *sorted(m for m in local - set(catalogue.CATALOGUE)
                                                if catalogue.is_model(m))]:
        entry = {"hub": False, "hub_mb": None, "local": None, "local_mb": None}
        f = cached_hub_file(model, weights_dir) if model in catalogue.CATALOGUE else None
        if f is not None:
            entry.update(hub=True, hub_mb=round(f.stat().st_size / 2**20, 1))
        p = local_file(weights_dir, model)
        if p is not None:
            entry.update(local=str(p), local_mb=round(p.stat().st_size / 2**20, 1))
        out[model] = entry
    return out


def data_present(data_dir: Path, dataset: str = "cifar10") -> bool:
    """What worker.engine.data.locate accepts without downloading: the dataset's folder or its official archive."""
    from worker.engine import data
    return data.present(data_dir, dataset)


def limits(device: str, cache_dir: Path) -> dict:
    """What this worker offers a frozen-feature cache (core.memory.Limits' fields, in bytes), read as the engine
    reads them when it places a run's features: host memory (cgroup-aware), the GPU's free memory, free disk at
    the cache folder. The plan decides each run's placement from it."""
    import dataclasses

    import torch

    from worker.engine import DevicePolicy, machine_limits
    policy = DevicePolicy.for_device(torch.device(device))
    out = dataclasses.asdict(machine_limits(policy, cache_dir))
    out["device_total"] = torch.cuda.mem_get_info(policy.device)[1] if policy.device.type == "cuda" else None
    return out


def reachable(host: tuple[str, int], timeout: float = 2.0) -> bool:
    """Can this machine open a connection to `host` at all (an offline lab cannot, and downloads would fail)."""
    try:
        with socket.create_connection(host, timeout=timeout):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set: the hub library refuses every download whatever the network says (the engine's test)."""
    from worker.engine import hub_offline as offline
    return offline()


# -- how fast ---------------------------------------------------------------------------------------------------
def _block(family: str, device, batch: int):
    """A block of the family a run's trainable part and most of its frozen part are made of, and its input: a ViT-S
    block (384 wide, 197 tokens) for transformers, a ResNet bottleneck (256 channels at 28x28) for CNNs."""
    import torch
    if family == "cnn":
        from timm.models.resnet import Bottleneck
        return (Bottleneck(256, 64).to(device), torch.randn(batch, 256, 28, 28, device=device, requires_grad=True),
                f"timm ResNet bottleneck (256 channels, 28x28), batch {batch}")
    from timm.models.vision_transformer import Block
    return (Block(384, 6).to(device), torch.randn(batch, 197, 384, device=device, requires_grad=True),
            f"timm ViT-S block (384 wide, 6 heads, 197 tokens), batch {batch}")


def _timer(device_name: str, family: str):
    """A timer of a block of the family (_block) forward and backward on this device: `run(precision, seconds)`
    gives its effective GFLOP/s over about `seconds` after a warm-up step, its FLOPs counted once by
    FlopCounterMode; in fp32 (TF32 allowed, as the paper preset runs it) or under bf16 autocast, as the engine runs
    that option. Its result names the block it timed."""
    import contextlib

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from worker.engine import fp32_math

    device = torch.device(device_name)
    block, x, what = _block(family, device, 8 if device.type == "cpu" else 128)
    with FlopCounterMode(display=False) as fc:
        block(x).sum().backward()  # forward and backward, counted
    flops = fc.get_total_flops()

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    def run(precision: str, seconds: float) -> dict:
        autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if precision == "bf16"
                    else contextlib.nullcontext())
        with fp32_math(allow_tf32=True):  # fp32 as the paper preset computes it (TF32 where a GPU has it)
            return timed(autocast, precision, seconds)

    def timed(autocast, precision: str, seconds: float) -> dict:

        def step():
            with autocast:
                y = block(x).sum()
            y.backward()
        for _ in range(2):
            step()
        sync()
        n, t0 = 0, time.perf_counter()
        while True:
            step()
            n += 1
            if n % 4 == 0:
                sync()
                if time.perf_counter() - t0 >= seconds:
                    break
        elapsed = time.perf_counter() - t0
        return {"gflops": round(flops * n / elapsed / 1e9, 2), "seconds": round(elapsed, 3), "steps": n,
                "what": f"{what}, {precision} forward+backward"}
    return run


def calibrate(device_name: str = "cpu", seconds: float = 1.0, precision: str = "fp32",
              family: str = "transformer") -> dict:
    """Effective GFLOP/s of this device on the work a run does: a block of the family forward and backward for
    about `seconds` (_timer)."""
    return _timer(device_name, family)(precision, seconds)


def bf16_speedup(device_name: str, family: str, seconds: float = 1.0, rounds: int = 3) -> float:
    """bf16's speed-up over fp32 on a block of the family: the two timed in turn, `rounds` times each over
    `seconds` in all, so that what else the machine does in that second weighs on both alike."""
    run = _timer(device_name, family)
    fp32 = bf16 = 0.0
    for _ in range(rounds):
        fp32 += run("fp32", seconds / (2 * rounds))["gflops"]
        bf16 += run("bf16", seconds / (2 * rounds))["gflops"]
    return round(bf16 / fp32, 2)


def bf16_native(device_name: str) -> bool:
    """Whether this device runs bf16 matrix work natively (the engine's test, which precision=auto follows)."""
    import torch

    from worker.engine import bf16_supported
    return bf16_supported(torch.device(device_name))


FAMILIES = ("transformer", "cnn")  # core.catalogue ModelSpec.family


def calibrate_all(device_name: str, seconds: float = 1.0) -> dict:
    """The start-up calibration: fp32 GFLOP/s on a transformer block (what every plan times fp32 runs with), and,
    where the device runs bf16 natively (`bf16_native`, what precision=auto follows), bf16's speed-up per model
    family (bf16_speedup, `seconds` / 2 each; the plan scales a bf16 run's time by its model's: core.estimate.rate). A
    family whose bf16 measurement fails is left out (None when none is left), never the whole report."""
    fp32 = calibrate(device_name, seconds)
    native = bf16_native(device_name)
    speedup = {}
    for family in FAMILIES if native else ():
        try:
            speedup[family] = bf16_speedup(device_name, family, seconds / 2)
        except Exception:  # noqa: BLE001 - advice only: without it the plan shows no bf16 time for the family
            log.exception("the bf16 calibration of a %s block failed", family)
    return {**fp32, "bf16_native": native, "bf16_speedup": speedup or None}


def describe_device(setting: str) -> tuple[str, str]:
    """(torch device, the string jobs report: "cuda:0 (NVIDIA H200)" or "cpu (cpu)")."""
    import torch

    from worker.engine import resolve_device
    d = resolve_device(setting)
    name = torch.cuda.get_device_name(d) if d.type == "cuda" else "cpu"
    return str(d), f"{d} ({name})"


# -- the reporter -------------------------------------------------------------------------------------------------
class Reporter:
    """Builds and sends this worker's reports; one per worker process."""

    def __init__(self, settings: Settings, name: str):
        self.settings, self.name = settings, name
        self.calibration: dict | None = None
        self.measured: dict[str, float] = {}  # measured_key -> effective training GFLOP/s of a finished job
        self.disk_read_bytes_per_s: float | None = None  # a finished job's reads of its memory-mapped feature cache
        self.device, self.device_text = describe_device(settings.device)
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        settings.home.mkdir(parents=True, exist_ok=True)  # the SQLite broker's file lives there
        self.events = EventPublisher(settings.broker_url, 0, 0,
                                     transport_options(settings.broker_url, settings.visibility_timeout_s))

    def report(self) -> dict:
        s = self.settings
        offline = hub_offline()
        hub_ok = False if offline else reachable(HUB_HOST)
        data_ok = reachable(DATA_HOST) if s.allow_download else False
        cal = self.calibration or {}
        return {"name": self.name, "pid": os.getpid(), "host": socket.gethostname(), "device": self.device_text,
                "gflops": cal.get("gflops"), "bf16_native": bool(cal.get("bf16_native")),
                "bf16_speedup": cal.get("bf16_speedup"), "calibration": cal,
                "measured": dict(self.measured),
                "weights_dir": str(s.weights_path), "weights": weights_present(s.weights_path),
                "hub_offline": offline, "hub_reachable": hub_ok,
                "data_dir": str(s.data_path), "data_present": data_present(s.data_path),
                "datasets_present": {d: data_present(s.data_path, d) for d in catalogue.DATASETS},
                "allow_download": s.allow_download, "data_host_reachable": data_ok,
                "limits": self._limits(), "disk_read_bytes_per_s": self.disk_read_bytes_per_s,
                "interval_s": s.worker_report_s}

    def _limits(self) -> dict | None:
        try:
            return limits(self.device, self.settings.cache_path)
        except Exception:  # noqa: BLE001 - advice only: a plan without limits says the placement is unknown
            log.exception("reading this worker's memory limits failed")
            return None

    def send(self) -> None:
        with self.lock:
            try:
                self.events.send("worker", worker=self.report())
            except Exception:  # noqa: BLE001 - a report is advice: never let it take the worker down
                log.exception("worker report failed")

    def job_finished(self, job_id: int, config: dict) -> None:
        """Refine the throughput for the job's model and size from what the job really took (its work over its
        epochs' time: core.estimate.run_gflops), then report at once (it may have downloaded weights or data).
        A job that reused a finished feature cache did not compute its frozen part: it teaches nothing here."""
        import json

        from core import estimate
        folder = self.settings.runs_path / f"job-{job_id}"
        try:
            summary = json.loads((folder / "summary.json").read_text())
            rows = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
            cache = summary.get("feature_cache") or {}
            if cache.get("disk_read_bytes_per_s"):  # measured on this machine's disk: the plan's next estimate
                self.disk_read_bytes_per_s = float(cache["disk_read_bytes_per_s"])
            model, cfg = summary["model"], summary["config"]
            secs = sum(r["seconds"] for r in rows)
            if rows and secs > 0 and not cache.get("reused") and catalogue.get(model):
                n_train = round(rows[0]["images_per_s"] * rows[0]["train_seconds"])
                n_val = int(sum(map(sum, rows[0]["confusion"])))
                g = estimate.run_gflops(cfg, n_train, n_val, len(rows), secs)
                key = estimate.measured_key(model, cfg.get("image_size"), summary.get("precision") or "fp32")
                self.measured[key] = round(g, 2)
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            pass  # a job that failed early has no summary or rows: nothing to learn from it
        # From a thread: the reachability probes must not hold up the next job.
        threading.Thread(target=self.send, daemon=True, name="worker-report-after-job").start()

    def loop(self) -> None:
        while not self.stopped.wait(self.settings.worker_report_s):
            self.send()


_reporter: Reporter | None = None


@signals.worker_ready.connect
def _on_ready(sender=None, **_):
    """Calibrate before the first job runs (the solo pool takes none until this returns: a clean measurement),
    report, then keep reporting from a daemon thread."""
    global _reporter
    s = get_settings()
    name = getattr(sender, "hostname", None) or socket.gethostname()
    try:
        r = Reporter(s, name)
        r.calibration = calibrate_all(r.device)
        log.info("calibration on %s: %s GFLOP/s", r.device_text, r.calibration["gflops"])
    except Exception:  # noqa: BLE001 - without a report plans say "no worker has reported"; jobs still run
        log.exception("worker self-report unavailable")
        return
    _reporter = r
    r.send()
    threading.Thread(target=r.loop, daemon=True, name="worker-report").start()


@signals.task_postrun.connect
def _on_job_done(sender=None, args=None, **_):
    if _reporter is not None and args:
        _reporter.job_finished(int(args[0]), args[2] if len(args) > 2 else {})
