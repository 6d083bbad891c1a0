"""fmix: privacy-preserving face recognition with adaptive hybrid masking.

Not related to the "FMix" data augmentation method.
"""

__version__ = "0.1.0"

from fmix._optional import drop_torchvision_notice  # noqa: E402

drop_torchvision_notice()  # fmix needs no torchvision: the ONNX exporter's notice about it is noise (fmix/_optional.py)
