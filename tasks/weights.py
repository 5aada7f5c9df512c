"""A pretrained tag's weights and build options, for `models.create_clip`.

open_clip fetches a tag's weights when a model is built: where the hub cannot be reached, each shard spent ~46 s in
the hub client's retries (a safetensors file, then the .bin) before it failed, and the run ended with "shard(s)
failed". The weights are now found in the local cache (no network) or downloaded once, else the build stops with
the reason and the fix; planning builds the model, so that happens before any shard.
"""
from __future__ import annotations

import logging
import os
import socket
from urllib.parse import urlparse

import open_clip
from open_clip import pretrained as oc_pretrained

log = logging.getLogger(__name__)
HF_BIN, HF_SAFE = "open_clip_pytorch_model.bin", "open_clip_model.safetensors"  # open_clip's default hub files
URL_CACHE = os.path.expanduser("~/.cache/clip")  # where open_clip keeps weights fetched by URL


def hub_files(cfg: dict) -> tuple[str, list[str]] | None:
    """(repo id, file names in the order open_clip tries them: a .safetensors alternative first) of a tag's hub
    weights; None where open_clip fetches the tag's URL instead (no hub entry, or no hub client)."""
    hub = cfg.get("hf_hub", "")
    if not hub or not oc_pretrained.has_hf_hub():
        return None
    repo, name = os.path.split(hub)  # 'org/model/' names the default file
    name = name or HF_BIN
    if name == HF_BIN:
        return repo, [HF_SAFE, name]
    return repo, ([name[:-4] + ".safetensors"] if name.endswith((".bin", ".pth")) else []) + [name]


def cached_weights(cfg: dict, cache_dir: str | None = None) -> str | None:
    """The local file open_clip would load for this pretrained config without asking the network, or None."""
    if "file" in cfg:
        return cfg["file"] if os.path.isfile(cfg["file"]) else None
    hub = hub_files(cfg)
    if hub is not None:
        from huggingface_hub import try_to_load_from_cache
        for name in hub[1]:
            found = try_to_load_from_cache(hub[0], name, cache_dir=cache_dir)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    url = cfg.get("url", "")
    path = os.path.join(cache_dir or URL_CACHE, os.path.basename(urlparse(url).path)) if url else ""
    return path if path and os.path.isfile(path) else None


def reachable(host: str) -> str | None:
    """None when `host` answers on 443 within 3 s, else why not (also when HF_HUB_OFFLINE is set): the hub
    client would otherwise retry for ~50 s, with a log line per retry, before failing the same way."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        with socket.create_connection((host, 443), timeout=3):
            return None
    except OSError as e:
        return f"{host} is unreachable: {e}"


def hub_host(url: str | None = None) -> str:
    """The host a download asks: the hub's (HF_ENDPOINT or huggingface.co), or a URL's."""
    return urlparse(url or os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"


def ensure_weights(name: str, tag: str, cfg: dict, cache_dir: str | None = None) -> str:
    """The local path of open_clip tag `tag`'s weights (`cfg`, its pretrained config) for model `name`: cached, or
    downloaded now. ValueError naming the tag and the fix when neither works (open_clip's own error says only
    that a download failed)."""
    found = cached_weights(cfg, cache_dir)
    if found:
        return found
    where = f"hub repo {hub[0]}" if (hub := hub_files(cfg)) else f"URL {cfg.get('url')}"
    why = reachable(hub_host(None if hub else cfg.get("url")))
    if why:
        raise ValueError(f"the weights of {name!r} with pretrained={tag!r} are not in the local cache, and they "
                         f"cannot be downloaded from the {where} ({why}): pass a local checkpoint file "
                         f"(--pretrained /path/to/open_clip_pytorch_model.bin), or download them once where the hub "
                         f"is reachable and copy the cache (HF_HOME) here")
    log.info("weights of %s / %s are not cached: downloading them from the %s", name, tag, where)
    try:
        path = oc_pretrained.download_pretrained(cfg, cache_dir=cache_dir)
    except (OSError, RuntimeError, ValueError) as e:  # the hub client's and urllib's errors derive from these
        raise ValueError(
            f"the weights of {name!r} with pretrained={tag!r} are not in the local cache and could not be "
            f"downloaded from the {where} ({type(e).__name__}: {e}); pass a local checkpoint file "
            f"(--pretrained /path/to/weights.bin), or run once where the hub is reachable to fill the cache") from e
    if not path or not os.path.isfile(path):
        raise ValueError(f"the weights of {name!r} with pretrained={tag!r} were not found after downloading "
                         f"(got {path!r}); pass a local checkpoint file (--pretrained /path/to/weights.bin)")
    return path


def tag_options(name: str, tag: str) -> tuple[str, dict]:
    """(what to pass open_clip as `pretrained`, extra options) so that a tag builds the model it was trained as.

    - QuickGELU where the tag was trained with it and the model config does not say so: open_clip 3.3 builds
      `ViT-B-16` with 'openai' weights with the standard GELU and only warns (its `-quickgelu` names exist for
      this), which shifts every probability of OpenAI's CLIPs.
    - The weights are passed as their local file (`ensure_weights`: cached, else downloaded once here, else a
      ValueError with the fix), with the tag's preprocessing: given the tag, open_clip asks the hub first, and
      offline its client retries ~23 s for each file name it tries before it reads the cache."""
    cfg = open_clip.get_pretrained_cfg(name, tag)
    if not cfg:
        return tag, {}
    opts = {}
    if cfg.get("quick_gelu") and not (open_clip.get_model_config(name) or {}).get("quick_gelu"):
        log.info("%s / %s: QuickGELU, as the tag was trained (open_clip's %s-quickgelu)", name, tag, name)
        opts["force_quick_gelu"] = True
    return ensure_weights(name, tag, cfg), opts | {"image_mean": cfg.get("mean"), "image_std": cfg.get("std"),
                          "image_interpolation": cfg.get("interpolation"), "image_resize_mode": cfg.get("resize_mode")}
