"""MPS has no float64: the samplers, the schedules and the likelihood compute float64 on the CPU and hand the device
float32 only. Simulated on the CPU: tensors on a stand-in device (``meta``, flagged as lacking float64 like MPS) hold
CPU values, and any float64 tensor created on it is refused with MPS's own error."""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_map

from ncsn import geometric_sigmas, karras_sigmas
from ncsn.likelihood import log_density
from ncsn.samplers import SamplerSettings, heun_sampler, ode_sampler, run_sampler
from ncsn.samplers import ode as ode_module
from ncsn.schedules import check_schedule

STAND_IN = torch.device("meta")  # a device type with a device guard on every build, unlike mps on Linux


class OnDevice(torch.Tensor):
    """A CPU tensor that reports the stand-in device; every op on it runs on its CPU values (``NoFloat64Device``)."""

    @staticmethod
    def __new__(cls, elem):
        return torch.Tensor._make_wrapper_subclass(cls, elem.shape, strides=elem.stride(), dtype=elem.dtype,
                                                   device=STAND_IN, requires_grad=elem.requires_grad,
                                                   storage_offset=elem.storage_offset())

    def __init__(self, elem):
        self.elem = elem

    def tolist(self):  # torch refuses tolist() on subclasses; on MPS it copies to the host
        return self.elem.tolist()

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"{func} ran outside NoFloat64Device")


class NoFloat64Device(TorchDispatchMode):
    """Runs every op on CPU values; results on the stand-in device (an input there, or device= it) are wrapped, and
    a float64 one raises the TypeError MPS raises. Records every op that would have produced float64 there."""

    def __init__(self):
        super().__init__()
        self.refused: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs, wrappers, on_device = dict(kwargs or {}), {}, False

        def unwrap(t):
            nonlocal on_device
            if isinstance(t, OnDevice):
                on_device = True
                wrappers[id(t.elem)] = t
                return t.elem
            return t

        args, kwargs = tree_map(unwrap, (args, kwargs))
        if kwargs.get("device") is not None:
            on_device = torch.device(kwargs["device"]) == STAND_IN
            if on_device:
                kwargs["device"] = torch.device("cpu")
        out = func(*args, **kwargs)

        def wrap(t):
            if not isinstance(t, torch.Tensor) or not on_device:
                return t
            if id(t) in wrappers:  # in place: the same tensor
                return wrappers[id(t)]
            if t.dtype == torch.float64:
                self.refused.append(str(func))
                raise TypeError("Cannot convert a MPS Tensor to float64 dtype as the MPS framework doesn't support "
                                f"float64. Please use float32 instead. ({func})")
            return OnDevice(t)

        return tree_map(wrap, out)


@pytest.fixture
def no_float64(monkeypatch):
    """Inside: tensors go to the stand-in device with ``to_device``; the library treats it as it treats MPS."""
    flagged = getattr(ode_module, "DEVICES_WITHOUT_FLOAT64", frozenset({"mps"})) | {STAND_IN.type}
    monkeypatch.setattr(ode_module, "DEVICES_WITHOUT_FLOAT64", flagged, raising=False)
    as_tensor, tensor = torch.as_tensor, torch.tensor

    def host_then_device(make):  # torch.tensor(..., device=) copies to the device below the dispatch mode
        def build(data, *args, device=None, **kwargs):
            return make(data, *args, **kwargs).to(device) if device is not None else make(data, *args, **kwargs)
        return build

    monkeypatch.setattr(torch, "as_tensor", host_then_device(as_tensor))
    monkeypatch.setattr(torch, "tensor", host_then_device(tensor))
    with NoFloat64Device() as mode:
        yield mode


def score(x, sigma):
    var = 0.04 + sigma.view(-1, 1, 1, 1) ** 2
    return -(x - 0.4) / var + 0.3 * torch.tanh(3 * x)


def on_device(t):
    return OnDevice(t)


def back(t):
    return t.elem if isinstance(t, OnDevice) else t


def test_the_stand_in_device_refuses_float64_as_mps_does(no_float64):
    x = on_device(torch.ones(3))
    assert (x * 2).device == STAND_IN and float((x * 2).sum()) == 6.0
    with pytest.raises(TypeError, match="MPS framework doesn't support float64"):
        x.double()
    assert x.cpu().double().sum().item() == 3.0  # float64 on the CPU is fine


def test_schedules_give_the_device_float32_computed_in_float64_on_the_cpu(no_float64):
    karras = karras_sigmas(5.0, 0.01, 7, device=STAND_IN)
    ladder = geometric_sigmas(5.0, 0.01, 7, device=STAND_IN)
    assert karras.device == ladder.device == STAND_IN and karras.dtype == ladder.dtype == torch.float32
    assert torch.equal(back(karras), karras_sigmas(5.0, 0.01, 7))
    assert torch.equal(back(ladder), geometric_sigmas(5.0, 0.01, 7))
    check_schedule(ladder, "ladder")
    with pytest.raises(ValueError, match="strictly descending"):
        check_schedule(on_device(torch.tensor([1.0, 2.0])))


def test_the_ode_sampler_and_the_likelihood_run_without_float64_on_the_device(no_float64):
    x0 = torch.rand(3, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    sigmas = geometric_sigmas(1.0, 0.01, 3)
    with torch.utils._python_dispatch._disable_current_modes():
        want_ode = ode_sampler(score, x0, sigmas, rtol=1e-3, atol=1e-3)
        want_logp = log_density(score, x0, 0.01, 1.0, rtol=1e-3, atol=1e-3, generator=torch.Generator().manual_seed(1))
    got_ode = ode_sampler(score, on_device(x0), on_device(sigmas), rtol=1e-3, atol=1e-3)
    got_logp = log_density(score, on_device(x0), 0.01, 1.0, rtol=1e-3, atol=1e-3,
                           generator=torch.Generator().manual_seed(1))
    assert got_ode.device == got_logp.device == STAND_IN and not no_float64.refused
    assert torch.allclose(back(got_ode), want_ode, atol=1e-3)  # the times in float32 instead of float64
    assert torch.allclose(back(got_logp), want_logp, rtol=1e-3)


@pytest.mark.parametrize("name", ["ald", "pc", "heun", "ode"])
def test_every_sampler_runs_on_the_model_ladder_of_a_device_without_float64(no_float64, name):
    ladder = geometric_sigmas(1.0, 0.01, 4)
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    settings = SamplerSettings.from_flat(name, n_steps_each=2, n_steps=3, rtol=1e-3, atol=1e-3)
    with torch.utils._python_dispatch._disable_current_modes():
        want = run_sampler(score, x0, ladder, settings, generator=torch.Generator().manual_seed(1))
    got = run_sampler(score, on_device(x0), on_device(ladder), settings, generator=torch.Generator().manual_seed(1))
    assert got.device == STAND_IN and not no_float64.refused
    if name == "ode":
        assert torch.allclose(back(got), want, atol=1e-3)
    else:
        assert torch.equal(back(got), want)


def test_heun_takes_its_schedule_from_the_cpu_in_float64(no_float64):
    x0 = torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    with torch.utils._python_dispatch._disable_current_modes():
        want = heun_sampler(score, x0, karras_sigmas(1.0, 0.01, 4))
    got = heun_sampler(score, on_device(x0), karras_sigmas(1.0, 0.01, 4, device=STAND_IN))
    assert torch.equal(back(got), want)
