"""MoMKD: momentum-memory knowledge distillation (Guo et al., arXiv 2602.21395).

    from momkd import MoMKD, MoMKDConfig, build, from_official
"""
from momkd.config import MoMKDConfig
from momkd.model import MoMKD, build
from momkd.official import from_official

__all__ = ["MoMKD", "MoMKDConfig", "build", "from_official"]
