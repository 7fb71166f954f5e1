"""Energy constants at one technology node: published values, their node, and the scaling rule.

A preset names its node (``tech_nm``). An energy constant the preset does not set is taken from
:data:`PUBLISHED` and scaled from the node it was published at to the preset's node, so no
target mixes a 45 nm SRAM figure with a 22 nm CiM macro. DRAM energy is the DRAM device's and its
interface's, not the logic node's, so it is never scaled.

Scaling rule (classical constant-field scaling, Dennard et al., IEEE JSSC 1974): dynamic energy
per operation E = C V^2 with C proportional to the feature size, so
E(to) = E(from) * (to / from) * (V(to) / V(from))^2, with the nominal supply voltages of
:data:`SUPPLY_V`. Stillmaker and Baas (Integration 2017) show this rule drifts from
HSpice-fitted models across many nodes; between 45 nm and 22 nm it is the first-order estimate,
and README says so.
"""

from __future__ import annotations

from dataclasses import dataclass

# Nominal supply voltage per node [ours: the usual nominal values; 45 nm at 0.9 V is the
# operating point of Horowitz's figures].
SUPPLY_V = {65: 1.0, 45: 0.9, 32: 0.9, 28: 0.9, 22: 0.8, 16: 0.8, 14: 0.8, 7: 0.7}


@dataclass(frozen=True)
class Published:
    """A constant as published: value (in the parameter's unit), node (None: not a logic-node
    figure, never scaled) and source."""

    value: float
    node_nm: int | None
    source: str


PUBLISHED: dict[str, Published] = {
    "e_dram_pj_per_byte": Published(
        160.0, None, "Horowitz, ISSCC 2014: 640 pJ per 32-bit DRAM access (device + interface)"
    ),
    "e_sram_pj_per_byte": Published(
        1.25, 45, "Horowitz, ISSCC 2014: 5 pJ per 32-bit read of an 8 KB SRAM"
    ),
    "e_link_pj_per_byte": Published(
        0.4, 45, "[ours] one decoder/link hop ~ a third of an 8 KB SRAM access per byte"
    ),
    "e_bitmac_fj": Published(
        1.4, 22, "Chih et al., ISSCC 2021: 89 TOPS/W at 4b x 4b = 22.5 fJ per 4b MAC / 16"
    ),
    "e_route_pj": Published(0.1, 45, "Horowitz, ISSCC 2014: 32-bit integer add 0.1 pJ"),
    "e_adc_fj_per_step": Published(
        3.67,
        28,
        "Murmann, ADC Performance Survey 1997-2025 (github.com/bmurmann/ADC-survey): best "
        "Walden FoM (FOMW_hf) of ENOB <= 8 converters at <= 28 nm, Patil et al., VLSI 2015",
    ),
    "e_vector_pj_per_op": Published(0.2, 45, "Horowitz, ISSCC 2014: 8-bit multiply 0.2 pJ"),
}


def energy_scale(from_nm: int, to_nm: int) -> float:
    """Factor from an energy at ``from_nm`` to one at ``to_nm`` (C V^2 scaling)."""
    for node in (from_nm, to_nm):
        if node not in SUPPLY_V:
            from cimc.errors import OptionError

            raise OptionError(
                f"technology node {node} nm has no supply voltage in cimc.targets.technology; "
                f"choose one of {', '.join(str(n) for n in sorted(SUPPLY_V))}"
            )
    return (to_nm / from_nm) * (SUPPLY_V[to_nm] / SUPPLY_V[from_nm]) ** 2


def scaled(name: str, tech_nm: int) -> float:
    """The published constant ``name`` at node ``tech_nm``."""
    pub = PUBLISHED[name]
    if pub.node_nm is None:
        return pub.value
    return pub.value * energy_scale(pub.node_nm, tech_nm)


def node_table(tech_nm: int) -> list[dict]:
    """Rows for README / ``cimc targets``: published value, its node, the value at ``tech_nm``."""
    return [
        {
            "parameter": name,
            "published": pub.value,
            "node_nm": pub.node_nm,
            "scaled": scaled(name, tech_nm),
            "source": pub.source,
        }
        for name, pub in PUBLISHED.items()
    ]
