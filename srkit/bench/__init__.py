"""Benchmarking: metrics (PSNR/SSIM), timing and reports."""
