"""The samplers by name: one line each. A new sampler is a new file with its pure function and ``SPEC``, plus a line
here; the config's ``sampling.<name>`` section and the command line's options follow from the spec."""

from __future__ import annotations

from . import dpmpp, heun, langevin, ode, pc
from .spec import SamplerSpec

SPECS: dict[str, SamplerSpec] = {
    "ald": langevin.SPEC,
    "pc": pc.SPEC,
    "ode": ode.SPEC,
    "heun": heun.SPEC,
    "dpmpp_2m": dpmpp.SPEC_2M,
    "dpmpp_2m_sde": dpmpp.SPEC_2M_SDE,
}
