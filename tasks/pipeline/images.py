"""A shard's images, decoded once and shared by every stage of its chain (a byte-bounded cache of decoded images
and preprocessed pixels); JPEGs decode on the device when one is used. An image a stage cannot use becomes a
`failures` row naming that stage, never a silent loss."""
from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Collection
from typing import Any

import numpy as np
import torch
from PIL import Image

from mapcap.tasks.data import FULL_SIZE, Item, file_id, full_size, image_id_of, load_image
from mapcap.tasks.decode import Geometry, Keep, decode_files, decode_jpegs, geometry
from mapcap.tasks.limits import DEFAULT_LIMITS, DecodeLimits
from mapcap.tasks.roi_crops import frame_side, reduce_frames

CACHE_BYTES = 2 << 30  # decoded images and pixel tensors kept per shard in host memory (then the oldest are dropped)
DEVICE_CACHE_BYTES = 8 << 30  # ... and pixel tensors on a GPU (a 4,096-image shard of 224 px pixels: 2.5 GB)
FRAME_DECODE = 64  # images decoded full size at once for frames the cache lacks (12-megapixel photos: 2.3 GB)
FRAME_CACHE_BYTES = 4 << 30  # ... and frames to cut crops from (roi_crops.py; 4,096 4:3 frames of 448 px: 3.3 GB)


class ImageCache:
    """Least-recently-used images (and preprocessed pixels) up to a byte budget, shared across stages. Tensors on
    a GPU count against their own budget: a 4,096-image shard's pixels (2.5 GB) fit there, where evicting them
    under the host's budget sent the first images of the shard back through PIL. Frames (keys ("frame", ...))
    have a budget of their own too, so that they never push out the pixels the next stage reads."""

    def __init__(self, max_bytes: int = CACHE_BYTES, device_bytes: int = DEVICE_CACHE_BYTES,
                 frame_bytes: int = FRAME_CACHE_BYTES):
        self.budget = {"host": max_bytes, "device": device_bytes, "frame": frame_bytes}  # pool -> bytes
        self._items: dict[str, OrderedDict[tuple, tuple[Any, int]]] = {pool: OrderedDict() for pool in self.budget}
        self._bytes = dict.fromkeys(self.budget, 0)
        self._lock = threading.Lock()

    def held(self, pool: str) -> int:
        """Bytes held in a pool ("host", "device" or "frame")."""
        return self._bytes[pool]

    def get(self, key: tuple) -> Any | None:
        with self._lock:
            for items in self._items.values():
                if key in items:
                    items.move_to_end(key)
                    return items[key][0]
            return None

    def put(self, key: tuple, value: Any, nbytes: int) -> None:
        on_device = isinstance(value, torch.Tensor) and value.device.type != "cpu"
        to = "frame" if key[0] == "frame" else "device" if on_device else "host"
        with self._lock:
            for pool, items in self._items.items():
                if key in items:
                    self._bytes[pool] -= items.pop(key)[1]
            items = self._items[to]
            items[key] = (value, nbytes)
            self._bytes[to] += nbytes
            while self._bytes[to] > self.budget[to] and len(items) > 1:
                self._bytes[to] -= items.popitem(last=False)[1][1]


def tensor_decode(preprocess: Callable, device: str) -> Geometry | None:
    """The geometry to decode and preprocess JPEGs with as tensor ops on `device` (a GPU, with a plain resize,
    crop and normalise); None keeps PIL (on CPU, PIL in the shard's threads is as fast as libjpeg-turbo there)."""
    return geometry(preprocess) if device.startswith("cuda") else None


DRAFT_FACTOR = 2  # JPEGs for model pixels decode at a reduced scale keeping both sides ≥ this × the resize


def draft_size(preprocess: Callable | None) -> int | None:
    """The smallest side a JPEG decoded only for `preprocess` needs (PIL draft): twice its resize, so the
    preprocess still shrinks it by antialiased bicubic, as from the full image (pixels within 0.002 mean, 0.03 max
    of those of a full decode on 12-megapixel photos, 4× faster); None for a preprocess of unknown geometry."""
    geo = geometry(preprocess) if preprocess is not None else None
    return DRAFT_FACTOR * geo.resize if geo is not None else None


class ShardImages:
    """The images of one shard (or of a run-level stage's picks): decoded once in the shard's threads, cached."""

    def __init__(self, items: list[Item], cache: ImageCache, fail: Callable[..., None],
                 thread_map: Callable[[Callable, list], list], workers: int, limits: DecodeLimits = DEFAULT_LIMITS):
        self.items, self.cache, self.fail, self.map, self.workers = items, cache, fail, thread_map, workers
        self.limits = limits  # what one file may cost (tasks/limits.py): over it, a failures row
        self.content_ids: dict[str, str] = {}  # path -> content id of the files decode_items read

    def _decode(self, path: str, draft: int | None = None) -> tuple[Image.Image | None, str, Exception | None]:
        """(image, content id, None), or (None, an id, the error): any error reading or decoding one file
        (MemoryError included) is that image's failures row, never its shard's end."""
        try:
            img, image_id = load_image(path, draft, self.limits)
            return img, image_id, None
        except Exception as e:  # recorded as the image's failures row by the caller, with its type and message
            return None, getattr(e, "image_id", None) or image_id_of(path.encode()), e

    def _cached(self, path: str, draft: int | None) -> tuple | None:
        """A decode of `path` held already: the full image, or with `draft` one decoded at that reduced scale."""
        return self.cache.get(("path", path)) or (self.cache.get(("draft", draft, path)) if draft else None)

    def _decode_all(self, paths: list[str], draft: int | None = None,
                    ) -> list[tuple[Image.Image | None, str, Exception | None]]:
        """(image, content id, error) per path, decoded once in the shard's threads and cached. `draft`: images
        only needed at model resolution, so a large JPEG may be decoded at a reduced scale with both sides ≥ draft
        (data.decode_image; full_size still gives the file's size), cached apart from full images."""
        todo = [p for p in dict.fromkeys(paths) if self._cached(p, draft) is None]
        for path, res in zip(todo, self.map(lambda p: self._decode(p, draft), todo)):
            img = res[0]
            reduced = img is not None and FULL_SIZE in img.info
            self.cache.put(("draft", draft, path) if reduced else ("path", path), res,
                           img.width * img.height * 3 if img is not None else 64)
        out = []
        for p in paths:
            res = self._cached(p, draft)
            out.append(res if res is not None else self._decode(p, draft))  # evicted meanwhile: decode again
        return out

    def decode_items(self, preprocess: Callable | None = None,
                     device: str = "cpu") -> list[tuple[Item, str, tuple[int, int] | None]]:
        """Every item of the shard decoded once: (item, image id (data.file_id: one per file), (W, H) or None if
        it failed); the files' content ids are left in `content_ids`. With a
        `preprocess` on a CUDA `device`, JPEGs are decoded and preprocessed there in one batch (tasks/decode.py;
        their pixels are cached, `pixels_of` finds them) and only the other files go through PIL."""
        paths = [it.path for it in self.items]
        fast = None
        draft = draft_size(preprocess)
        if preprocess is not None and (geo := tensor_decode(preprocess, device)) is not None:
            fast = decode_jpegs(paths, geo, device, self.workers, self.limits, self._keep_frames(frame_side(geo)))
            for p, pix in fast.pixels.items():
                self.cache.put(("pixels", id(preprocess), file_id(fast.ids[p], p)), pix,
                               pix.numel() * pix.element_size())
        slow = iter(self._decode_all([p for p in paths if fast is None or p not in fast.pixels], draft))
        out = []
        for item in self.items:
            if fast is not None and item.path in fast.pixels:
                self.content_ids[item.path] = fast.ids[item.path]
                out.append((item, file_id(fast.ids[item.path], item.path), fast.sizes[item.path]))
                continue
            img, content_id, err = next(slow)
            if img is not None or getattr(err, "image_id", None):  # bytes read: their content id is known
                self.content_ids[item.path] = content_id
            if err is not None:
                self.fail(file_id(content_id, item.path), item.path, err)
            out.append((item, file_id(content_id, item.path), full_size(img) if img is not None else None))
        return out

    def images(self, refs: dict[str, str], draft: int | None = None) -> dict[str, Image.Image]:
        """{image id: decoded image} for {image id: path}; an unreadable or changed file is a failure row.
        `draft`: see _decode_all (for pixels at model resolution only)."""
        ids = list(refs)
        out = {}
        for iid, (img, found, err) in zip(ids, self._decode_all([refs[i] for i in ids], draft)):
            if err is not None:
                self.fail(iid, refs[iid], err)
            elif not self._changed(iid, refs[iid], found):
                out[iid] = img
        return out

    def _changed(self, iid: str, path: str, found: str) -> bool:
        """Whether the file's content is no longer the image classified (then a failure row says so). `iid` is
        the file's id (data.file_id), or its content id in runs classified before files had ids of their own."""
        changed = iid not in (file_id(found, path), found)
        if changed:
            self.fail(iid, path, f"{path} changed since it was classified (content id {found}, image {iid}); "
                                 f"rerun with force=True to redo the run", "ImageChanged")
        return changed

    def device_images(self, refs: dict[str, str], device: str) -> dict[str, torch.Tensor]:
        """{image id: (3, H, W) uint8 RGB on `device`} for {image id: path}: JPEGs decoded there in one batch
        (tasks/decode.py), other files through PIL; an unreadable or changed file is a failure row. Not cached:
        full-size images on a GPU are for the batch at hand."""
        frames = decode_files(list(dict.fromkeys(refs.values())), device, self.workers, self.limits)
        out = {i: frames.images[p] for i, p in refs.items()
               if p in frames.images and not self._changed(i, p, frames.ids[p])}
        slow = self.images({i: p for i, p in refs.items() if p not in frames.images})
        return out | {i: torch.from_numpy(np.array(img)).permute(2, 0, 1).to(device) for i, img in slow.items()}

    def _keep_frames(self, side: int) -> Keep:
        """decode_jpegs's `keep`: each decoded image's frame cached (the crops of later stages come from it)."""
        def keep(paths: list[str], content_ids: list[str], images: list[torch.Tensor]) -> None:
            self._put_frames([file_id(c, p) for p, c in zip(paths, content_ids)], images, side)
        return keep

    def _put_frames(self, ids: list[str], images: list[torch.Tensor], side: int) -> list[torch.Tensor]:
        """The frames of (3, H, W) uint8 images of one size (roi_crops.reduce_frames), cached by image id with the
        (W, H) they were reduced from."""
        _, H, W = images[0].shape
        frames = reduce_frames(images, side)
        for iid, frame in zip(ids, frames):
            self.cache.put(("frame", side, iid), (frame, (W, H)), frame.numel())
        return frames

    def device_frames(self, refs: dict[str, str], device: str, side: int,
                      full: Collection[str] = ()) -> dict[str, torch.Tensor]:
        """{image id: (3, h, w) uint8 on `device`} for {image id: path}: each image's frame (shorter side at most
        `side`, roi_crops.py) as the shard's cache holds it (left by the classify stage's decode on the device or
        by an earlier call: no read, hash or decode again), the missing ones decoded FRAME_DECODE at a time and
        cached; for the ids in `full`, the full image (decoded for this call only, unless the cached frame is the
        image itself: the caller bounds how many). An unreadable or changed file is a failure row."""
        out, todo = {}, {}
        for iid, path in refs.items():
            got = self.cache.get(("frame", side, iid))  # (frame, (W, H))
            if got is not None and (iid not in full or tuple(got[0].shape[:0:-1]) == got[1]):
                out[iid] = got[0].to(device)
            else:
                todo[iid] = path
        ids = list(todo)
        for c in range(0, len(ids), FRAME_DECODE):
            by_size: dict[tuple, list[tuple[str, torch.Tensor]]] = {}
            for iid, img in self.device_images({i: todo[i] for i in ids[c:c + FRAME_DECODE]}, device).items():
                by_size.setdefault(tuple(img.shape), []).append((iid, img))
            for group in by_size.values():
                frames = self._put_frames([i for i, _ in group], [img for _, img in group], side)
                out |= {i: img if i in full else frame for (i, img), frame in zip(group, frames)}
        return {i: out[i] for i in refs if i in out}

    def pixels(self, preprocess: Callable[[Image.Image], torch.Tensor],
               images: dict[str, Image.Image]) -> dict[str, torch.Tensor]:
        """Preprocessed (3, H, W) tensors of decoded images, computed once per preprocess and image, in the
        decode threads (PIL's resize, most of the cost, releases the GIL)."""
        out = {iid: self.cache.get(("pixels", id(preprocess), iid)) for iid in images}
        todo = [iid for iid, pix in out.items() if pix is None]
        for iid, pix in zip(todo, self.map(lambda i: preprocess(images[i]), todo)):
            self.cache.put(("pixels", id(preprocess), iid), pix, pix.numel() * pix.element_size())
            out[iid] = pix
        return out

    def pixels_of(self, preprocess: Callable[[Image.Image], torch.Tensor],
                  refs: dict[str, str]) -> dict[str, torch.Tensor]:
        """Preprocessed tensors for {image id: path}: cached ones as they are (decoded on the GPU, or by an
        earlier stage), the rest decoded (an unreadable or changed file is a failure row) and preprocessed."""
        have = {i: px for i in refs if (px := self.cache.get(("pixels", id(preprocess), i))) is not None}
        todo = self.images({i: p for i, p in refs.items() if i not in have}, draft_size(preprocess))
        return have | self.pixels(preprocess, todo)
