"""PyTorch reference implementations written for zkd's tests from the architecture descriptions
(He et al. 2016; Zagoruyko & Komodakis 2016; Simonyan & Zisserman 2015 with BN as used by CRD;
torchvision's documented ResNet layout). Only the tests import them."""
