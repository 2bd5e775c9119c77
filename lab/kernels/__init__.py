"""Triton kernels of the book, one module per op (int4, int8, sparse24, paged_attention): the PyTorch path for
the CPU, v1 and v2 side by side, and the bytes each call moves; each tested under TRITON_INTERPRET=1."""
