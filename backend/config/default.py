"""The embedded default config: one guest with a vhost-user disk and NIC on a switch bridged to a tap.

`vio serve --default` runs it (the demo does); `vio serve --print-default`
prints it as a starting point for a file of one's own. Relative paths in it
land in the state directory.
"""

DEFAULT_CONFIG = """\
# vio serve --default: one guest (ldg1) with a 64 MiB vhost-user disk and a vhost-user NIC
# on switch vsw0, whose uplink tap sits on bridge vio-br0; the service domain's DS agent.
# `vio guest start ldg1` boots a QEMU guest wired to these sockets.
[daemon]
state_dir = "/run/vio"
log_format = "json"

[[domain]]
name = "ldg1"
description = "the demo guest"

[ds]
name = "primary"

[[switch]]
name = "vsw0"
uplink = "vio-tap0"
bridge = "vio-br0"           # created, and removed again on exit
mtu = 1500

[[vhost_blk]]
name = "disk0"
domain = "ldg1"
path = "ldg1-disk0.img"      # created sparse in the state directory on first start
size = "64M"
cache = "writeback"

[[vhost_net]]
name = "net0"
domain = "ldg1"
switch = "vsw0"
"""
