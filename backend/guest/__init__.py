"""A sun4v guest simulator: the LDC device's front-end running vdc, vnet and DS, with NBD, tap and CLI edges."""
