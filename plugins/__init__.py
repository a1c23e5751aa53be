"""The built-in tricks of hlb (installed as ``hlb_plugins``): one module per trick."""

#: trick name -> module; registration follows a preset's ``tricks`` order.
BUILTINS = {
    "whitening": "hlb_plugins.whitening",
    "dirac": "hlb_plugins.dirac",
    "noisy_bn": "hlb_plugins.noisy_bn",
    "weight_norm": "hlb_plugins.weight_norm",
    "bias_lr": "hlb_plugins.bias_lr",
    "label_smoothing": "hlb_plugins.label_smoothing",
    "flip": "hlb_plugins.flip",
    "translate": "hlb_plugins.translate",
    "color_jitter": "hlb_plugins.color_jitter",
    "cutout": "hlb_plugins.cutout",
    "cutmix": "hlb_plugins.cutmix",
    "ema": "hlb_plugins.ema",
    "tta": "hlb_plugins.tta",
    "muon": "hlb_plugins.muon",
    "select": "hlb_plugins.select",
    "sam": "hlb_plugins.sam",
}
