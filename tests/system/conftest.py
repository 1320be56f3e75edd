"""System tier: vtrace's outputs against the real programs that consume them
(Prometheus, promtool, curl, openssl). Debian packages installed by
scripts/install-system-deps.sh; must run under CI=true (tests/tiers.py)."""
