"""Finding devices on the local network: each device announces its peer listener over
mDNS/DNS-SD and lists the others it hears (`GET nearby`, `parallalx discover`, the panel's
Nearby section).

An announcement is a hint where to send a connection request, never a reason to trust: anyone
on the network can announce any name and any device ID. Nothing here pairs, and nothing a
record says is used but as escaped, length-limited text and a checked address and port; the
verification code both screens show stays the check (docs/protocol.md, "Finding devices").

`records` is the record format (what is announced, how a heard one is checked); `service` runs
the announcer and the browser on the server's event loop.
"""

from .records import SERVICE_TYPE, NearbyDevice, announce_addresses, parse_record, txt_record
from .service import Discovery

__all__ = ["SERVICE_TYPE", "Discovery", "NearbyDevice", "announce_addresses", "parse_record",
           "txt_record"]
