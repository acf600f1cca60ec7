"""Stand-in for ``habana_frameworks.torch.hpex`` (Habana's fused kernels)."""
