"""Live tracing with bcc: the probe table (programs), compile and attach
(loader), ring draining (ringbuf, perfbuf, transport), object identity
(identity), kernel-side counts (counts) and the source itself (source).

Nothing here imports bcc at import time: only LiveSource.start() does.
"""
