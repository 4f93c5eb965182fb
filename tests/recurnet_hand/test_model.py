"""IR9 backbone, DIR-Net presets and pose heads."""

from dataclasses import replace

import pytest
import timm
import torch

import recurnet
from recurnet_hand import build_dirnet, preset
from recurnet_hand.backbones import LOOP_POINTS, loop_point_stage
from recurnet_hand.losses import HandLoss, LossConfig, joint_heatmaps
from recurnet_hand.model import DirectPoseHead, LocationMapHead, ManoPoseHead


@pytest.mark.parametrize("name,width", [("ir9_32", 32), ("ir9_16", 16)])
def test_ir9_layout(name, width):
    model = timm.create_model(name)
    info = [(f["num_chs"], f["reduction"]) for f in model.feature_info]
    assert info == [(width, 2), (width, 4), (2 * width, 8), (4 * width, 16), (8 * width, 32)]
    # One basic block per stage: ResNet-18's layout halved.
    assert all(len(getattr(model, f"layer{i}")) == 1 for i in range(1, 5))
    assert model.conv1.out_channels == width
    feats = model.forward_intermediates(torch.zeros(1, 3, 224, 224), indices=[2], intermediates_only=True)[0]
    assert feats.shape == (1, 2 * width, 28, 28)  # the default loop point ends at 28x28


def test_ir9_any_width_and_no_pretrained():
    assert timm.create_model("ir9", width=24).layer4[0].conv2.out_channels == 192
    with pytest.raises(ValueError, match="no pretrained"):
        timm.create_model("ir9_32", pretrained=True)
    with pytest.raises(ValueError, match="width"):
        timm.create_model("ir9", width=0)


@pytest.mark.parametrize("point,size", [(1, 112), (2, 56), (3, 28), (4, 14)])
def test_loop_points_select_extractor_resolution(point, size):
    net = recurnet.loopify("ir9_16", stage=loop_point_stage(point), max_loops=1)
    feats = net.extractor(torch.zeros(1, 3, 224, 224))
    assert feats.shape[-1] == size
    assert sorted(LOOP_POINTS) == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="loop point"):
        loop_point_stage(5)


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_dirnet(preset("tiny", max_loops=2))


def test_dirnet_outputs_and_units(tiny_net):
    net = tiny_net.eval()
    out = net(torch.rand(3, 3, 96, 96))
    assert out.num_iterations == 3
    final = out.final
    assert final["joints3d"].shape == (3, 21, 3) and final["joints2d"].shape == (3, 21, 2)
    torch.testing.assert_close(final["joints3d"][:, 0], torch.zeros(3, 3))  # root-relative
    # An untrained net predicts the MANO mean hand: a plausible size in millimetres.
    span = (final["joints3d"] - final["joints3d"][:, :1]).norm(dim=-1).max()
    assert 80 < span < 300
    # The initial camera puts the wrist at the crop centre.
    torch.testing.assert_close(final["joints2d"][:, 0], torch.full((3, 2), 48.0))
    assert out.final_log_variance["joints3d"].shape == (3, 21, 1)


def test_dirnet_gradients_reach_every_trainable_part(tiny_net):
    net = tiny_net.train()
    out = net(torch.rand(4, 3, 96, 96))
    loss = sum(it["joints3d"].square().mean() + it["joints2d"].mean() for it in out.iterations)
    loss = loss + sum(lv["joints3d"].mean() + lv["joints2d"].mean() for lv in out.log_variance)
    loss = loss + out.auxiliary["heatmaps"].square().mean()  # the training-only heatmap head
    net.zero_grad()
    loss.backward()
    missing = [n for n, p in net.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing


def test_mano_buffers_are_not_trainable(tiny_net):
    names = [n for n, _ in tiny_net.named_parameters()]
    assert not any(".mano." in n for n in names)


def test_direct_head_shapes_and_root():
    head = DirectPoseHead(16, 32, crop_size=64)
    out = head(torch.randn(2, 16))
    assert out["joints3d"].shape == (2, 21, 3)
    torch.testing.assert_close(out["joints3d"][:, 0], torch.zeros(2, 3))
    net = build_dirnet(preset("tiny", head="direct", max_loops=1)).eval()
    assert net(torch.rand(1, 3, 96, 96)).final["joints2d"].shape == (1, 21, 2)


def test_mano_head_projection_is_weak_perspective():
    from recurnet_hand.mano import ManoLayer

    head = ManoPoseHead(8, 16, ManoLayer.synthetic("right", num_pca_comps=6), crop_size=100)
    torch.nn.init.normal_(head.fc[-1].weight, std=0.1)
    out = head(torch.randn(3, 8))
    expected = out["scale"][:, None, None] * out["joints3d"][..., :2] + out["translation"][:, None]
    torch.testing.assert_close(out["joints2d"], expected)
    r = out["rotation"]
    torch.testing.assert_close(r @ r.transpose(1, 2), torch.eye(3).expand(3, 3, 3), atol=1e-5, rtol=0)


def test_presets_and_unknown_names():
    assert preset("stb").width == 32 and preset("stb").fc == 512
    assert preset("fpha").width == 16 and preset("fpha").fc == 256
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        preset("nope")
    with pytest.raises(ValueError, match="unknown pose head"):
        build_dirnet(preset("tiny", head="nope"))


@pytest.mark.parametrize(
    "name,no_iter,with_amg",
    [("stb", 1.44e6, 1.68e6), ("fpha", 408e3, 460e3)],
)
def test_parameter_counts_near_paper_table3(name, no_iter, with_amg):
    # Paper Table 3: parameters of the model without iterations and with AMG; target within 10 %.
    plain = build_dirnet(preset(name, feedback="none", max_loops=0))
    looped = build_dirnet(preset(name, feedback="attention", max_loops=5))
    assert recurnet.count_params(plain) == pytest.approx(no_iter, rel=0.10)
    assert recurnet.count_params(looped) == pytest.approx(with_amg, rel=0.10)


def test_mano_head_poses_in_float32_under_bfloat16_autocast():
    torch.manual_seed(0)
    net = build_dirnet(preset("tiny", max_loops=1)).eval()
    x = torch.rand(2, 3, 96, 96)
    with torch.no_grad():
        want = net(x, exit="all").final
        with torch.autocast("cpu", dtype=torch.bfloat16):
            got = net(x, exit="all").final
    assert got["joints3d"].dtype == got["joints2d"].dtype == torch.float32
    # the backbone ran in bfloat16; the pose (near the mean hand at initialisation) barely moves
    torch.testing.assert_close(got["joints3d"], want["joints3d"], atol=1.0, rtol=0.05)


def _location_batch(n: int = 3) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"joints2d": torch.rand(n, 21, 2, generator=g) * 96, "joints3d": torch.randn(n, 21, 3, generator=g) * 50,
            "has_2d": torch.ones(n, dtype=torch.bool), "has_3d": torch.ones(n, dtype=torch.bool)}


def test_location_maps_train_only_and_reach_the_extractor():
    net = build_dirnet(preset("tiny", max_loops=1, location_maps=True))
    head = net.auxiliary["location_maps"]
    assert isinstance(head, LocationMapHead)
    assert head.body[-1].weight.abs().sum() == 0  # starts at every joint on the wrist
    torch.nn.init.normal_(head.body[-1].weight)
    out = net.train()(torch.rand(2, 3, 96, 96))
    assert out.auxiliary["location_maps"].shape == (2, 21, 3, 12, 12)
    net.zero_grad()
    out.auxiliary["location_maps"].square().mean().backward()
    assert net.extractor.body[0].weight.grad.abs().sum() > 0
    assert net.eval()(torch.rand(2, 3, 96, 96)).auxiliary == {}  # dropped at inference


def test_upsampled_heatmaps_double_the_grid_and_their_targets_follow():
    net = build_dirnet(preset("tiny", max_loops=0, heatmap_upsample=2)).train()
    head = net.auxiliary["heatmaps"]
    assert head.body[-1].weight.abs().sum() == 0  # starts at empty maps
    torch.nn.init.normal_(head.body[-1].weight)
    out = net(torch.rand(2, 3, 96, 96))
    maps = out.auxiliary["heatmaps"]
    assert maps.shape == (2, 21, 24, 24)  # the extractor's 12 x 12 grid, doubled
    batch = _location_batch(2)
    # Maps equal to the targets on the doubled grid cost nothing: the loss builds its targets at the maps' size.
    out.auxiliary["heatmaps"] = joint_heatmaps(batch["joints2d"], 96, (24, 24)).requires_grad_()
    assert HandLoss(crop_size=96)(out, batch).task["heatmap"].item() == pytest.approx(0.0, abs=1e-10)
    net.zero_grad()
    maps.square().mean().backward()
    assert net.extractor.body[0].weight.grad.abs().sum() > 0
    assert net.eval()(torch.rand(1, 3, 96, 96)).auxiliary == {}  # dropped at inference
    with pytest.raises(ValueError, match="heatmap_upsample"):
        preset("tiny", heatmap_upsample=3)


def test_location_loss_reads_each_joint_around_its_heatmap():
    net = build_dirnet(preset("tiny", max_loops=0, location_maps=True)).train()
    out = net(torch.rand(3, 3, 96, 96))
    batch = _location_batch()
    loss = HandLoss(crop_size=96)
    rel = (batch["joints3d"] - batch["joints3d"][:, :1]) / 100.0
    # Maps that hold the true root-relative position everywhere cost nothing.
    out.auxiliary["location_maps"] = rel[..., None, None].expand(3, 21, 3, 12, 12).clone().requires_grad_()
    assert loss(out, batch).task["location"].item() == pytest.approx(0.0, abs=1e-10)
    # One unit off in one coordinate costs the target heatmap's mass, averaged over joints.
    maps = rel[..., None, None].expand(3, 21, 3, 12, 12).clone()
    maps[:, :, 2] += 1.0
    out.auxiliary["location_maps"] = maps
    mass = joint_heatmaps(batch["joints2d"], 96, (12, 12)).sum((-1, -2)).mean()
    assert loss(out, batch).task["location"].item() == pytest.approx(mass.item(), rel=1e-5)
    # Samples without 3D labels do not count.
    batch["has_3d"][0] = False
    maps[0] += 100.0
    mass = joint_heatmaps(batch["joints2d"][1:], 96, (12, 12)).sum((-1, -2)).mean()
    assert loss(out, batch).task["location"].item() == pytest.approx(mass.item(), rel=1e-5)
    # Weight 0 drops the term.
    off = HandLoss(replace(loss.config, weight_location=0.0), crop_size=96)(out, batch)
    assert "location" not in off.task


def test_attention_loss_supervises_the_maps_that_feed_later_loops():
    net = build_dirnet(preset("cpu", max_loops=2)).train()  # 64 feature channels (tiny has 16)
    batch = _location_batch(2)
    assert not HandLoss(crop_size=96).uses_feedback  # off by default: the trainer does not ask for the maps
    out = net(torch.rand(2, 3, 96, 96), exit="all", return_feedback=True)
    channels, size = out.feedback[1].shape[1], out.feedback[1].shape[-2:]
    joints = HandLoss(LossConfig(weight_attention=1.0), crop_size=96)
    hand = HandLoss(LossConfig(weight_attention=1.0, attention_target="hand"), crop_size=96)
    assert joints.uses_feedback
    assert joints(out, batch).task["attention"].item() > 0
    net.zero_grad()
    joints(out, batch).total.backward()
    grads = [p.grad for p in net.feedback.parameters()]
    assert all(g is not None for g in grads) and sum(g.abs().sum() for g in grads) > 0  # the decoder learns
    target = joint_heatmaps(batch["joints2d"], 96, tuple(size))
    # Maps whose first 21 channels are the joints' heatmaps cost nothing, whatever the other channels hold.
    exact = torch.cat([target, torch.rand(2, channels - 21, *size)], 1)
    out.feedback = [None, exact, exact]
    assert joints(out, batch).task["attention"].item() == pytest.approx(0.0, abs=1e-10)
    assert hand(out, batch).task["attention"].item() > 0
    # The hand target is the joints' maximum, matched by the channel mean.
    out.feedback = [None] + [target.amax(1, keepdim=True).expand(2, channels, *size)] * 2
    assert hand(out, batch).task["attention"].item() == pytest.approx(0.0, abs=1e-10)
    # Samples without 2D labels do not count; loop 2's error counts half.
    batch["has_2d"][0] = False
    off = exact.clone()
    off[0] += 5.0
    off2 = exact.clone()
    off2[1, 0] += 1.0
    out.feedback = [None, off, off2]
    assert joints(out, batch).task["attention"].item() == pytest.approx(size.numel() / 21 / 2, rel=1e-5)
    with pytest.raises(ValueError, match="attention maps"):
        out.feedback = [None, torch.rand(2, 4, *size)]
        joints(out, batch)
    with pytest.raises(ValueError, match="needs feedback maps"):
        out.feedback = []  # run without return_feedback=True
        joints(out, batch)
    with pytest.raises(ValueError, match="attention_target"):
        LossConfig(attention_target="palm")
