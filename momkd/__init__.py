"""MoMKD: momentum-memory knowledge distillation (Guo et al., arXiv 2602.21395).

    from momkd import MoMKD, MoMKDConfig, build, from_official
"""
from benchmarks.spec import MethodSpec
from momkd.config import RECIPE, MoMKDConfig
from momkd.model import MoMKD, build
from momkd.official import from_official

__all__ = ["MoMKD", "MoMKDConfig", "SPEC", "build", "from_official"]


SPEC = MethodSpec(
    "momkd", family="ours", display="MoMKD", job_cost=7.2, build=build, config=MoMKDConfig,
    needs=frozenset({"coords", "omics_train"}),
    variants={
        "full": {},
        "wsi_only": {"use_memory": False, "use_omics": False},  # Table 3 baseline: CE only, gated pooling
        "no_omics_align": {"alpha_omics": 0.0},  # Table 3
        "no_wsi_align": {"alpha_wsi": 0.0},  # Table 3
        "no_recon": {"lambda_mse": 0.0},  # Table 3
        "fixed_memory": {"memory_mode": "fixed"},  # Table 4: K-means initialised, then frozen
        "ema_memory": {"memory_mode": "ema"},  # extension: true momentum (EMA) update, not in the code
    },
    recipes={"wsi": RECIPE},
    search_space=("lr=1e-5:1e-3:log", "weight_decay=1e-6:1e-2:log", "cls_dropout=0.0:0.7", "n_memory=4:64:log",
                  "margin=0.05:0.6"),
    scale_params={"small": {"hidden_dim": 128, "omics_hidden": 128, "omics_embed_dim": 128, "cls_hidden": 32,
                            "gated_attn_dim": 32}},
    paper="Guo et al., Momentum Memory for Knowledge Distillation in Computational Pathology, CVPR 2026 "
          "(arXiv 2602.21395)",
    code="CAIR-LAB-WFUSM/MoMKD models/mkd.py, utils/Mkd_train_utils.py, utils/core_utils.py, run.sh",
    description="ours: GATv2 WSI encoder + class-conditioned memory aligned with omics, memory-guided attention")
