"""Backbones and the scale-shift conversion."""

import pytest
import torch
from torch import nn

from mtl.errors import CheckpointError, ConfigError
from mtl.models.backbones import BACKBONES, create_backbone
from mtl.models.scale_shift import (
    SSConv2d,
    bn_affine_parameters,
    load_backbone_state,
    load_meta_state,
    meta_state,
    set_bn_mode,
    ss_parameters,
    to_scale_shift,
)

SIZES = {"tiny": 32, "resnet12": 84, "resnet25": 80}
DIMS = {"tiny": 64, "resnet12": 512, "resnet25": 640}


@pytest.mark.parametrize("name", BACKBONES.names())
def test_backbone_shapes_and_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    net = create_backbone(name)
    x = torch.randn(2, 3, SIZES[name], SIZES[name])
    f = net(x)
    assert f.shape == (2, DIMS[name]) == (2, net.out_dim)
    f.square().sum().backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing


def test_unknown_backbone_lists_choices():
    with pytest.raises(ConfigError, match="resnet12.*resnet25.*tiny"):
        create_backbone("resnet13")


def test_resnet12_matches_the_paper_layout():
    net = create_backbone("resnet12")
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    k3 = [c for c in convs if c.kernel_size == (3, 3)]
    assert len(k3) == 12 and all(c.bias is not None for c in k3)
    assert [c.out_channels for c in k3[::3]] == [64, 128, 256, 512]
    # 3x3 scales of ResNet-12: 868,544 (mtl-algorithm.md §3.1)
    assert sum(c.in_channels * c.out_channels for c in k3) == 868_544


@pytest.mark.parametrize("name", ["tiny", "resnet25"])
@pytest.mark.parametrize("granularity", ["kernel", "channel"])
def test_scale_shift_is_the_identity_at_conversion(name, granularity):
    torch.manual_seed(0)
    net = create_backbone(name)
    # give BN non-trivial statistics so that the check is not vacuous
    net.train()
    net(torch.randn(8, 3, SIZES[name], SIZES[name]) * 2 + 0.5)
    net.eval()
    x = torch.randn(4, 3, SIZES[name], SIZES[name])
    with torch.no_grad():
        ref = net(x)
        to_scale_shift(net, "all", granularity)
        out = net(x)
    assert torch.allclose(out, ref, atol=1e-5, rtol=1e-4)
    ss = [m for m in net.modules() if isinstance(m, SSConv2d)]
    assert ss and not any(isinstance(m, nn.Conv2d) for m in net.modules())
    for m in ss:
        cout, cin = m.weight.shape[:2]
        assert m.scale.shape == ((cout, cin, 1, 1) if granularity == "kernel" else (cout, 1, 1, 1))
        assert m.shift.shape == (cout,)
        assert torch.all(m.scale == 1) and torch.all(m.shift == 0)


def test_only_scale_and_shift_learn_after_conversion():
    net = to_scale_shift(create_backbone("tiny"))
    learnable = {n for n, p in net.named_parameters() if p.requires_grad}
    assert learnable and all(n.endswith((".scale", ".shift")) for n in learnable)
    assert len(list(ss_parameters(net))) == len(learnable)
    # frozen weights are buffers: no optimizer can see them
    for m in net.modules():
        if isinstance(m, SSConv2d):
            assert "weight" in dict(m.named_buffers()) and "weight" not in dict(m.named_parameters())


def test_3x3_scope_leaves_shortcuts_plain_and_frozen():
    net = to_scale_shift(create_backbone("tiny"), scope="3x3")
    plain = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert plain and all(m.kernel_size == (1, 1) and not m.weight.requires_grad for m in plain)
    assert sum(isinstance(m, SSConv2d) for m in net.modules()) == 12


def test_3x3_scope_of_resnet12_has_the_tf_codes_scale_shift_size():
    # the TF code's ResNet-12: scale-shift on its twelve 3x3 convs only (docs/algorithm.md §3.1)
    net = to_scale_shift(create_backbone("resnet12"), scope="3x3")
    ss = [m for m in net.modules() if isinstance(m, SSConv2d)]
    assert len(ss) == 12 and all(m.weight.shape[-2:] == (3, 3) for m in ss)
    assert (sum(m.scale.numel() for m in ss), sum(m.shift.numel() for m in ss)) == (868_544, 2_880)


def test_scale_and_shift_change_the_features():
    net = to_scale_shift(create_backbone("tiny")).eval()
    x = torch.randn(2, 3, 32, 32)
    ref = net(x).detach()
    first = next(m for m in net.modules() if isinstance(m, SSConv2d))
    with torch.no_grad():
        first.shift += 0.5
    assert not torch.allclose(net(x), ref)


def test_bn_modes():
    net = to_scale_shift(create_backbone("tiny"))
    bn = next(m for m in net.modules() if isinstance(m, nn.BatchNorm2d))
    set_bn_mode(net, "frozen", training=True)
    assert not bn.training and not any(p.requires_grad for p in bn_affine_parameters(net))
    set_bn_mode(net, "train_affine", training=True)
    assert bn.training and all(p.requires_grad for p in bn_affine_parameters(net))
    set_bn_mode(net, "train_affine", training=False)
    assert not bn.training
    set_bn_mode(net, "batch_stats", training=False)
    before = bn.running_mean.clone()
    net(torch.randn(4, 3, 32, 32) + 3)
    assert bn.training and torch.equal(bn.running_mean, before)  # batch statistics, no update


def test_pretrained_weights_load_strictly():
    src = create_backbone("tiny").state_dict()
    dst = create_backbone("tiny")
    load_backbone_state(dst, src, "test")
    assert all(torch.equal(dst.state_dict()[k], v) for k, v in src.items())
    bad = dict(src)
    bad.pop(next(iter(bad)))
    with pytest.raises(CheckpointError, match="do not fit"):
        load_backbone_state(create_backbone("tiny"), bad, "test")
    with pytest.raises(CheckpointError):
        load_backbone_state(create_backbone("resnet12"), src, "test")


def test_meta_state_round_trip_excludes_frozen_weights():
    a = to_scale_shift(create_backbone("tiny"))
    with torch.no_grad():
        for p in ss_parameters(a):
            p.add_(torch.randn_like(p))
    st = meta_state(a)
    conv_names = {n for n, m in a.named_modules() if isinstance(m, SSConv2d)}
    assert not any(k.rsplit(".", 1)[0] in conv_names and k.endswith((".weight", ".bias")) for k in st)
    assert sum(k.endswith(".scale") for k in st) == len(conv_names)
    b = to_scale_shift(create_backbone("tiny"))
    load_meta_state(b, st)
    assert all(torch.equal(x, y) for x, y in zip(ss_parameters(a), ss_parameters(b)))
    st.pop(next(k for k in st if k.endswith("scale")))
    with pytest.raises(CheckpointError, match="missing"):
        load_meta_state(b, st)
