"""Episode features and few-shot evaluation (meta-validation, test, the pretraining probe), and
the evaluation of a trained meta checkpoint (:func:`evaluate_checkpoint`).

Evaluation runs many episodes at once: the backbone embeds all support and query images
of ``batch_episodes`` episodes in one ``no_grad`` forward, then the heads of all those
episodes adapt together as batched matrix ops (:func:`mtl.models.head.adapt_head`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn

from mtl.config import Config, eval_query
from mtl.data.transforms import Normalize, hflip
from mtl.episodes import Episodes, bank_seed, episode_bank
from mtl.errors import CheckpointError
from mtl.models.head import HeadInit, adapt_head, ci95, logits, query_stats
from mtl.models.scale_shift import build_meta_model, load_meta_state, set_bn_mode
from mtl.runtime import Env

CPU_CHUNK_PIXELS = 65536  # pixels per image x images per no-grad forward on a CPU (mtl/bench measured)


def cpu_chunk(x: torch.Tensor) -> int:
    """Images per no-grad CPU forward for images like ``x``: convolutions slow down several-fold
    once a batch outgrows the caches (0.2 ms per 32 px image at 32-128 images, 0.4 ms at 256)."""
    return max(8, CPU_CHUNK_PIXELS // (x.shape[-1] * x.shape[-2]))


class ImageSource(Protocol):
    images: torch.Tensor  # uint8 [N, 3, S, S]


@dataclass
class Embedder:
    """Turns episode index tensors into support and query features with a backbone."""

    model: nn.Module
    normalize: Normalize
    env: Env

    def batch_statistics(self) -> bool:
        """Whether a BN layer of the model normalises with the statistics of its batch (``train_affine``
        in training, ``batch_stats`` always): then the images of each task's support set and of its
        query set go through forwards of their own, as in both reference codes, so that no task's
        statistics mix with another's or a query set's with its support set's."""
        return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in self.model.modules())

    def images(self, source: ImageSource, rows: torch.Tensor) -> torch.Tensor:
        """Gather, move and normalise images; an index copy from the host goes through pinned
        memory without blocking, so the host never waits for the GPU here."""
        rows = rows.flatten()
        dev = source.images.device
        if dev.type == "cuda" and rows.device.type == "cpu":
            rows = rows.pin_memory().to(dev, non_blocking=True)
        imgs = source.images.index_select(0, rows.to(dev))
        return self.normalize(imgs.to(self.env.device, non_blocking=True))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        chunk = cpu_chunk(x)
        if not (self.env.cuda or torch.is_grad_enabled() or self.batch_statistics()) and x.shape[0] > chunk:
            return torch.cat([self.features(c) for c in x.split(chunk)])
        with self.env.autocast():
            return self.model(x).float()

    def __call__(self, source: ImageSource, eps: Episodes, flip_support: bool = False):
        """Features ``support [B, n_s, D]``, ``query [B, n_q, D]``; with ``flip_support`` the
        support set is doubled by horizontal-flip copies (labels: see :func:`support_labels`)."""
        B = len(eps)
        rows = torch.cat([eps.support, eps.query], dim=1)  # [B, n_s + n_q]
        n_s = eps.support.shape[1]
        x = self.images(source, rows)
        if self.batch_statistics():  # statistics of each episode's support and query batch separately
            x = x.view(B, rows.shape[1], *x.shape[1:])
            f = torch.stack([torch.cat([self.features(xi[:n_s]), self.features(xi[n_s:])]) for xi in x])
            fs, fq = f[:, :n_s], f[:, n_s:]
            if flip_support:
                fs = torch.cat([fs, torch.stack([self.features(hflip(xi[:n_s])) for xi in x])], dim=1)
            return fs, fq
        if flip_support:
            xs = x.view(B, rows.shape[1], *x.shape[1:])[:, :n_s].flatten(0, 1)
            x = torch.cat([x, hflip(xs)])
        f = self.features(x)
        fq = f[: B * rows.shape[1]].view(B, rows.shape[1], -1)
        fs = fq[:, :n_s]
        if flip_support:
            fs = torch.cat([fs, f[B * rows.shape[1]:].view(B, n_s, -1)], dim=1)
        return fs, fq[:, n_s:]


def support_labels(eps: Episodes, flip_support: bool, device: torch.device) -> torch.Tensor:
    lab = eps.labels(eps.shot, device)
    return torch.cat([lab, lab], dim=1) if flip_support else lab


def evaluate(
    embed: Embedder,
    source: ImageSource,
    episodes: Episodes,
    w0: torch.Tensor,
    b0: torch.Tensor,
    *,
    steps: int,
    lr: float,
    batch_episodes: int,
    flip_support: bool = False,
) -> dict[str, Any]:
    """Mean query accuracy over ``episodes`` with its 95% CI, and the per-episode accuracies.

    The caller puts the model in evaluation mode. ``w0, b0`` initialise every episode's head. With
    ``flip_support`` the head adapts on the support loss summed over the images and their flipped
    copies and divided by the number of original images, as the TF code (``lr`` applies to that).
    """
    accs = []
    dev = embed.env.device
    w0, b0 = w0.detach().to(dev, torch.float32), b0.detach().to(dev, torch.float32)
    with torch.no_grad():
        for i in range(0, len(episodes), batch_episodes):
            eps = episodes[i : i + batch_episodes]
            fs, fq = embed(source, eps, flip_support)
            w, b = adapt_head(fs, support_labels(eps, flip_support, dev), w0, b0, steps=steps, lr=lr,
                              first_order=True, originals=eps.support.shape[1])  # flipped copies add steps
            stats = query_stats(logits(fq, w, b), eps.labels(eps.n_query, dev), eps.way)
            accs.append(stats["acc"])
    acc = torch.cat(accs).cpu()
    return {"acc": acc.mean().item(), "ci95": ci95(acc), "accs": acc.tolist()}


class Replay:
    """An Embedder whose batches of features are kept in ``store`` on the first pass over a bank
    of episodes and read back on the next ones (evaluations with the same feature extractor)."""

    def __init__(self, embed: Embedder, store: list) -> None:
        self.embed, self.env, self.store, self.calls = embed, embed.env, store, 0

    def __call__(self, source, eps, flip_support: bool = False):
        if self.calls == len(self.store):
            self.store.append(self.embed(source, eps, flip_support))
        self.calls += 1
        return self.store[self.calls - 1]


def meta_model(ck: dict[str, Any], cfg: Config, env: Env) -> tuple[Embedder, HeadInit]:
    """A stand-alone meta checkpoint's best state, ready to evaluate: the embedder (scale-shifted
    backbone in evaluation mode, the trained normalisation) and the meta-learned head initialisation."""
    if ck.get("backbone") is None:
        raise CheckpointError("the checkpoint holds no backbone weights; complete it from its pretraining entry")
    model = build_meta_model(cfg.model, env, ck["backbone"])
    head = HeadInit(cfg.meta.way, model.out_dim, init="zeros").to(env.device)  # loaded below; draws no RNG
    state = ck["best_state"] or ck["current"]
    try:  # a hand-edited config (meta.way 3 on a 5-way head) or state: one line, not a traceback
        load_meta_state(model, state["model"])
        head.load_state_dict(state["head"])
    except (KeyError, TypeError, RuntimeError) as e:
        why = " ".join(line.strip() for line in str(e).splitlines()[:2])[:300]
        raise CheckpointError(f"its weights do not fit the model its config describes ({type(e).__name__}: "
                              f"{why}); its config's model.* and meta.way must be those it was trained with: use "
                              "the checkpoint as its run wrote it") from None
    set_bn_mode(model, cfg.model.bn_mode, training=False)
    embed = Embedder(model, Normalize(cfg.data.normalization, env.device, env.channels_last), env)
    return embed, head


def evaluate_checkpoint(ck: dict[str, Any], cfg: Config, env: Env, split, episodes: Episodes | None = None,
                        features: list | None = None) -> dict[str, Any]:
    """Few-shot accuracy (mean, 95% CI, per episode) of a stand-alone meta checkpoint's best state on
    ``split``: on ``episodes``, by default ``cfg.eval.episodes`` episodes of the test bank of
    ``cfg.eval.seed`` (:func:`~mtl.episodes.bank_seed`).

    ``features``: a list shared by the evaluations of one feature extractor (the same backbone,
    learnt scale and shift and BN mode) on the same episodes: the first fills it, the others
    adapt their heads on its features without running the backbone again."""
    embed, head = meta_model(ck, cfg, env)
    if features is not None:
        embed = Replay(embed, features)
    e, m = cfg.eval, cfg.meta
    if episodes is None:
        episodes = episode_bank(split.offsets, m.way, m.shot, eval_query(m, e), e.episodes, bank_seed(e.seed, "test"))
    return evaluate(embed, split, episodes, head.weight, head.bias, steps=e.inner_steps, lr=m.inner_lr,
                    batch_episodes=e.batch_episodes, flip_support=e.protocol == "paper")
