"""The measured figures and their backbone-only floors.

Each figure drives the library's own objects (Pretrainer, MetaTrainer, evaluate) and is
timed in alternating blocks with its floor: the same network doing only its forward+backward
(for evaluation, its no-grad forward) at the same batch, precision and memory format, on
device-resident float input. A figure is a dict with ``value`` and ``floor`` in one unit and
their ``ratio``:

- throughput figures (pretraining, concurrent trials): ``ratio = value / floor``, higher is
  better, 1.0 = as fast as the floor;
- time figures (meta-training step, 600 test episodes): ``ratio = our time / floor time``,
  lower is better, 1.0 = no cost beyond the backbone pass.

Peak CUDA memory of a figure is read over one call after a first, warm-up call (so cuDNN's
autotuning workspaces are not counted) and before the floor's tensors exist. The caller gives
cached device memory back between figures.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from mtl.bench.timing import PeakMemory, Plan, interleaved
from mtl.bench.workload import QUERY, WAY, Workload, shape
from mtl.episodes import episode_bank
from mtl.models.backbones import create_backbone
from mtl.models.scale_shift import build_meta_model, set_bn_mode
from mtl.phases.evaluate import cpu_chunk
from mtl.pretraining import pretrainer
from mtl.trial import meta_trainer

THROUGHPUT = "ours / floor throughput (higher is better; 1.0 = backbone speed)"
TIME = "our time / floor time (lower is better; 1.0 = no cost beyond the backbone)"
Step = Callable[[], None]


def _figure(what: str, value: float, floor: float, unit: str, kind: str, ratio: float,
            **extra: Any) -> dict[str, Any]:
    """``value`` and ``floor`` share ``unit``; ``ratio`` follows ``kind`` (see the module docstring)."""
    return {"what": what, "value": value, "floor": floor, "unit": unit, "ratio": ratio,
            "ratio_kind": kind, "ratio_def": THROUGHPUT if kind == "throughput" else TIME, **extra}


def _inputs(w: Workload, n: int) -> torch.Tensor:
    """``n`` normalised-looking float images on the device, in the configured memory format."""
    g = torch.Generator(device=w.env.device).manual_seed(0)
    s = w.cfg.data.image_size
    return torch.randn(n, 3, s, s, device=w.env.device, generator=g).contiguous(memory_format=w.memory_format)


def _mem(pm: PeakMemory) -> dict[str, Any]:
    return {} if pm.allocated_gb is None else {"peak_alloc_gb": pm.allocated_gb, "peak_reserved_gb": pm.reserved_gb}


def _steady_peak(fn: Step, w: Workload, then: Step | None = None) -> PeakMemory:
    """Call ``fn`` once (warm-up), then read the peak memory of one call of ``then`` (default ``fn``)."""
    fn()
    with PeakMemory(w.env.device) as pm:
        (then or fn)()
    return pm


# Floors


def pretrain_floor(w: Workload) -> Step:
    """Plain backbone + linear head over the train classes: forward + backward at the pretrain batch."""
    env, bs = w.env, w.cfg.pretrain.batch_size
    torch.manual_seed(0)
    model = create_backbone(w.cfg.model.backbone, dropout=w.cfg.pretrain.dropout)
    model = model.to(env.device, memory_format=w.memory_format).train()
    head = nn.Linear(model.out_dim, w.train.num_classes).to(env.device)
    params = [*model.parameters(), *head.parameters()]
    x = _inputs(w, bs)
    y = torch.randint(w.train.num_classes, (bs,), device=env.device)

    def step() -> None:
        for p in params:
            p.grad = None
        with env.autocast():
            out = head(model(x)).float()
        F.cross_entropy(out, y).backward()

    return step


def episode_floor(w: Workload, images: int) -> Step:
    """The scale-shift backbone alone: forward + backward (to scales and shifts) on ``images``."""
    env = w.env
    model = build_meta_model(w.cfg.model, env, w.state)
    set_bn_mode(model, w.cfg.model.bn_mode, training=True)
    params = [p for p in model.parameters() if p.requires_grad]
    head = torch.randn(WAY, model.out_dim, device=env.device) * 0.01
    x = _inputs(w, images)
    y = torch.arange(WAY, device=env.device).repeat_interleave(images // WAY + 1)[:images]

    def step() -> None:
        for p in params:
            p.grad = None
        with env.autocast():
            f = model(x).float()
        F.cross_entropy(f @ head.T, y).backward()

    return step


def eval_floor(w: Workload, images: int) -> Step:
    """The scale-shift backbone's no-grad forward in evaluation mode on one evaluation chunk of
    ``images`` (on a CPU in pieces of ``cpu_chunk``, as the Embedder does)."""
    env = w.env
    model = build_meta_model(w.cfg.model, env, w.state)
    set_bn_mode(model, w.cfg.model.bn_mode, training=False)
    x = _inputs(w, images)
    pieces = [x] if env.cuda else list(x.split(cpu_chunk(x)))

    def forward() -> None:
        with torch.no_grad(), env.autocast():
            for p in pieces:
                model(p).float()

    return forward


# Figures


def pretrain(w: Workload, plan: Plan) -> dict[str, Any]:
    """Pretraining images/s through ``Pretrainer.train_epoch``: uint8 rows gathered by index,
    normalised, randomly resized-cropped and flipped on the device, forward, backward, SGD step.
    One call = one epoch of ``pretrain.steps`` batches over a split sized for it."""
    tr = pretrainer(w.cfg, w.env, w.data)
    bs = min(w.cfg.pretrain.batch_size, w.train.labels.numel())
    images = (w.train.labels.numel() // bs) * bs
    pm = _steady_peak(tr.train_epoch, w)
    t = interleaved(w.env.device, {"ours": (tr.train_epoch, Plan(0, 1, plan.repeats)),
                                   "floor": (pretrain_floor(w), plan)})
    ours, floor = images / t["ours"]["s"], bs / t["floor"]["s"]
    return _figure(f"pretraining, batch {bs}", ours, floor, "images/s", "throughput", ratio=ours / floor,
                   batch=bs, images_per_epoch=images, augment=w.cfg.pretrain.augment, timing=t["ours"],
                   floor_ms=1e3 * t["floor"]["s"], floor_timing=t["floor"], floor_def="plain backbone + "
                   f"linear {w.train.num_classes}-way head, forward+backward", **_mem(pm))


def meta_train(w: Workload, shot: int, steps: int, meta_batch: int, plan: Plan) -> dict[str, Any]:
    """Episodes/s of ``MetaTrainer.outer_step`` on freshly sampled episodes."""
    cfg = shape(w.cfg, shot, steps, meta_batch)
    tr = meta_trainer(cfg, w.env, w.data, w.state)

    def step() -> None:
        tr.outer_step(tr.sample())

    pm = _steady_peak(step, w)
    images = meta_batch * WAY * (shot + QUERY)
    warm = Plan(max(plan.warmup - 2, 0), plan.iters, plan.repeats, plan.seconds)  # two calls ran already
    t = interleaved(w.env.device, {"ours": (step, warm), "floor": (episode_floor(w, images), plan)})
    order = "first" if cfg.meta.first_order else "second"
    ms, floor_ms = 1e3 * t["ours"]["s"], 1e3 * t["floor"]["s"]
    return _figure(f"meta-train 5-way {shot}-shot, {steps} steps, meta-batch {meta_batch} ({order} order)",
                   meta_batch / t["ours"]["s"], meta_batch / t["floor"]["s"], "episodes/s", "time",
                   ratio=ms / floor_ms, ms=ms, floor_ms=floor_ms, images=images, shot=shot, inner_steps=steps,
                   meta_batch=meta_batch, meta_gradient=f"{order} order", timing=t["ours"],
                   floor_timing=t["floor"], floor_def=f"scale-shift backbone forward+backward on {images} images",
                   **_mem(pm))


def evaluate(w: Workload, shot: int, episodes: int, plan: Plan, target_episodes: int = 600) -> dict[str, Any]:
    """Seconds for ``MetaTrainer.evaluate`` on a bank of ``episodes`` episodes at 100 inner steps,
    scaled to ``target_episodes`` when fewer were run (``eval.episodes``, e.g. quick)."""
    cfg = shape(w.cfg, shot, w.cfg.meta.inner_steps, w.cfg.meta.meta_batch)
    per_ep = WAY * (shot + QUERY)
    chunk = cfg.eval.batch_episodes * per_ep
    tr = meta_trainer(cfg, w.env, w.data, w.state)
    bank = episode_bank(w.val.offsets, WAY, shot, QUERY, episodes, cfg.eval.seed)

    def run() -> None:
        tr.evaluate(w.val, bank)

    # warm-up over the whole bank (every chunk shape, the last partial one included); memory of one chunk
    pm = _steady_peak(run, w, lambda: tr.evaluate(w.val, bank[: cfg.eval.batch_episodes]))
    t = interleaved(w.env.device, {"ours": (run, Plan(0, 1, plan.repeats)), "floor": (eval_floor(w, chunk), plan)})
    scale = target_episodes / episodes
    ours, floor = t["ours"]["s"] * scale, t["floor"]["s"] * episodes * per_ep / chunk * scale
    return _figure(f"{target_episodes} test episodes, 5-way {shot}-shot, {cfg.eval.inner_steps} inner steps",
                   ours, floor, "s", "time", ratio=ours / floor, episodes_run=episodes,
                   extrapolated=episodes != target_episodes, shot=shot, inner_steps=cfg.eval.inner_steps,
                   batch_episodes=cfg.eval.batch_episodes, timing=t["ours"], floor_chunk_ms=1e3 * t["floor"]["s"],
                   floor_timing=t["floor"], floor_def=f"scale-shift backbone no-grad forward, {chunk} images per "
                   f"chunk, scaled to the {target_episodes * per_ep} images", **_mem(pm))


def trial_memory(w: Workload, shot: int, steps: int, meta_batch: int, plan: Plan) -> dict[str, Any]:
    """Peak CUDA memory of one trial's work in this process: outer steps at the trial's shape and
    one validation chunk (``eval.batch_episodes`` episodes at 100 inner steps)."""
    cfg = shape(w.cfg, shot, steps, meta_batch)
    tr = meta_trainer(cfg, w.env, w.data, w.state)
    bank = episode_bank(w.val.offsets, WAY, shot, QUERY, cfg.eval.batch_episodes, cfg.eval.seed)
    with PeakMemory(w.env.device) as pm:
        for _ in range(max(plan.warmup, 2)):
            tr.outer_step(tr.sample())
        tr.evaluate(w.val, bank)
    return {"shot": shot, "inner_steps": steps, "meta_batch": meta_batch, **_mem(pm)}
