"""Load a state_dict saved by the official MoMKD code (``models/mkd.py`` ``MKD``) into :class:`MoMKD`.

Official key -> ours:

    wsi_encoder.{gat1,gat2,res_proj1,ln1,ln2}.*  -> wsi.*           (same sub-names)
    wsi_patch_projector.* / wsi_pool_projector.* -> patch_projector.* / pool_projector.*
    rna_tower.encoder.* / rna_decoder.decoder.*  -> omics.encoder.* / omics.decoder.*
    rna_projector.*                              -> omics.projector.*
    mem_pos._codebook.embed (1, K, S)            -> memory.pos (K, S)   (same for mem_neg)
    attn_log_tau                                 -> log_tau
    wsi_classifier_proto.*                       -> classifier.*

Dropped: the VQ buffers ``initted``, ``cluster_size``, ``embed_avg`` (EMA state, unused with the
official ``ema_update=False``).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from momkd.model import MoMKD

_PREFIXES = (
    ("wsi_encoder.", "wsi."),
    ("wsi_patch_projector.", "patch_projector."),
    ("wsi_pool_projector.", "pool_projector."),
    ("rna_tower.encoder.", "omics.encoder."),
    ("rna_decoder.decoder.", "omics.decoder."),
    ("rna_projector.", "omics.projector."),
    ("wsi_classifier_proto.", "classifier."),
)
_DROPPED = ("._codebook.initted", "._codebook.cluster_size", "._codebook.embed_avg")


def convert_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Official ``MKD.state_dict()`` -> our key names and shapes."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        if k.endswith(_DROPPED):
            continue
        if k == "attn_log_tau":
            out["log_tau"] = v
        elif k in ("mem_pos._codebook.embed", "mem_neg._codebook.embed"):
            out["memory.pos" if k.startswith("mem_pos") else "memory.neg"] = v.reshape(v.shape[-2], v.shape[-1])
        else:
            for old, new in _PREFIXES:
                if k.startswith(old):
                    out[new + k[len(old):]] = v
                    break
            else:
                raise KeyError(f"from_official: unexpected key {k!r} in the MoMKD state_dict")
    return out


def from_official(state_dict: Mapping[str, torch.Tensor], rna_input_dim: int, wsi_input_dim: int = 1536,
                  wsi_encoder_dim: int = 256, rna_embedding_dim: int = 256, shared_embedding_dim: int = 128,
                  num_memory_per_class: int = 4, cls_hidden_dim: int = 128, attn_tau_init: float = 0.2,
                  **settings: Any) -> MoMKD:
    """Build :class:`MoMKD` (``official`` preset) from the official ``MKD(**kwargs)`` constructor
    arguments (defaults = the ``MKD`` class defaults) and load its state_dict strictly.
    ``settings`` are further :class:`MoMKDConfig` fields (e.g. ``gat_impl="pyg"``)."""
    sd = convert_state_dict(state_dict)
    omics_hidden = int(sd["omics.encoder.0.weight"].shape[0]) if "omics.encoder.0.weight" in sd else 512
    model = MoMKD(wsi_input_dim, rna_input_dim, 2, preset="official", hidden_dim=wsi_encoder_dim,
                  omics_embed_dim=rna_embedding_dim, omics_hidden=omics_hidden, proj_dim=shared_embedding_dim,
                  n_memory=num_memory_per_class, cls_hidden=cls_hidden_dim, tau_attn=attn_tau_init,
                  learnable_tau=True, **settings)
    model.load_state_dict(sd, strict=True)
    return model
