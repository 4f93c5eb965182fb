"""Int8 inference through PyTorch 2 export quantisation (``recurnet_hand.quantize``)."""

import pytest
import torch

from recurnet_hand import build_dirnet, preset
from recurnet_hand.quantize import QuantizedLoop, quantize_int8


def _net():
    torch.manual_seed(0)
    return build_dirnet(preset("tiny", max_loops=1)).eval()


def test_bad_calibration_is_refused_before_any_work():
    net = _net()
    with pytest.raises(ValueError, match="at least one calibration batch"):
        quantize_int8(net, [])
    with pytest.raises(ValueError, match="calibration batch 1 must be"):
        quantize_int8(net, [torch.rand(2, 3, 96, 96), torch.rand(2, 3, 64, 64)])
    with pytest.raises(ValueError, match="channels"):
        quantize_int8(net, [torch.rand(2, 1, 96, 96)])


@pytest.mark.slow
def test_int8_network_follows_the_float_one_at_any_batch_size():
    pytest.importorskip("torchao")
    net = _net()
    gen = torch.Generator().manual_seed(1)
    calibration = [torch.rand(8, 3, 96, 96, generator=gen) for _ in range(2)]
    try:
        q = quantize_int8(net, calibration)
        assert isinstance(q, QuantizedLoop) and q.loops == 1
        assert net.training is False and not any(p.dtype != torch.float32 for p in net.parameters())
        for b in (1, 3):
            x = torch.rand(b, 3, 96, 96, generator=gen)
            out = q(x)
            with torch.no_grad():
                want = net(x, exit="all", count_cost=False)
            assert out.num_iterations == 2 and out.exit_step.tolist() == [1] * b
            for l in range(2):
                got, ref = out.iterations[l]["joints3d"], want.iterations[l]["joints3d"]
                assert got.shape == ref.shape == (b, 21, 3) and torch.isfinite(got).all()
                # int8 rounding of an untrained network: joints within a few millimetres
                assert (got - ref).norm(dim=-1).mean() < 5.0
                assert out.log_variance[l]["joints3d"].shape == (b, 21, 1)
        with pytest.raises(ValueError, match="images must be"):
            q(torch.rand(3, 96, 96))
    finally:
        torch._dynamo.reset()


class _Stop(Exception):
    pass


@pytest.mark.parametrize("vnni, asked, want", [(True, None, False), (False, None, True), (False, False, False),
                                               (True, True, True)])
def test_activations_lose_a_bit_exactly_where_the_cpu_lacks_vnni(monkeypatch, vnni, asked, want):
    pytest.importorskip("torchao")
    from torchao.quantization.pt2e.quantizer import x86_inductor_quantizer as xiq

    import recurnet_hand.quantize as quantize

    seen = []

    def config(**kwargs):
        seen.append(kwargs.get("reduce_range"))
        raise _Stop

    monkeypatch.setattr(quantize, "cpu_has_vnni", lambda: vnni)
    monkeypatch.setattr(xiq, "get_default_x86_inductor_quantization_config", config)
    with pytest.raises(_Stop):
        quantize.quantize_int8(_net(), [torch.rand(2, 3, 96, 96)], reduce_range=asked)
    assert seen == [want]


def test_cpu_has_vnni_answers_a_bool():
    from recurnet_hand.quantize import cpu_has_vnni

    assert isinstance(cpu_has_vnni(), bool)
