"""The evaluation and teacher networks: ConvNet-D, the torchvision ResNet-18 and timm models, by name (`build`),
ResNet / ResNetAP in the IDC variant (`resnet`).
"""
