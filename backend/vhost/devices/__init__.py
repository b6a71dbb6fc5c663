"""Devices on the vhost-user seam (backend/vhost/device.py): blk, and later net and ldc."""
