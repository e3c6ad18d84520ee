"""Devices: pairing in both directions, paired devices, and their part in clusters.

`DeviceManager` (manager.py) is what the handlers use; each piece it is built from has one
job (see manager.py). This package sits below `server/` and `notebook/`: it imports identity,
store, pairing, peer_client, profile and cluster, never what serves or uses it.
"""

from .errors import ApiError
from .manager import DeviceManager
from .settings import PairingSettings

__all__ = ["ApiError", "DeviceManager", "PairingSettings"]
