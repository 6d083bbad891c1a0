"""fmix: privacy-preserving face recognition with adaptive hybrid masking.

Not related to the "FMix" data augmentation method.
"""

__version__ = "0.1.0"
