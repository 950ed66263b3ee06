"""The inner loop (adapt_head), per-class query statistics and the confidence interval."""

import math

import pytest
import torch
import torch.nn.functional as F

from mtl.models.head import adapt_head, ci95, logits, query_stats


def _task(B=3, way=5, shot=2, q=4, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    protos = torch.randn(B, way, D, generator=g)
    fs = protos.repeat_interleave(shot, 1) + 0.5 * torch.randn(B, way * shot, D, generator=g)
    fq = protos.repeat_interleave(q, 1) + 0.5 * torch.randn(B, way * q, D, generator=g)
    ys = torch.arange(way).repeat_interleave(shot).expand(B, -1)
    yq = torch.arange(way).repeat_interleave(q).expand(B, -1)
    w0 = (0.1 * torch.randn(way, D, generator=g)).requires_grad_()
    b0 = torch.zeros(way, requires_grad=True)
    return fs, ys, fq, yq, w0, b0


def _reference(fs, ys, w0, b0, steps, lr, create_graph):
    """The straightforward path: autograd on the mean support CE, one task at a time."""
    ws, bs = [], []
    for t in range(fs.shape[0]):
        w, b = w0, b0
        for _ in range(steps):
            loss = F.cross_entropy(fs[t] @ w.T + b, ys[t])
            gw, gb = torch.autograd.grad(loss, (w, b), create_graph=create_graph)
            if not create_graph:
                gw, gb = gw.detach(), gb.detach()
            w, b = w - lr * gw, b - lr * gb
        ws.append(w)
        bs.append(b)
    return torch.stack(ws), torch.stack(bs)


def test_inner_loop_lowers_the_support_loss():
    fs, ys, _, _, w0, b0 = _task()
    before = F.cross_entropy(logits(fs, w0.expand(3, -1, -1), b0.expand(3, -1)).flatten(0, 1), ys.flatten())
    w, b = adapt_head(fs, ys, w0, b0, steps=20, lr=0.5, first_order=True)
    after = F.cross_entropy(logits(fs, w, b).flatten(0, 1), ys.flatten())
    assert after < 0.5 * before


@pytest.mark.parametrize("first_order", [True, False])
def test_closed_form_matches_autograd_reference(first_order):
    fs, ys, fq, yq, w0, b0 = _task()
    fs = fs.clone().requires_grad_()
    w, b = adapt_head(fs, ys, w0, b0, steps=7, lr=0.3, first_order=first_order)
    wr, br = _reference(fs if not first_order else fs.detach(), ys, w0, b0, 7, 0.3, create_graph=not first_order)
    assert torch.allclose(w, wr, atol=1e-5) and torch.allclose(b, br, atol=1e-5)
    # gradients of a query loss w.r.t. the initialisation and the support features
    def outer(w, b):
        return F.cross_entropy(logits(fq, w, b).flatten(0, 1), yq.flatten())
    g = torch.autograd.grad(outer(w, b), (w0, b0, fs), allow_unused=True)
    gr = torch.autograd.grad(outer(wr, br), (w0, b0, fs), allow_unused=True)
    for x, y in zip(g, gr):
        if y is None:
            assert x is None or not x.abs().sum() > 0
        else:
            assert torch.allclose(x, y, atol=1e-5)


def test_first_order_passes_the_query_gradient_straight_to_the_init():
    fs, ys, fq, yq, w0, b0 = _task()
    w, b = adapt_head(fs, ys, w0, b0, steps=5, lr=0.3, first_order=True)
    loss = F.cross_entropy(logits(fq, w, b).flatten(0, 1), yq.flatten())
    gw0, = torch.autograd.grad(loss, w0)
    wd = w.detach().requires_grad_()
    gw, = torch.autograd.grad(F.cross_entropy(logits(fq, wd, b.detach()).flatten(0, 1), yq.flatten()), wd)
    assert torch.allclose(gw0, gw.sum(0), atol=1e-6)


def test_second_order_reaches_the_support_features_and_differs_from_first_order():
    fs, ys, fq, yq, w0, b0 = _task()
    grads = {}
    for fo in (True, False):
        f = fs.clone().requires_grad_()
        w, b = adapt_head(f, ys, w0, b0, steps=5, lr=0.3, first_order=fo)
        loss = F.cross_entropy(logits(fq, w, b).flatten(0, 1), yq.flatten())
        gf, gw0 = torch.autograd.grad(loss, (f, w0), allow_unused=True)
        grads[fo] = (gf, gw0)
    assert grads[True][0] is None  # first order: the support features get nothing
    assert grads[False][0].abs().sum() > 0
    assert not torch.allclose(grads[True][1], grads[False][1], atol=1e-6)


def test_batched_tasks_are_independent():
    fs, ys, _, _, w0, b0 = _task(B=4)
    w, b = adapt_head(fs, ys, w0, b0, steps=6, lr=0.4, first_order=True)
    w1, b1 = adapt_head(fs[2:3], ys[2:3], w0, b0, steps=6, lr=0.4, first_order=True)
    assert torch.allclose(w[2:3], w1, atol=1e-6) and torch.allclose(b[2:3], b1, atol=1e-6)


@pytest.mark.parametrize("flip", [False, True])
def test_one_step_is_the_tf_codes_step(flip):
    """The TF code's support loss is CE per image / shot, summed by tf.gradients (tensorflow/utils/misc.py
    xent), over the N*K support images and, at test, their N*K flipped copies; its step is 0.001. Ours,
    the summed loss divided by the N*K original images at inner lr 0.001 * N, gives the same head."""
    N, K, D, tf_lr = 5, 3, 8, 0.001
    g = torch.Generator().manual_seed(0)
    f = torch.randn(N * K * (2 if flip else 1), D, generator=g, dtype=torch.float64)  # copies: features of their own
    y = torch.arange(N).repeat_interleave(K).repeat(2 if flip else 1)
    w0, b0 = torch.randn(N, D, generator=g, dtype=torch.float64), torch.randn(N, generator=g, dtype=torch.float64)

    # TF by hand: logits x w + b, softmax cross-entropy against one-hot labels, / shot, summed
    w, b = w0.clone().requires_grad_(), b0.clone().requires_grad_()
    ce = -(F.one_hot(y, N) * torch.log_softmax(f @ w.T + b, dim=1)).sum(1)
    gw, gb = torch.autograd.grad((ce / K).sum(), (w, b))
    w_tf, b_tf = w0 - tf_lr * gw, b0 - tf_lr * gb

    w1, b1 = adapt_head(f[None], y[None], w0, b0, steps=1, lr=tf_lr * N, first_order=True, originals=N * K)
    torch.testing.assert_close(w1[0], w_tf, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(b1[0], b_tf, rtol=1e-12, atol=1e-12)
    # the mean over all support images: the TF step without copies, half of it with them
    wm, _ = adapt_head(f[None], y[None], w0, b0, steps=1, lr=tf_lr * N, first_order=True)
    torch.testing.assert_close(wm[0] - w0, (w_tf - w0) / (2 if flip else 1), rtol=1e-12, atol=1e-12)


def test_query_stats_per_class():
    # one task, 3 classes, 2 queries each; predictions: class 0 right twice, class 1 once, class 2 never
    labels = torch.tensor([[0, 0, 1, 1, 2, 2]])
    pred = torch.tensor([[0, 0, 1, 0, 1, 0]])
    lg = F.one_hot(pred, 3).float() * 5
    st = query_stats(lg, labels, 3)
    assert torch.allclose(st["class_acc"], torch.tensor([[1.0, 0.5, 0.0]]))
    assert st["acc"].item() == pytest.approx(0.5)
    assert st["class_loss"][0, 2] > st["class_loss"][0, 1] > st["class_loss"][0, 0]
    assert st["loss"].item() == pytest.approx(F.cross_entropy(lg[0], labels[0]).item())


def test_ci95_formula():
    accs = torch.tensor([0.6, 0.8, 0.7, 0.9, 0.5])
    mean = sum(accs.tolist()) / 5
    pop_std = math.sqrt(sum((a - mean) ** 2 for a in accs.tolist()) / 5)
    assert ci95(accs) == pytest.approx(1.96 * pop_std / math.sqrt(5))
    assert ci95(torch.full((600,), 0.4)) == 0.0
