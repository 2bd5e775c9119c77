"""Triton kernels of the book (each with a PyTorch path for the CPU and a test under TRITON_INTERPRET=1)."""
