"""Class-queue InfoNCE (instance and class positives) against naive references, the per-class
enqueue and the momentum update."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train import class_queue_infonce
from train.moco import class_positive_infonce, enqueue, momentum_update


def _unit(*shape: int, g: torch.Generator, dim: int) -> torch.Tensor:
    return F.normalize(torch.randn(*shape, generator=g, dtype=torch.float64), dim=dim)


def _problem(seed: int, n: int = 12, c: int = 4, d: int = 8, k: int = 5):
    g = torch.Generator().manual_seed(seed)
    q, key = _unit(n, d, g=g, dim=1), _unit(n, d, g=g, dim=1)
    labels = torch.randint(0, c, (n,), generator=g)
    return q, key, labels, _unit(c, d, k, g=g, dim=1)


def naive_moco(q, k, queue, t):
    """MoCo-v2 as in the paper: logits [l_pos, q . queue] / T, cross-entropy with target 0."""
    logits = torch.cat([(q * k).sum(1, keepdim=True), q @ queue], 1) / t
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long))


def naive_class_queue(q, k, labels, queue, t):
    """One query at a time: negatives are the queues of the other classes only."""
    losses = []
    for i in range(q.shape[0]):
        others = [queue[c] for c in range(queue.shape[0]) if c != labels[i]]
        negs = torch.cat(others, 1) if others else queue.new_zeros(queue.shape[1], 0)
        logits = torch.cat([(q[i] * k[i]).sum().view(1), q[i] @ negs]) / t
        losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", range(5))
def test_a_single_queue_is_moco_v2(seed):
    """With one queue nothing is masked: every key is a negative, as in MoCo-v2."""
    q, k, _, queue = _problem(seed, c=1, k=17)
    labels = torch.zeros(q.shape[0], dtype=torch.long)
    ours = class_queue_infonce(q, k, labels, queue, 0.2)
    torch.testing.assert_close(ours, naive_moco(q, k, queue[0], 0.2), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(5))
def test_matches_naive_per_query_loop(seed):
    q, k, labels, queue = _problem(seed, c=1 + seed % 4 + 1)
    ours = class_queue_infonce(q, k, labels, queue, 0.07)
    torch.testing.assert_close(
        ours, naive_class_queue(q, k, labels, queue, 0.07), rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("seed", range(3))
def test_own_class_entries_never_act_as_negatives(seed):
    q, k, labels, queue = _problem(seed)
    for i in range(q.shape[0]):
        bank = queue.clone().requires_grad_(True)
        loss = class_queue_infonce(q[i : i + 1], k[i : i + 1], labels[i : i + 1], bank, 0.2)
        loss.backward()
        own = labels[i]
        assert torch.all(bank.grad[own] == 0)
        others = torch.cat([bank.grad[:own], bank.grad[own + 1 :]])
        assert others.abs().sum() > 0  # the test can fail: other queues do get gradient
        # Rewriting the query's own queue leaves its loss exactly unchanged.
        moved = queue.clone()
        moved[own] = _unit(*queue[own].shape, g=torch.Generator().manual_seed(99), dim=0)
        again = class_queue_infonce(q[i : i + 1], k[i : i + 1], labels[i : i + 1], moved, 0.2)
        assert again == loss.detach()


def test_loss_falls_as_the_positive_aligns():
    q, k, labels, queue = _problem(0)
    far = class_queue_infonce(q, -q, labels, queue, 0.2)
    near = class_queue_infonce(q, q, labels, queue, 0.2)
    assert near < far


def naive_class_positives(q, k, labels, queue, count, t):
    """One query at a time: positives its key and the filled entries of its own queue; the
    candidates those and every entry of the other queues."""
    losses = []
    for i in range(q.shape[0]):
        own = int(labels[i])
        filled = queue[own][:, : min(int(count[own]), queue.shape[2])]  # D x filled
        others = [queue[c] for c in range(queue.shape[0]) if c != own]
        positives = torch.cat([(q[i] * k[i]).sum().view(1), q[i] @ filled]) / t
        negatives = q[i] @ torch.cat(others, 1) / t if others else q.new_zeros(0)
        lse = torch.logsumexp(torch.cat([positives, negatives]), 0)
        losses.append(lse - positives.mean())
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", range(6))
def test_class_positives_match_naive_per_query_loop(seed):
    q, k, labels, queue = _problem(seed, c=2 + seed % 3, k=6)
    g = torch.Generator().manual_seed(100 + seed)
    count = torch.randint(0, 10, (queue.shape[0],), generator=g)  # empty, partial and wrapped
    ours = class_positive_infonce(q, k, labels, queue, count, 0.1)
    ref = naive_class_positives(q, k, labels, queue, count, 0.1)
    torch.testing.assert_close(ours, ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("seed", range(3))
def test_class_positives_with_empty_own_queues_are_the_instance_loss(seed):
    q, k, labels, queue = _problem(seed)
    count = torch.zeros(queue.shape[0], dtype=torch.long)
    count[0] = 99  # one full queue: a positive only for its own class's queries
    only_others = labels != 0
    args = (q[only_others], k[only_others], labels[only_others], queue)
    torch.testing.assert_close(
        class_positive_infonce(*args, count, 0.2),
        class_queue_infonce(*args, 0.2),
        rtol=1e-10,
        atol=1e-10,
    )
    # ...and with every queue full the own queue's keys do change the loss.
    full = class_positive_infonce(q, k, labels, queue, count.fill_(99), 0.2)
    assert (full - class_queue_infonce(q, k, labels, queue, 0.2)).abs() > 1e-3


def test_unfilled_entries_are_never_positives():
    q, k, labels, queue = _problem(3, n=1, c=3, k=6)
    own = int(labels[0])
    count = torch.full((3,), 6, dtype=torch.long)
    count[own] = 2  # entries 0, 1 filled; 2..5 still the random start vectors
    bank = queue.clone().requires_grad_(True)
    class_positive_infonce(q, k, labels, bank, count, 0.2).backward()
    assert torch.all(bank.grad[own][:, 2:] == 0) and bank.grad[own][:, :2].abs().sum() > 0
    # Moving an unfilled entry onto the query (a perfect "positive") changes nothing.
    moved = queue.clone()
    moved[own, :, 3] = q[0]
    torch.testing.assert_close(
        class_positive_infonce(q, k, labels, moved, count, 0.2),
        class_positive_infonce(q, k, labels, queue, count, 0.2),
        rtol=0,
        atol=0,
    )


def test_class_positives_pull_toward_filled_own_keys():
    q, k, labels, queue = _problem(4, n=1, c=3, k=4)
    count = torch.full((3,), 4, dtype=torch.long)
    aligned = queue.clone()
    aligned[labels[0]] = q[0][:, None].expand(-1, 4)  # own queue: copies of the query itself
    near = class_positive_infonce(q, k, labels, aligned, count, 0.2)
    assert near < class_positive_infonce(q, k, labels, queue, count, 0.2)


def test_class_positives_stay_float32_under_bf16_autocast():
    q, k, labels, queue = (t.float() if t.is_floating_point() else t for t in _problem(5))
    count = torch.tensor([5, 2, 0, 9])
    exact = class_positive_infonce(q, k, labels, queue, count, 0.2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = class_positive_infonce(q.bfloat16(), k.bfloat16(), labels, queue, count, 0.2)
    assert low.dtype == torch.float32 and torch.isfinite(low)
    assert abs(low.item() - exact.item()) < 0.05


def _reference_enqueue(queue, ptr, keys, labels):
    """Sequential writes, one key at a time."""
    queue, ptr = queue.clone(), ptr.clone()
    for key, c in zip(keys, labels.tolist(), strict=True):
        queue[c, :, ptr[c]] = key
        ptr[c] = (ptr[c] + 1) % queue.shape[2]
    return queue, ptr


@pytest.mark.parametrize("seed", range(6))
def test_enqueue_matches_sequential_writes_with_wraparound(seed):
    g = torch.Generator().manual_seed(seed)
    c, d, k = 3, 4, 5
    queue, ptr = torch.zeros(c, d, k), torch.zeros(c, dtype=torch.long)
    ref_q, ref_p = queue.clone(), ptr.clone()
    count = torch.zeros(c, dtype=torch.long)
    for _ in range(6):  # several steps, some with more keys of a class than the queue holds
        n = int(torch.randint(0, 14, (1,), generator=g))
        labels = torch.randint(0, c, (n,), generator=g)
        keys = torch.randn(n, d, generator=g)
        enqueue(queue, ptr, count, keys, labels)
        ref_q, ref_p = _reference_enqueue(ref_q, ref_p, keys, labels)
        torch.testing.assert_close(queue, ref_q, rtol=0, atol=0)
        assert torch.equal(ptr, ref_p)
    assert count.sum() > 0


def test_enqueue_writes_only_into_the_keys_class_queue():
    queue = torch.zeros(3, 2, 4)
    ptr, count = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.long)
    enqueue(queue, ptr, count, torch.ones(2, 2), torch.tensor([1, 1]))
    assert queue[0].abs().sum() == 0 and queue[2].abs().sum() == 0
    assert torch.equal(queue[1, :, :2], torch.ones(2, 2)) and queue[1, :, 2:].abs().sum() == 0
    assert ptr.tolist() == [0, 2, 0] and count.tolist() == [0, 2, 0]


def test_momentum_update_math():
    g = torch.Generator().manual_seed(0)
    key, query = nn.Linear(3, 2), nn.Linear(3, 2)
    with torch.no_grad():
        for p in [*key.parameters(), *query.parameters()]:
            nn.init.normal_(p, generator=g)
    before = [p.clone() for p in key.parameters()]
    momentum_update(key, query, 0.9)
    for pk, b, pq in zip(key.parameters(), before, query.parameters(), strict=True):
        torch.testing.assert_close(pk, 0.9 * b + 0.1 * pq)
    momentum_update(key, query, 0.0)  # m = 0 copies the query
    for pk, pq in zip(key.parameters(), query.parameters(), strict=True):
        torch.testing.assert_close(pk, pq)


def naive_dense(zq, zk, cover_q, cover_k, inst_img, t):
    """One query cell at a time, as the docstring of dense_fg_infonce says."""
    b, d, h, w = zq.shape
    zq, zk = zq.flatten(2), zk.flatten(2)
    cq, ck = cover_q.flatten(1), cover_k.flatten(1)
    occupied = torch.zeros(b, h * w, dtype=zq.dtype)
    for m, i in enumerate(inst_img.tolist()):
        occupied[i] += ck[m]
    losses = []
    for m, i in enumerate(inst_img.tolist()):
        proto = F.normalize((zk[i] * ck[m]).sum(1), dim=0)
        for c in range(h * w):
            if cq[m, c] <= 0.5:
                continue
            pos = (proto @ zq[i][:, c]) / t
            negs = [(zq[i][:, c] @ zk[i][:, j]) / t for j in range(h * w) if occupied[i, j] < 0.1]
            logits = torch.stack([pos, *negs])
            losses.append(-torch.log_softmax(logits, 0)[0])
    return torch.stack(losses).mean()


@pytest.mark.parametrize("seed", range(3))
def test_dense_term_matches_naive_per_cell_loop(seed):
    from train.moco import dense_fg_infonce

    g = torch.Generator().manual_seed(seed)
    zq, zk = _unit(3, 6, 4, 4, g=g, dim=1), _unit(3, 6, 4, 4, g=g, dim=1)
    inst_img = torch.tensor([0, 0, 1, 2])
    cover_q = (torch.rand(4, 4, 4, generator=g, dtype=torch.float64) > 0.6).double()
    cover_k = (torch.rand(4, 4, 4, generator=g, dtype=torch.float64) > 0.6).double()
    ours = dense_fg_infonce(zq, zk, cover_q, cover_k, inst_img, 0.2)
    want = naive_dense(zq, zk, cover_q, cover_k, inst_img, 0.2)
    torch.testing.assert_close(ours.double(), want, rtol=1e-5, atol=1e-6)
