"""Simulated ONVIF cameras (device, media, events/PullPoint, snapshots, WS-Discovery).

In-process API::

    async with CameraGroup([CameraConfig(name="cam1", password="pw")]) as group:
        cam = group["cam1"]
        cam.push_event("tns1:VideoSource/MotionAlarm", {"State": "true"}, {"VideoSourceToken": "vs_1"})

Command line: ``hwsim onvif --config sim.toml`` or ``hwsim onvif --cameras 3``.
"""

from hwsim.onvif.camera import CameraConfig, ScriptStep, SimCamera
from hwsim.onvif.server import CameraGroup, ConfigError, camera_config, load_file

__all__ = [
    "CameraConfig",
    "CameraGroup",
    "ConfigError",
    "ScriptStep",
    "SimCamera",
    "camera_config",
    "load_file",
]
