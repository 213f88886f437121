"""Serial meter simulators: DL/T 645 electricity meters, CJ/T 188 water/heat/gas meters and
framed vendor devices on one pseudo-terminal bus (or TCP, like a serial server).

The protocol code here is written independently of the gateway's drivers (it imports
nothing from ``drivers`` or ``gateway``) so that a codec bug cannot hide on both sides.
"""

from hwsim.serial.bus import SimBus, load_sim

__all__ = ["SimBus", "load_sim"]
