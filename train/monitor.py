"""The pretraining monitor (docs/design.md §2.8): is the encoder learning anything a loss cannot
show?

    holdout = load_holdout(shards, 128)            # last 128 samples; the stream skips them
    mon = Monitor(cfg.monitor, holdout, len(shards.classes))
    row = mon.measure(model, ctx, step)            # {"step", "knn_acc", "fresh_loss", ...}

Two figures, on samples never trained on (the last `holdout` samples of the shards, in manifest
and tar order, so the same whatever the worker or rank count):

- kNN accuracy: every held-out instance embedded the same way for every method (mask average of
  the query trunk's fused stride-8 map over the instance's v0 mask, full canvas, eval mode),
  classified leave-one-out by a similarity-weighted vote of its k nearest neighbours (InstDisc,
  Wu et al. 2018; MoCo's CIFAR-10 demo). Step 0 gives the random-init reference.
- fresh-bank probe (contrastive methods): half the held-out pairs are queries, scored against the
  other half's keys from the momentum encoder as it is now (fresh) and against as many keys of the
  run's own queues (stale). A loss that is low on the stale bank but at chance on the fresh one
  tells keys apart by age, not content (MoCo's inconsistent dictionary). tools/queue_probe.py
  runs the same probe on a finished run.

Neither touches training: no grad, no optimizer, no global RNG, BatchNorm statistics put back.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np
import torch
import torch.nn.functional as F
import webdataset as wds
from torch import nn

from segloc.dense import fuse_stride8
from segloc.errors import UserError
from segloc.store import read_bytes
from train.augment import normalise
from train.config import MonitorConfig
from train.data import BadSample, Needs, ShardSet, collate, decode_sample
from train.export import trunk_of
from train.moco import ClassQueueMoCo
from train.model import Regions, mask_pool
from train.step import StepContext, contrastive_inputs, to_device

log = logging.getLogger(__name__)

KNN_T = 0.1  # vote weight exp(sim / T), as MoCo's kNN monitor (InstDisc uses 0.07)
EMBED_CHUNK = 64  # images per eval forward: batched, with bounded memory at any canvas
NEEDS = Needs(views=2, masks=True, seg=False)  # v0 for kNN, v1 too for the probe's keys
_PROBE_STREAM = 0x6D6F6E  # "mon": keeps the probe's generators apart from the training steps'


# ---------------------------------------------------------------- the hold-out


@dataclass(frozen=True)
class HoldOut:
    keys: frozenset[tuple[str, str]]  # (url, key) of every held-out sample: never trained on
    batch: dict[str, Any] | None  # the decodable ones, collated (CPU); None if none decoded
    skipped: int  # held out but not decodable


def load_holdout(shards: ShardSet, n: int) -> HoldOut:
    """The last `n` samples of the shards (manifest order, then tar order), decoded once."""
    if n > shards.num_samples // 2:
        raise UserError(
            f"params pretrain.monitor.holdout: {n} samples held out of the {shards.num_samples} "
            f"in {shards.manifest}; expected at most half of them (0 turns the monitor off)"
        )
    raws = _tail_samples(shards, n)
    keys = frozenset((r["__url__"], r["__key__"]) for r in raws)
    samples = []
    for raw in raws:
        try:
            samples.append(decode_sample(raw, NEEDS, shards.canvas, len(shards.classes)))
        except (BadSample, cv2.error) as err:
            log.warning(
                "held-out sample %s of %s not used: %s", raw["__key__"], raw["__url__"], err
            )
    batch = collate(samples, NEEDS) if samples else None
    return HoldOut(keys, batch, len(raws) - len(samples))


def _tail_samples(shards: ShardSet, n: int) -> list[dict[str, Any]]:
    tail: list[dict[str, Any]] = []
    for url in reversed(shards.urls):
        if len(tail) >= n:
            break
        try:
            stream = {"url": url, "stream": io.BytesIO(read_bytes(url))}
            files = wds.tariterators.tar_file_expander([stream])
            samples = list(wds.tariterators.group_by_keys(files))
        except Exception as err:  # webdataset raises whatever tarfile/IO raise
            raise UserError(f"{url}: cannot read the monitor's held-out samples ({err})") from err
        tail = samples[max(0, len(samples) - (n - len(tail))) :] + tail
    return tail


def image_slice(batch: dict[str, Any], lo: int, hi: int) -> dict[str, Any]:
    """Images lo..hi-1 of a collated batch with their instances (inst_img re-based to 0)."""
    a, b = torch.searchsorted(batch["inst_img"], torch.tensor([lo, hi])).tolist()
    out = {f"img{v}": batch[f"img{v}"][lo:hi] for v in range(NEEDS.views)}
    out["inst_img"] = batch["inst_img"][a:b] - lo
    for key in ("inst_slot", "inst_cls", "masks0", "masks1"):
        out[key] = batch[key][a:b]
    return out


# ---------------------------------------------------------------- kNN accuracy


@torch.no_grad()
def embed_instances(
    model: nn.Module, batch: dict[str, Any], device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """(M x C float64 L2-normalised, (M,) classes) of every instance with a non-empty v0 mask.

    The same embedding for every method (docs/design.md §2.8), so rows compare across methods:
    the query trunk's fused stride-8 map, averaged over the instance's mask area-resized to the map
    (train.model.mask_pool), on v0 at full canvas without augmentation, in eval mode.
    """
    trunk, embs = trunk_of(model), []
    with _eval_mode(trunk), _autocast(device):
        for lo in range(0, batch["img0"].shape[0], EMBED_CHUNK):
            part = to_device(image_slice(batch, lo, lo + EMBED_CHUNK), device)
            x = normalise(part["img0"].float() / 255.0)
            feat = fuse_stride8(trunk(x)[1:]).float()
            kmax = int(part["inst_slot"].max()) + 1 if part["inst_slot"].numel() else 0
            regions = Regions(part["inst_img"], part["inst_slot"], kmax, masks=part["masks0"])
            embs.append(mask_pool(feat, regions).cpu())
    keep = batch["masks0"].flatten(1).sum(1) > 0
    emb = F.normalize(torch.cat(embs).double()[keep], dim=1)
    return emb, batch["inst_cls"][keep]


def knn_accuracy(emb: torch.Tensor, labels: torch.Tensor, k: int, num_classes: int) -> float:
    """Leave-one-out kNN accuracy (percent) of rows of `emb` (N x D, unit length).

    Cosine similarity, the k nearest others vote with weight exp(sim / KNN_T). Ties are broken
    deterministically: among equal similarities the lower index is nearer (stable sort), among
    equal votes the lower class wins (argmax takes the first maximum).
    """
    n = emb.shape[0]
    if n < 2:
        return float("nan")
    sims = emb @ emb.T
    sims.fill_diagonal_(float("-inf"))  # leave one out
    top, idx = torch.sort(sims, dim=1, descending=True, stable=True)
    k = min(k, n - 1)
    weights = (top[:, :k] / KNN_T).exp()
    votes = torch.zeros(n, num_classes, dtype=weights.dtype)
    votes.scatter_add_(1, labels[idx[:, :k]], weights)
    return 100.0 * (votes.argmax(1) == labels).double().mean().item()


# ---------------------------------------------------------------- fresh-bank probe


class TooFewPairs(ValueError):
    """No query has a negative in the fresh bank: more pairs (or classes) are needed."""


def fresh_bank_probe(
    queue: torch.Tensor,
    q: torch.Tensor,
    k: torch.Tensor,
    labels: torch.Tensor,
    temperature: float,
    seed: int = 0,
) -> dict[str, Any]:
    """Loss and similarities of the first half of the pairs against a fresh and a stale bank.

    queue: C x D x K (the run's bank); q, k: N x D pairs; labels: (N,) their queue.
    Fresh bank: the keys of the second half, at most K per queue (the stale side cannot give
    more); stale bank: as many entries of each queue, chosen by a seeded permutation. With C > 1
    a query's negatives are the other queues' keys, as in training; chance_loss is the mean over
    queries of log(1 + negatives), the loss of an encoder that cannot tell the candidates apart.
    Raises TooFewPairs when no query has a negative.
    """
    c, _, size = queue.shape
    half = q.shape[0] // 2
    fresh_k, fresh_l = _first_per_class(k[half:], labels[half:], c, size)
    counts = torch.bincount(fresh_l, minlength=c)
    pick = torch.randperm(size, generator=torch.Generator().manual_seed(seed))
    stale_k = torch.cat([queue[j][:, pick[: counts[j]]].T for j in range(c)])  # class-major
    mask_own = c > 1
    q, k, labels = q[:half], k[:half], labels[:half]
    if mask_own:
        negatives = fresh_l.numel() - counts[labels]
    else:
        negatives = torch.full((half,), fresh_l.numel())
    keep = negatives > 0
    if not keep.any():
        raise TooFewPairs(f"no query has a negative among {fresh_l.numel()} fresh keys")
    q, k, labels, negatives = q[keep], k[keep], labels[keep], negatives[keep]
    return {
        "queries": int(keep.sum()),
        "keys_per_queue": int(counts[counts > 0].min()),  # the fewest of a probed queue
        "chance_loss": torch.log1p(negatives.double()).mean().item(),
        "pos_sim": (q * k).sum(1).mean().item(),
        "stale": _bank_score(q, k, labels, stale_k, fresh_l, temperature, mask_own),
        "fresh": _bank_score(q, k, labels, fresh_k, fresh_l, temperature, mask_own),
    }


def _first_per_class(
    keys: torch.Tensor, labels: torch.Tensor, c: int, cap: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The first `cap` keys of each class, class-major (the layout of the stale bank)."""
    order = torch.argsort(labels, stable=True)
    keys, labels = keys[order], labels[order]
    onehot = F.one_hot(labels, c)
    rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)
    keep = rank < cap
    return keys[keep], labels[keep]


def _bank_score(
    q: torch.Tensor,
    k: torch.Tensor,
    labels: torch.Tensor,
    bank: torch.Tensor,
    bank_labels: torch.Tensor,
    temperature: float,
    mask_own: bool,
) -> dict[str, float]:
    """InfoNCE of each query's own key among it and the bank (P x D), own-class keys left out."""
    q, k, bank = q.double(), k.double(), bank.double()
    sims = q @ bank.T  # N x P
    if mask_own:
        negative = labels[:, None] != bank_labels[None]
    else:
        negative = torch.ones_like(sims, dtype=torch.bool)
    pos = (q * k).sum(1) / temperature
    neg = torch.logsumexp((sims / temperature).masked_fill(~negative, float("-inf")), dim=1)
    return {
        "loss": (torch.logaddexp(pos, neg) - pos).mean().item(),
        "neg_sim": sims[negative].mean().item(),
    }


def pair_embeddings(model: ClassQueueMoCo, inputs: dict[str, Any]) -> tuple[torch.Tensor, ...]:
    """(queries, keys) of contrastive_inputs, as a training step makes them (no update)."""
    q = model.encoder_q(inputs["x_q"], inputs["regions_q"])
    return q, model.keys(inputs["x_k"], inputs["regions_k"], inputs["perm"])


@torch.no_grad()
def holdout_pairs(
    model: ClassQueueMoCo, batch: dict[str, Any], ctx: StepContext
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(q, k, queue labels) of the held-out samples, augmented and encoded as in training.

    Training-sized chunks in train mode, so BatchNorm sees batches like a step's (the momentum
    encoder's split BN has no useful running statistics); the running statistics this updates
    are put back. Each chunk's augmentation comes from a generator fixed by (seed, chunk), so
    every pass sees the same crops and rows differ only by the model.
    """
    qs, ks, labels = [], [], []
    size = ctx.cfg.batch_size
    with _bn_stats_kept(model), _autocast(ctx.device):
        for j, lo in enumerate(range(0, batch["img0"].shape[0], size)):
            part = image_slice(batch, lo, lo + size)
            kmax = int(part["inst_slot"].max()) + 1 if part["inst_slot"].numel() else 0
            part = to_device(part, ctx.device) | {"kmax": kmax}
            inputs = contrastive_inputs(part, ctx, probe_generator(ctx.cfg.seed, j))
            if inputs["labels"].numel() == 0:
                continue
            q, k = pair_embeddings(model, inputs)
            qs.append(q.float().cpu())
            ks.append(k.float().cpu())
            labels.append(inputs["labels"].cpu())
    if not qs:
        return torch.empty(0, 0), torch.empty(0, 0), torch.empty(0, dtype=torch.long)
    return torch.cat(qs), torch.cat(ks), torch.cat(labels)


def probe_generator(seed: int, chunk: int) -> torch.Generator:
    state = np.random.SeedSequence([seed, _PROBE_STREAM, chunk]).generate_state(2, np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


# ---------------------------------------------------------------- the monitor


@dataclass
class Monitor:
    cfg: MonitorConfig
    holdout: HoldOut
    num_classes: int

    def due(self, step: int, total: int) -> bool:
        """At the first and the last step, and every `every` steps between."""
        every = self.cfg.every
        return step == 0 or step == total or (every > 0 and step % every == 0)

    def measure(self, model: nn.Module, ctx: StepContext, step: int) -> dict[str, float]:
        """One row of plots/monitor.tsv."""
        batch = self.holdout.batch
        row: dict[str, float] = {"step": step, "knn_acc": float("nan")}
        if batch is not None:
            emb, labels = embed_instances(model, batch, ctx.device)
            row["knn_acc"] = knn_accuracy(emb, labels, self.cfg.k, self.num_classes)
        if isinstance(model, ClassQueueMoCo):
            row |= self._probe(model, ctx, batch)
        return row

    def _probe(
        self, model: ClassQueueMoCo, ctx: StepContext, batch: dict[str, Any] | None
    ) -> dict[str, float]:
        nan = float("nan")
        out = {"fresh_loss": nan, "stale_loss": nan, "chance_loss": nan}
        if batch is None:
            return out
        q, k, labels = holdout_pairs(model, batch, ctx)
        try:
            probe = fresh_bank_probe(model.queue.float().cpu(), q, k, labels, model.T)
        except TooFewPairs as err:
            log.warning("monitor: no fresh-bank probe (%s); raise pretrain.monitor.holdout", err)
            return out
        return {
            "fresh_loss": probe["fresh"]["loss"],
            "stale_loss": probe["stale"]["loss"],
            "chance_loss": probe["chance_loss"],
        }


def summary(rows: list[dict[str, float]]) -> dict[str, float]:
    """metrics.json keys: the last row's figures and the step-0 kNN accuracy (random init)."""
    if not rows:
        return {}
    last, first = rows[-1], rows[0]
    out = {"knn_acc": last["knn_acc"]}
    if first["step"] == 0:
        out["knn_acc_init"] = first["knn_acc"]
    if "fresh_loss" in last:
        out |= {
            "fresh_bank_loss": last["fresh_loss"],
            "stale_bank_loss": last["stale_loss"],
            "chance_loss": last["chance_loss"],
        }
    return out


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    modes = {m: m.training for m in module.modules()}
    module.eval()
    try:
        yield
    finally:
        for m, mode in modes.items():
            m.training = mode


@contextlib.contextmanager
def _bn_stats_kept(model: nn.Module) -> Iterator[None]:
    """Train-mode forwards update BN running statistics; put them back so training is untouched."""
    saved = [
        (m, {n: b.clone() for n, b in m.named_buffers(recurse=False) if b is not None})
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
    ]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, buffers in saved:
                for n, b in buffers.items():
                    getattr(m, n).copy_(b)


def _autocast(device: torch.device) -> contextlib.AbstractContextManager:
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
