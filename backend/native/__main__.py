"""`python -m backend.native`: compile the C data path now (set-up time), print where it is."""

from .build import build

print(build())
