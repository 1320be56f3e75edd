"""What the simulated drivers put in their buffers: per device type the
request and packet shapes (readable/writable bytes, descriptors per chain)
and the latency distributions of the backends serving them."""

from __future__ import annotations

import numpy as np

from vtrace.model import devtypes

# Header sizes are the model's device-type constants.
VNET_HDR = devtypes.NET_HDR
BLK_OUTHDR = devtypes.BLK_OUTHDR
VSOCK_HDR = devtypes.VSOCK_HDR


def net_packet(rng: np.random.Generator, count: int) -> np.ndarray:
    # A TCP-ish mix: ACKs, full frames, TSO/GRO super-frames.
    return VNET_HDR + rng.choice(np.array([66, 1514, 1514, 1514, 9000, 65226]), count,
                                 p=[0.35, 0.3, 0.15, 0.1, 0.05, 0.05])


def net_tx_request(rng, count):
    readable = net_packet(rng, count)
    zeros = np.zeros(count, dtype=np.int64)
    descs = 1 + (readable > 4096)
    return readable, zeros, zeros, descs  # TX: the device writes nothing, used.len 0


def blk_request(rng, count):
    size = rng.choice(np.array([4096, 4096, 16384, 65536, 131072]), count)
    read = rng.random(count) < 0.7
    readable = np.where(read, BLK_OUTHDR, BLK_OUTHDR + size)
    writable = np.where(read, size + 1, 1)  # data (reads) + the status byte
    return readable, writable, writable, np.full(count, 3)


def vsock_tx_request(rng, count):
    readable = VSOCK_HDR + rng.choice(np.array([0, 64, 4096]), count, p=[0.3, 0.4, 0.3])
    zeros = np.zeros(count, dtype=np.int64)
    return readable, zeros, zeros, np.where(readable > VSOCK_HDR, 2, 1)


def vsock_packet(rng, count):
    return VSOCK_HDR + rng.choice(np.array([0, 64, 4096]), count, p=[0.3, 0.4, 0.3])


def lognormal(median_ns: float, sigma: float):
    mu = np.log(median_ns)
    return lambda rng, count: rng.lognormal(mu, sigma, count).astype(np.int64)
