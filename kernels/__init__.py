"""Triton kernels, each beside its plain-torch reference (installed as fedbrb_fast.kernels)."""
