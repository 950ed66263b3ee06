"""The fast paths give the straightforward path's results, within float tolerance.

Each test writes the plain version out by hand (one episode at a time, separate support and
query forwards, ``torch.autograd`` for every inner step) and compares it with the library's
batched, closed-form, one-forward code: evaluation, embedding, the meta-gradient of an outer
step (first and second order), channels_last, and bf16 autocast.
"""

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from mtl.bench.workload import calibrated_state
from mtl.configs import load_config
from mtl.data import load_split
from mtl.data.transforms import Normalize, hflip
from mtl.episodes import episode_bank
from mtl.models.backbones import create_backbone
from mtl.models.head import ci95
from mtl.models.scale_shift import bn_affine_parameters, build_meta_model, set_bn_mode, ss_parameters, to_scale_shift
from mtl.phases.evaluate import Embedder, cpu_chunk, evaluate
from mtl.pretraining import pretrainer
from mtl.runtime import make_env
from mtl.trial import meta_trainer

OVERRIDES = [
    "data.dataset=synthetic", "data.image_size=32", "data.normalization=pt",
    "data.synthetic.train_classes=10", "data.synthetic.val_classes=6", "data.synthetic.test_classes=6",
    "data.synthetic.images_per_class=25", "model.backbone=tiny", "runtime.device=cpu", "runtime.progress=false",
    "meta.way=5", "meta.shot=1", "meta.query=15", "meta.meta_batch=2", "meta.inner_steps=4", "meta.inner_lr=0.1",
    "eval.batch_episodes=8", "eval.inner_steps=10", "hard_tasks.ratio=0", "pretrain.head=linear",
]


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Small forwards on a shared 2-core machine run far steadier on one thread (no OpenMP
    barrier waits on a busy core); results do not depend on it."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def setup():
    cfg = load_config(None, OVERRIDES)
    env = make_env(cfg.runtime)
    train = load_split(cfg.data, "train", progress=False)
    val = load_split(cfg.data, "val", progress=False)
    return cfg, env, train, val, calibrated_state(cfg, env, train)


def _labels(way, per_class):
    return torch.arange(way).repeat_interleave(per_class)


def _plain_adapt(fs, ys, w0, b0, steps, lr, create_graph, originals=None):
    """Inner loop on one task with autograd and F.cross_entropy: the loss summed over the support
    images and divided by ``originals``, the images before flipped copies (default: all, the mean)."""
    w, b = w0, b0
    for _ in range(steps):
        lg = fs @ w.T + b
        loss = F.cross_entropy(lg, ys) if originals is None else F.cross_entropy(lg, ys, reduction="sum") / originals
        gw, gb = torch.autograd.grad(loss, (w, b), create_graph=create_graph)
        w, b = w - lr * gw, b - lr * gb
    return w, b


# ----------------------------------------------------------------------------- (a) evaluation


@pytest.mark.parametrize("shot,flip", [(1, False), (5, False), (1, True)])
def test_batched_evaluation_equals_a_per_episode_loop(setup, shot, flip):
    cfg, env, _, val, state = setup
    model = build_meta_model(cfg.model, env, state)
    set_bn_mode(model, "frozen", training=False)
    norm = Normalize(cfg.data.normalization, env.device, env.channels_last)
    bank = episode_bank(val.offsets, 5, shot, 15, 20, seed=3)  # chunks of 8, 8, 4 episodes
    size = cfg.data.image_size
    assert 8 * (bank.support.shape[1] + bank.query.shape[1]) > cpu_chunk(torch.empty(1, 3, size, size))  # chunked
    g = torch.Generator().manual_seed(0)
    w0, b0 = 0.1 * torch.randn(5, model.out_dim, generator=g), 0.1 * torch.randn(5, generator=g)
    steps, lr = 10, 0.1
    got = evaluate(Embedder(model, norm, env), val, bank, w0, b0, steps=steps, lr=lr, batch_episodes=8,
                   flip_support=flip)["accs"]

    ys, yq = _labels(5, shot), _labels(5, 15)
    for i in range(len(bank)):
        xs, xq = norm(val.images[bank.support[i]]), norm(val.images[bank.query[i]])
        with torch.no_grad():
            fs, fq = model(xs), model(xq)
            if flip:
                fs = torch.cat([fs, model(hflip(xs))])
        lab = torch.cat([ys, ys]) if flip else ys
        with torch.enable_grad():
            w, b = _plain_adapt(fs, lab, w0.clone().requires_grad_(), b0.clone().requires_grad_(), steps, lr, False,
                                originals=len(ys) if flip else None)  # the TF code's summed loss / the originals
        lg = (fq @ w.T + b).detach()
        ref = (lg.argmax(1) == yq).float().mean().item()
        if got[i] != pytest.approx(ref, abs=1e-6):
            # only a near-tie may flip a prediction under float reordering
            top2 = lg.topk(2, dim=1).values
            assert (top2[:, 0] - top2[:, 1]).min() < 1e-4, (i, got[i], ref)


# ----------------------------------------------------------------------------- (b) one forward


def test_support_and_query_in_one_forward_equal_two_forwards(setup):
    cfg, env, train, _, state = setup
    t = meta_trainer(cfg, env, {"train": train, "val": train}, state)  # BN frozen, training mode, grad enabled
    eps = t.sample()
    fs, fq = t.embed(train, eps)
    for i in range(len(eps)):
        ref_s = t.model(t.normalize(train.images[eps.support[i]]))
        ref_q = t.model(t.normalize(train.images[eps.query[i]]))
        torch.testing.assert_close(fs[i], ref_s, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fq[i], ref_q, rtol=1e-5, atol=1e-5)


def test_transductive_embedding_uses_each_roles_own_batch_statistics(setup):
    cfg, env, train, _, state = setup
    t = meta_trainer(cfg.with_overrides(["model.bn_mode=batch_stats"]), env, {"train": train, "val": train}, state)
    eps = t.sample()
    fs, fq = t.embed(train, eps)
    for i in range(len(eps)):
        torch.testing.assert_close(fs[i], t.model(t.normalize(train.images[eps.support[i]])), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fq[i], t.model(t.normalize(train.images[eps.query[i]])), rtol=1e-5, atol=1e-5)


def _bn_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


def test_train_affine_embedding_equals_two_forwards_per_task(setup):
    """The official PyTorch code runs each task's support set and its query set through forwards
    of their own in train mode: each normalised by its own statistics, the running ones updated
    once per forward."""
    cfg, env, train, _, state = setup
    t = meta_trainer(cfg.with_overrides(["model.bn_mode=train_affine"]), env, {"train": train, "val": train}, state)
    ref = copy.deepcopy(t.model)
    eps = t.sample()
    fs, fq = t.embed(train, eps)
    for i in range(len(eps)):
        torch.testing.assert_close(fs[i], ref(t.normalize(train.images[eps.support[i]])), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(fq[i], ref(t.normalize(train.images[eps.query[i]])), rtol=1e-5, atol=1e-5)
    got, want = _bn_state(t.model), _bn_state(ref)
    assert got.keys() == want.keys() and all(torch.allclose(got[k], want[k], atol=1e-6) for k in got)
    pooled = copy.deepcopy(ref)(t.normalize(train.images[torch.cat([eps.support, eps.query], 1).flatten()]))
    assert not torch.allclose(pooled[: fs.shape[1]], fs[0], atol=1e-3)  # one pooled forward would differ
    set_bn_mode(t.model, "train_affine", training=False)  # at evaluation: running statistics, one forward
    assert not t.embed.batch_statistics()


# ----------------------------------------------------------------------------- (c) meta-gradient


def _reference_grads(model, head, norm, images, eps, steps, lr, second_order, bn_affine=False):
    """One outer step written plainly: per task, two forwards, autograd inner loop, mean query CE."""
    ys, yq = _labels(eps.way, eps.shot), _labels(eps.way, eps.n_query)
    losses = []
    for i in range(len(eps)):
        fs, fq = model(norm(images[eps.support[i]])), model(norm(images[eps.query[i]]))
        w, b = _plain_adapt(fs, ys, head.weight, head.bias, steps, lr, create_graph=second_order)
        losses.append(F.cross_entropy(fq @ w.T + b, yq))
    params = [*ss_parameters(model), *(bn_affine_parameters(model) if bn_affine else []), head.weight, head.bias]
    return torch.autograd.grad(torch.stack(losses).mean(), params)


@pytest.mark.parametrize("first_order,bn_mode", [(True, "frozen"), (False, "frozen"), (True, "train_affine")])
def test_outer_step_gradient_equals_a_plain_reference(setup, first_order, bn_mode):
    cfg, env, train, _, state = setup
    cfg = cfg.with_overrides({"meta.first_order": first_order, "model.bn_mode": bn_mode})
    t = meta_trainer(cfg, env, {"train": train, "val": train}, state)
    eps = t.sample()
    ref_model, ref_head = copy.deepcopy(t.model), copy.deepcopy(t.head)
    t.outer_step(eps)  # leaves the gradients of the step in .grad
    affine = list(bn_affine_parameters(t.model)) if bn_mode == "train_affine" else []
    got = [p.grad for p in [*ss_parameters(t.model), *affine, t.head.weight, t.head.bias]]
    args = (ref_model, ref_head, t.normalize, train.images, eps, cfg.meta.inner_steps, cfg.meta.inner_lr)
    ref = _reference_grads(*args, second_order=not first_order, bn_affine=bool(affine))
    assert len(got) == len(ref) and all(g is not None for g in got)
    # under batch statistics a shift before BN is cancelled: its exact gradient is 0 and both
    # sides hold rounding noise, so the tolerance there is set by the step's largest gradient
    floor = 1e-6 if bn_mode == "frozen" else 1e-5 * max(r.abs().max().item() for r in ref)
    for g, r in zip(got, ref):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=floor + 1e-4 * r.abs().max().item())
    if not first_order:  # the comparison can tell the orders apart
        other = _reference_grads(*args, second_order=False)
        assert any((g - o).abs().max() > 1e-3 * o.abs().max() for g, o in zip(got, other))


# ----------------------------------------------------------------------------- (d) channels_last


@pytest.mark.parametrize("name", ["tiny", "resnet12", "resnet25"])
def test_channels_last_features_equal_contiguous(name):
    torch.manual_seed(0)
    net = create_backbone(name).eval()
    x = torch.randn(4, 3, 32, 32)
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    with torch.no_grad():
        ref, got = net(x), cl(x.contiguous(memory_format=torch.channels_last))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def test_channels_last_scale_shift_gradients_equal_contiguous():
    torch.manual_seed(0)
    net = to_scale_shift(create_backbone("tiny"))
    set_bn_mode(net, "frozen", training=True)
    cl = copy.deepcopy(net).to(memory_format=torch.channels_last)
    x = torch.randn(8, 3, 32, 32)
    grads = []
    for m, xi in ((net, x), (cl, x.contiguous(memory_format=torch.channels_last))):
        loss = m(xi).square().mean()
        grads.append(torch.autograd.grad(loss, list(ss_parameters(m))))
    for g, r in zip(*reversed(grads)):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-5 + 1e-4 * r.abs().max().item())


# ----------------------------------------------------------------------------- (e) bf16


@pytest.mark.slow
def test_bf16_evaluation_accuracy_within_the_fp32_confidence_interval(setup):

    cfg, env, train, val, _ = setup
    cfg = cfg.with_overrides(["pretrain.epochs=8", "pretrain.batch_size=32", "pretrain.lr=0.05",
                              "pretrain.augment=false", "pretrain.val_episodes=5"])
    p = pretrainer(cfg, env, {"train": train, "val": val})
    for _ in range(cfg.pretrain.epochs):
        p.train_epoch()
    model = p.model.eval()
    norm = Normalize(cfg.data.normalization, env.device, env.channels_last)
    # 5 queries (not 15): bf16 convolutions on a CPU take 12x fp32's time; the check is paired, so the
    # accuracies stay comparable on 40 episodes (measured: both 30.50%, CI 2.1 points)
    bank = episode_bank(val.offsets, 5, 1, 5, 40, seed=5)
    zeros = torch.zeros(5, model.out_dim)
    res = {}
    for prec in ("fp32", "bf16"):
        e = dataclasses.replace(env, precision=prec)
        res[prec] = evaluate(Embedder(model, norm, e), val, bank, zeros, zeros[:, 0], steps=50, lr=0.1,
                             batch_episodes=50)
    fp32, bf16 = res["fp32"], res["bf16"]
    assert fp32["acc"] > 0.27  # trained: far above chance (0.2), so the comparison means something
    assert abs(bf16["acc"] - fp32["acc"]) <= fp32["ci95"], (fp32["acc"], fp32["ci95"], bf16["acc"])
    assert fp32["ci95"] == pytest.approx(ci95(torch.tensor(fp32["accs"])))
