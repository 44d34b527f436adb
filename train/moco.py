"""MoCo-v2 with one negative queue per class (SegLoc), and the supervised baseline model.

For a query of class c the negatives are every entry of the queues of the other classes, never a
same-class key: plain MoCo's single queue is full of such false negatives (facebookresearch/moco
issues #24 and #93). With one queue nothing is masked: that is exactly MoCo-v2's InfoNCE.

Symbols follow the MoCo paper: encoder_q / encoder_k, queue (C x D x K), m (momentum), T.
The momentum value comes from a schedule outside the model (moco-v3 style): forward(..., m).
"""

from __future__ import annotations

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn

from segloc import dist
from segloc.dense import fuse_stride8
from synth.shards import IGNORE
from train.model import Encoder, Regions, ResNetTrunk, init_weights, split_batchnorm


def class_queue_logits(
    q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor, queue: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Similarities l_pos (N,) and l_neg (C x N x K), own-class block of l_neg set to -inf.

    q, k: N x D L2-normalised; labels: (N,) in 0..C-1; queue: C x D x K (columns are keys).
    Only a bank of several queues is masked: with one queue (C = 1) every key is a negative, as
    in MoCo-v2, where masking would leave a query none.
    """
    l_pos, l_neg = _similarities(q, k, queue)
    if queue.shape[0] > 1:
        own = F.one_hot(labels, queue.shape[0]).T.bool()  # C x N
        l_neg = l_neg.masked_fill(own[:, :, None], float("-inf"))
    return l_pos, l_neg


def _similarities(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Unmasked l_pos (N,) and l_neg (C x N x K): one batched matmul over the whole bank, whose
    C x N x K layout avoids copying the bank."""
    l_pos = (q * k).sum(1)
    l_neg = torch.matmul(q.unsqueeze(0), queue)  # (1 x N x D) @ (C x D x K) -> C x N x K
    return l_pos, l_neg


def class_queue_infonce(
    q: torch.Tensor,
    k: torch.Tensor,
    labels: torch.Tensor,
    queue: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Mean InfoNCE over queries: -log softmax of the positive among [positive, other-class queue]
    (with one queue: among [positive, the queue], MoCo-v2's loss).

    Equals cross-entropy with target 0 over logits [l_pos, l_neg.flatten()] / T, written as a
    logsumexp over the C x N x K block so masked entries (-inf) simply drop out.
    """
    dtype = torch.promote_types(q.dtype, torch.float32)  # at least float32, even under bf16
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = q.to(dtype), k.to(dtype), queue.to(dtype)
        l_pos, l_neg = class_queue_logits(q, k, labels, queue)
        pos = l_pos / temperature
        neg = torch.logsumexp(l_neg / temperature, dim=(0, 2))  # (N,)
        return (torch.logaddexp(pos, neg) - pos).mean()


def class_positive_infonce(
    q: torch.Tensor,
    k: torch.Tensor,
    labels: torch.Tensor,
    queue: torch.Tensor,
    count: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Multi-positive InfoNCE (SupCon's L_out; Self-Tuning's per-class queue), mean over queries.

    For a query of class c the positives P are its own key and the *filled* entries of queue c
    (never the random vectors a queue starts with); the candidates A are P and every entry of
    the other queues: L = logsumexp_A(s) - mean_P(s), s = q . a / T. Unfilled entries of queue c
    are in neither, so with queue c empty this is exactly class_queue_infonce, and with it full
    A is the own key plus the whole bank.
    count: (C,) keys ever written per queue; entry j of queue c is filled when j < count[c].
    """
    dtype = torch.promote_types(q.dtype, torch.float32)  # at least float32, even under bf16
    with torch.autocast(q.device.type, enabled=False):
        q, k, queue = q.to(dtype), k.to(dtype), queue.to(dtype)
        # Unmasked: queue c's filled entries are positives here; only its unfilled ones drop out.
        l_pos, l_neg = _similarities(q, k, queue)
        c, n, size = l_neg.shape
        filled = torch.arange(size, device=q.device)[None] < count.to(q.device)[:, None]  # C x K
        own = F.one_hot(labels, c).T.bool()  # C x N
        logits = (l_neg / temperature).masked_fill(own[:, :, None] & ~filled[:, None], -math.inf)
        pos = l_pos / temperature
        lse = torch.logaddexp(pos, torch.logsumexp(logits, dim=(0, 2)))  # (N,)
        own_logits = logits[labels, torch.arange(n, device=q.device)]  # N x K: queue c's block
        own_filled = filled[labels]  # N x K
        pos_sum = pos + torch.where(own_filled, own_logits, 0.0).sum(1)
        return (lse - pos_sum / (1 + own_filled.sum(1))).mean()


def dense_fg_infonce(
    zq: torch.Tensor,
    zk: torch.Tensor,
    cover_q: torch.Tensor,
    cover_k: torch.Tensor,
    inst_img: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """A dense term after CP2 (wangf3014/CP2): every query cell inside an instance (coverage
    > 0.5) takes that instance's key prototype (the mean of its key cells) as the positive and the
    key image's background cells (no instance covers 10 % of them) as negatives, so each cell
    learns item from background from the first step. Mean over such cells.

    zq, zk: B x D x h x w, L2-normalised per cell; cover_q, cover_k: M x h x w instance coverage
    of the query and key crops; inst_img: (M,) image of each instance.
    """
    zq, zk = zq.flatten(2).float(), zk.flatten(2).float()  # B x D x hw
    cq, ck = cover_q.flatten(1).float(), cover_k.flatten(1).float()  # M x hw
    proto = F.normalize(torch.einsum("mc,mdc->md", ck, zk[inst_img]), dim=1)  # M x D
    pos = torch.einsum("md,mdc->mc", proto, zq[inst_img]) / temperature  # M x hw
    occupied = ck.new_zeros(zk.shape[0], zk.shape[2]).index_add_(0, inst_img, ck)  # B x hw
    background = occupied < 0.1
    sim = torch.bmm(zq.transpose(1, 2), zk) / temperature  # B x hw (query) x hw (key)
    neg = sim.masked_fill(~background[:, None, :], -math.inf).logsumexp(2)  # B x hw
    loss = torch.logaddexp(pos, neg[inst_img]) - pos  # M x hw
    inside = cq > 0.5
    return loss[inside].mean() if bool(inside.any()) else zq.sum() * 0.0


@torch.no_grad()
def enqueue(
    queue: torch.Tensor,
    ptr: torch.Tensor,
    count: torch.Tensor,
    keys: torch.Tensor,
    labels: torch.Tensor,
) -> None:
    """Write keys of class c into queue c at ptr[c] with wrap-around; counts vary per class.

    queue: C x D x K, ptr / count: (C,) int64 (next write position / keys ever written),
    keys: N x D, labels: (N,). Keys keep their order within a class; when a class brings more
    than K keys only its last K are written (what a sequential write would leave).
    """
    c, _, size = queue.shape
    onehot = F.one_hot(labels, c)  # N x C
    per_class = onehot.sum(0)  # (C,)
    rank = (onehot.cumsum(0) - 1).gather(1, labels[:, None]).squeeze(1)  # order within class
    keep = rank >= per_class[labels] - size
    pos = (ptr[labels] + rank) % size
    queue[labels[keep], :, pos[keep]] = keys[keep].to(queue.dtype)
    ptr.copy_((ptr + per_class) % size)
    count.add_(per_class)


@torch.no_grad()
def momentum_update(key: nn.Module, query: nn.Module, m: float) -> None:
    """theta_k <- m * theta_k + (1 - m) * theta_q (parameters only; BN statistics stay local)."""
    pk = list(key.parameters())
    pq = [p.detach() for p in query.parameters()]
    torch._foreach_mul_(pk, m)
    torch._foreach_add_(pk, pq, alpha=1.0 - m)


class ClassQueueMoCo(nn.Module):
    """Query/momentum encoders and the class queues; forward returns (loss, stats)."""

    def __init__(
        self,
        encoder: Encoder,
        num_queues: int,
        queue_size: int,
        temperature: float,
        shuffle_bn_groups: int,
        g: torch.Generator,
        class_positives: bool = False,
        predictor: bool = False,
        dense_weight: float = 0.0,
    ):
        super().__init__()
        self.T = temperature
        # A variant's dense term (`dense_fg_infonce`) beside SegLoc's instance loss; 0: off.
        self.dense_weight = dense_weight if encoder.dense_head is not None else 0.0
        # Own-class keys as positives: only meaningful with one queue per class (config refuses
        # the other combinations by key).
        self.class_positives = class_positives and num_queues > 1
        self.encoder_q = encoder
        self.encoder_k = split_batchnorm(copy.deepcopy(encoder), shuffle_bn_groups)
        for p in self.encoder_k.parameters():
            p.requires_grad = False
        dim = encoder.head[-1].out_features
        # BYOL / MoCo v3 / DetCon-B: an MLP on the query branch only, so the query does not have
        # to match the key encoder's output directly.
        self.predictor = None
        if predictor:
            self.predictor = nn.Sequential(
                nn.Linear(dim, 4 * dim), nn.ReLU(inplace=True), nn.Linear(4 * dim, dim)
            )
            init_weights(self.predictor, g)  # from the run's generator, never the global one
        k = max(1, queue_size // num_queues)
        # Random unit vectors until real keys arrive (MoCo); seeded, so every rank starts equal.
        self.register_buffer(
            "queue", F.normalize(torch.randn(num_queues, dim, k, generator=g), dim=1)
        )
        self.register_buffer("queue_ptr", torch.zeros(num_queues, dtype=torch.long))
        self.register_buffer("queue_count", torch.zeros(num_queues, dtype=torch.long))

    def forward(
        self,
        x_q: torch.Tensor,
        x_k: torch.Tensor,
        regions_q: Regions | None,
        regions_k: Regions | None,
        labels: torch.Tensor,
        perm: torch.Tensor,
        m: float,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """x_q / x_k: B x 3 x P x P; labels: (N,) queue of each pair; perm: key-batch shuffle."""
        feat_q = self.encoder_q.feature_map(x_q)
        q = self.encoder_q.embed(feat_q, regions_q)  # N x dim
        if self.predictor is not None:
            q = F.normalize(self.predictor(q), dim=1)
        with torch.no_grad():
            momentum_update(self.encoder_k, self.encoder_q, m)
            feat_k = self.key_map(x_k, perm)
            k = self.encoder_k.embed(feat_k, regions_k)  # N x dim
        if q.shape[0] == 0:  # every pair vanished: a zero loss that still touches every parameter
            zero = q.sum() * 0.0
            return zero, {
                "pos_sim": zero.detach(),
                "neg_sim": zero.detach(),
                "pairs": zero.detach(),
            }
        # A copy: autograd keeps the bank for backward, and enqueue below rewrites it in place.
        bank = self.queue.clone()
        if self.class_positives:
            loss = class_positive_infonce(q, k, labels, bank, self.queue_count.clone(), self.T)
        else:
            loss = class_queue_infonce(q, k, labels, bank, self.T)
        stats = self._stats(q.detach(), k, labels)
        if self.dense_weight > 0:
            dense = self._dense(feat_q, feat_k, regions_q, regions_k)
            loss = loss + self.dense_weight * dense
            stats["dense_loss"] = dense.detach()
        enqueue(
            self.queue,
            self.queue_ptr,
            self.queue_count,
            dist.all_gather_varlen(k),
            dist.all_gather_varlen(labels),
        )
        return loss, stats

    def keys(self, x: torch.Tensor, regions: Regions | None, perm: torch.Tensor) -> torch.Tensor:
        """Keys (N x dim) of the momentum encoder as training makes them."""
        return self.encoder_k.embed(self.key_map(x, perm), regions)

    def key_map(self, x: torch.Tensor, perm: torch.Tensor) -> torch.Tensor:
        """The momentum encoder's feature map of `x`: images shuffled by `perm` before its split
        BN and put back after (shuffle-BN in one process)."""
        return self.encoder_k.feature_map(x[perm])[torch.argsort(perm)]

    def _dense(
        self, feat_q: torch.Tensor, feat_k: torch.Tensor, regions_q: Regions, regions_k: Regions
    ) -> torch.Tensor:
        zq = self.encoder_q.dense_embed(feat_q)
        with torch.no_grad():
            zk = self.encoder_k.dense_embed(feat_k)
        size = zq.shape[-2:]
        cover_q = F.adaptive_avg_pool2d(regions_q.masks[:, None].float(), size)[:, 0]
        cover_k = F.adaptive_avg_pool2d(regions_k.masks[:, None].float(), size)[:, 0]
        return dense_fg_infonce(zq, zk, cover_q, cover_k, regions_q.inst_img, self.T)

    def _stats(
        self, q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        l_pos, l_neg = class_queue_logits(q.float(), k.float(), labels, self.queue)
        finite = torch.isfinite(l_neg)
        neg = torch.where(finite, l_neg, 0.0).sum() / finite.sum().clamp(min=1)
        return {
            "pos_sim": l_pos.mean(),
            "neg_sim": neg,
            "pairs": torch.tensor(float(q.shape[0]), device=q.device),
        }

    def queue_fill(self) -> torch.Tensor:
        """(C,) share of each queue holding real keys (the rest are the random init vectors)."""
        return self.queue_count.clamp(max=self.queue.shape[2]).float() / self.queue.shape[2]


class SupervisedSeg(nn.Module):
    """Same trunk, a 1x1-conv classifier on the fused stride-8 map (C3 + upsampled C4, C5;
    `segloc.dense`) upsampled to the input; per-pixel CE (255 ignored). Stride 8 makes it a
    segmentation pretraining: on C5 alone a 30-px item is one cell of a 112-px crop's 4 x 4 map."""

    def __init__(self, arch: str, num_classes: int):
        super().__init__()
        self.trunk = ResNetTrunk(arch)
        self.classifier = nn.Conv2d(sum(self.trunk.channels[1:]), num_classes + 1, 1)

    def forward(
        self, x: torch.Tensor, seg: torch.Tensor
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.classifier(fuse_stride8(self.trunk(x)[1:]))
        logits = F.interpolate(logits, size=seg.shape[-2:], mode="bilinear", align_corners=False)
        loss = F.cross_entropy(logits.float(), seg, ignore_index=IGNORE)
        with torch.no_grad():
            scored = seg != IGNORE
            correct = (logits.argmax(1) == seg) & scored
            acc = correct.sum().float() / scored.sum().clamp(min=1)
        return loss, {"pixel_acc": acc}
