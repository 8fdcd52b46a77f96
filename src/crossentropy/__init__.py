"""crossentropy: one quantity, three faces.

Cross-entropy H(P, Q) is a measure of how far a model Q is from the truth P
(:mod:`crossentropy.info`), the number of bits a code built for Q spends on data
from P (:mod:`crossentropy.coding`), and the loss that trains classifiers and
language models (:mod:`crossentropy.losses`, which imports torch and is therefore
imported only on request).
"""

from crossentropy._errors import DecodeError

__version__ = "0.1.0"

from crossentropy import coding, info

__all__ = ["DecodeError", "__version__", "coding", "info"]
