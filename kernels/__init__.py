"""Triton kernels of vpengine, shipped inside the wheel as ``vpengine.kernels``.

One file per op family; each opens with its math, its memory traffic and a
roofline estimate at VideoPrism shapes. Import lazily: importing Triton must
never be needed to import vpengine.
"""
