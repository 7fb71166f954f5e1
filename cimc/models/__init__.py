"""Every torch model definition of cimc, and the one torch -> ONNX exporter (needs torch: the
``train`` extra; ``import cimc`` never imports this package).

``resnet`` (torchvision ResNet-18/50 and cimc's ResNetS, on one BasicBlock), ``mobilenet``,
``vit``, ``zoo`` (the seeded benchmark zoo: :func:`build`, :func:`export_onnx`) and ``export``
(:func:`export_module`).
"""

from .export import export_module
from .resnet import BasicBlock, ResNetS, projection
from .zoo import ZOO, build, export_onnx

__all__ = ["ZOO", "BasicBlock", "ResNetS", "build", "export_module", "export_onnx", "projection"]
