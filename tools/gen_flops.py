"""Writes core/flops.json: GFLOPs per image of every catalogue model's frozen part and of its trainable block and
head, at the sizes plans use (224, the paper's; 112, the dry run's), forward only; and how many values per image
the frozen-feature cache holds (`cached_elements`, the block input's size: core/memory.py sizes caches with it).

    .venv/bin/python -m tools.gen_flops          # rewrite the file (about a minute on a CPU)

Why a file: the backend plans runs without torch (core/estimate.py reads this file), so the work of each model is
measured once here, on the real timm architecture as the engine builds it (worker.engine.train.build_model, on
the meta device: no weights, no memory), by torch.utils.flop_counter.FlopCounterMode. FlopCounterMode counts
matmuls and convolutions (2 FLOPs per multiply-add), not elementwise work; that is the bulk of these models.
tests/core/test_estimate.py checks the file covers the catalogue and recomputes one entry.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from unittest import mock

SIZES = (224, 112)
OUT = Path(__file__).resolve().parents[1] / "core" / "flops.json"


def measure(model_id: str, image_size: int) -> dict:
    """Forward GFLOPs per image: the frozen part (once per image and flip state with the cache) and the part that
    trains (every epoch; its backward costs about twice its forward)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from core.config import preset
    from worker.engine import DevicePolicy, build_model

    cfg = preset("paper", model=model_id, weights="none", image_size=image_size)
    # The frozen part runs under inference_mode, which older PyTorch (2.5) hides from dispatch modes such as
    # FlopCounterMode (it counted 0): counted under no_grad instead, the same forward and the same FLOPs.
    with torch.device("meta"), mock.patch.object(torch, "inference_mode", torch.no_grad):
        m, _prep = build_model(cfg, DevicePolicy(torch.device("meta")))
        x = torch.empty(1, 3, image_size, image_size)
        with FlopCounterMode(display=False) as whole:
            m.forward_from_features(m.frozen_features(x))
        if not m.cacheable:  # no cache point: report the whole forward as frozen and none as the block
            return {"frozen": round(whole.get_total_flops() / 1e9, 6), "block": 0.0, "cacheable": False}
        with FlopCounterMode(display=False) as frozen:
            feats = m.frozen_features(x)
        with FlopCounterMode(display=False) as block:
            m.forward_from_features(feats)
    return {"frozen": round(frozen.get_total_flops() / 1e9, 6), "block": round(block.get_total_flops() / 1e9, 6),
            "cacheable": True, "cached_elements": sum(f[0].numel() for f in feats)}


def main() -> int:
    import timm
    import torch

    from core import catalogue
    out = {"about": "forward GFLOPs per image (FlopCounterMode, 2 per multiply-add) by image size; written by "
                    "tools/gen_flops.py", "torch": torch.__version__, "timm": timm.__version__, "models": {}}
    for mid in catalogue.CATALOGUE:
        out["models"][mid] = {str(s): measure(mid, s) for s in SIZES}
        print(mid, out["models"][mid], file=sys.stderr)
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
