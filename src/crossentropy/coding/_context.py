"""Placeholder context model (replaced below)."""
from crossentropy.coding import _order0

encode = _order0.encode
decode = _order0.decode
