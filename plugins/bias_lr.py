"""Bias lr scaling: batchnorm parameters train with a larger lr (x ``scaler``) but the same
absolute weight decay as the rest."""

from __future__ import annotations

from pydantic import Field

from hlbcli import hookimpl
from hlbcli.config import Settings
from hlbcli.contract import sgd_hparams, trick
from hlbcli.model import batchnorms

NAME = "bias_lr"


class BiasLrSettings(Settings):
    scaler: float = Field(64.0, gt=0, le=1e4, description="lr multiplier of batchnorm parameters (weight decay unchanged)")
    stem_bias: bool = Field(False, description="the stem's bias joins the batchnorm group (airbench94_muon)")


def split_groups(model, lr: float, wd: float, scaler: float, stem_bias: bool = False) -> list[dict]:
    """Two SGD groups: batchnorm parameters (and with ``stem_bias`` the stem's bias) at
    lr * scaler, the rest at lr; both decay by ``wd`` per step in absolute terms (PyTorch
    multiplies weight_decay by lr)."""
    bn_ids = {id(p) for bn in batchnorms(model) for p in bn.parameters()}
    if stem_bias and getattr(model.stem, "bias", None) is not None:
        bn_ids.add(id(model.stem.bias))
    params = [p for p in model.parameters() if p.requires_grad]
    bn = [p for p in params if id(p) in bn_ids]
    rest = [p for p in params if id(p) not in bn_ids]
    lr_bn = lr * scaler
    groups = []
    if bn:
        groups.append(dict(params=bn, lr=lr_bn, weight_decay=wd / lr_bn, name="batchnorm"))
    if rest:
        groups.append(dict(params=rest, lr=lr, weight_decay=wd / lr, name="other"))
    return groups


hlb_trick_info, hlb_config_model = trick(NAME, "batchnorm parameters get a scaled-up lr, same absolute weight decay", BiasLrSettings)


@hookimpl
def hlb_param_groups(model, cfg):
    lr, wd = sgd_hparams(cfg.train)
    s = getattr(cfg, NAME)
    return split_groups(model, lr, wd, s.scaler, s.stem_bias)
