"""vtrace: eBPF observability for virtio paths."""

__version__ = "0.1.0"
