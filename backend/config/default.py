"""The embedded default config: one guest with a disk and a NIC on a switch bridged to a tap.

`vio serve --default` runs it (the demo does); `vio serve --print-default`
prints it as a starting point for a file of one's own. Relative paths in it
land in the state directory.
"""

DEFAULT_CONFIG = """\
# vio serve --default: one guest (ldg1) with a 64 MiB disk and a NIC on vsw0.
[daemon]
state_dir = "/run/vio"
log_format = "json"

[[domain]]
name = "ldg1"
description = "the demo guest"

[[disk]]
name = "ldg1-disk0"
domain = "ldg1"
path = "ldg1-disk0.img"      # created sparse in the state directory on first start
size = "64M"
cache = "writeback"

[[switch]]
name = "vsw0"
uplink = "vio-tap0"
bridge = "vio-br0"           # created, and removed again on exit
mtu = 1500

[[vnet]]
name = "ldg1-net0"
switch = "vsw0"
domain = "ldg1"
"""
