"""PyTorch models in: export a `torch.nn.Module` (or a `torch.export` .pt2 program) to float ONNX for the ONNX backend.

PyTorch is optional (`pip install 'quantdoctor[torch]'`) and imported only inside the functions that need it.
"""
