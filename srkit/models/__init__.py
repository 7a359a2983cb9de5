"""PyTorch super-resolution architectures (torch-land: import only when torch is wanted).

`srkit.models.zoo` is the exception: it lists bundled weights without importing torch.
"""
