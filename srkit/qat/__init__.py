"""Quantization-aware fine-tuning (NNCF, PyTorch): all-int8 symmetric Q/DQ models under the int8 PSNR budget.

`srkit.qat.run.quantize_aware` is the entry point; `srkit.qat.settings` (what a run does) imports nothing
heavy, so the CLI can show its defaults without torch.
"""
