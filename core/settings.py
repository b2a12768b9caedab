"""All configuration in one place, by environment variable (pydantic-settings). Part of the torch-free core: read
by the backend, the worker's Celery layer and `make run`."""
from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import AliasChoices, Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="BLOCKLAB_", extra="ignore")

    home: Path = Path("./var")  # the one user-writable folder for state
    data_dir: Path | None = None  # CIFAR-10/100 (their official folders or archives); default <home>/data
    weights_dir: Path | None = None  # local weight files (<model>.safetensors|.pth) and the hub cache
    runs_dir: Path | None = None  # one folder per job: checkpoint, metrics.jsonl, summary.json
    cache_dir: Path | None = None  # frozen-feature caches kept across jobs; default <home>/cache/features
    # Size cap of cache_dir in GiB (least recently used evicted). The paper preset's largest caches: ResNet-152
    # 41.1, DeiT-B distilled (the default model) 31.2, VGG-19 20.6; 64 keeps any one of them with room for more.
    cache_cap_gb: float = 64.0
    database_url: str | None = None  # default sqlite:///<home>/blocklab.db
    # The broker and result backend when set (redis://host:6379/0); unset: SQLite files under <home>, one machine
    redis_url: str | None = Field(None, validation_alias=AliasChoices("REDIS_URL", "BLOCKLAB_REDIS_URL"))
    host: str = "127.0.0.1"  # loopback unless told otherwise
    # Host headers the lab answers (DNS rebinding defence); loopback names always, add a LAN name here.
    # "*.example.org" answers every name under example.org: a notebook platform's port proxy (Colab's
    # *.prod.colab.dev) gives each session a name of its own. backend/notebook_lab.py sets it there.
    allowed_hosts: list[str] = Field(default_factory=list)
    # Origins besides the lab's own whose pages may change its state ("https://*.example.org" for every name under
    # it): a port proxy that serves the lab over https while it listens on plain http, whatever Host it forwards.
    trusted_origins: list[str] = Field(default_factory=list)
    # Pages besides the lab's own that may show it in a frame (CSP frame-ancestors sources): a notebook's output.
    frame_ancestors: list[str] = Field(default_factory=list)
    port: int = 8000  # the backend's port
    device: str = "auto"  # for workers: auto | cpu | cuda[:N]
    token: str | None = None  # when set, every state-changing request needs it
    allow_download: bool = True  # workers may fetch CIFAR-10/100 when the data dir has none
    heartbeat_interval_s: float = 2.0  # worker -> backend liveness signal while a job runs
    heartbeat_timeout_s: float = 60.0  # a running job silent this long has lost its worker
    max_attempts: int = 5  # worker losses tolerated per job before it fails
    # The backend compares its queued jobs with the tasks the broker holds this often (and after a reconnect); a
    # job missing from two looks in a row (Redis restarted without its data) is sent again in its place.
    reconcile_s: float = 5.0
    # Jobs waiting for a worker at once; creating or reproducing beyond it is refused (429). Table 1 is 10 jobs.
    max_queued_jobs: int = 100
    control_poll_s: float = 0.2  # a worker's watchdog asks its job's control queue for a cancel this often
    # A cancel the engine has not honoured this long after the worker heard it ends the worker process (a force
    # stop: the job is reported cancelled, the supervisor starts a fresh worker). The engine honours one within a
    # layer of the model; only a hung step (a stalled download, a wedged device) ever needs this.
    cancel_grace_s: float = 10.0
    visibility_timeout_s: int = 7 * 24 * 3600  # longer than any job: Redis never redelivers a live job
    max_body_bytes: int = 64 * 1024  # request bodies beyond this are refused (413)
    # A request body not complete this long after its request began is refused (408): a deadline for the whole
    # body, so one trickled a byte at a time cannot hold a connection open.
    body_timeout_s: float = 30.0
    header_timeout_s: float = 10.0  # a connection whose request headers do not arrive by then is closed
    max_connections: int = 200  # open at once (503 beyond); event streams hold one each, so above max_streams
    max_streams: int = 100  # event streams open at once (429 beyond) ...
    max_streams_per_client: int = 10  # ... and per client address (the peer's, or a trusted proxy's word for it)
    # Proxies whose X-Forwarded-For/-Proto are believed (addresses or networks, "*" for any): none by default, so
    # a client cannot claim another address. Set it when a proxy with TLS serves the lab.
    trusted_proxies: list[str] = Field(default_factory=list)
    stream_keepalive_s: float = 15.0  # an idle event stream sends a comment this often
    stream_max_s: float = 1800.0  # an event stream ends after this long; EventSource reconnects by itself
    worker_report_s: float = 30.0  # a worker reports itself (device, throughput, weights, data) this often
    plan_long_s: float = 600.0  # a plan calls a run long (and the UI asks first) beyond this estimate

    def _under_home(self, value: Path | None, *parts: str) -> Path:
        return Path(value) if value is not None else self.home.joinpath(*parts)

    @property
    def data_path(self) -> Path:
        return self._under_home(self.data_dir, "data")

    @property
    def weights_path(self) -> Path:
        return self._under_home(self.weights_dir, "weights")

    @property
    def runs_path(self) -> Path:
        return self._under_home(self.runs_dir, "runs")

    @property
    def cache_path(self) -> Path:
        return self._under_home(self.cache_dir, "cache", "features")

    @property
    def database(self) -> str:
        return self.database_url or f"sqlite:///{(self.home / 'blocklab.db').resolve()}"

    @property
    def broker_url(self) -> str:
        """Redis when REDIS_URL is set; else the embedded SQLite transport (one machine, no Redis)."""
        return self.redis_url or f"sqla+sqlite:///{(self.home / 'broker.sqlite').resolve()}"

    @property
    def result_backend(self) -> str:
        return self.redis_url or f"db+sqlite:///{(self.home / 'results.sqlite').resolve()}"


def home_id(home: Path) -> str:
    """A lab's home as its health check names it: a digest of the resolved path (no path on the open endpoint),
    by which the notebook tells its own lab from anything else answering on a port."""
    import hashlib
    return hashlib.sha256(str(Path(home).resolve()).encode()).hexdigest()[:16]


@lru_cache
def get_settings() -> Settings:
    return Settings()
