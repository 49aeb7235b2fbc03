"""Kernels (Triton, and a C++ CPU attention kernel), each beside its plain-torch reference
(installed as fedbrb_fast.kernels)."""
