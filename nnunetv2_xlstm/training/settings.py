"""A trainer's settings overridden for one run from an environment variable, ``"name=value,..."``.

nnU-Net chooses a trainer by class name; these variables change a documented setting of that class without a new
class per value, e.g. ``NNUNETV2_XLSTM_FINETUNE="encoder_lr=0.3"`` (:mod:`.pretrained`) or
``NNUNETV2_XLSTM_SEMI="class_quantile=none"`` (:mod:`.semi`).
"""

from __future__ import annotations

from nnunetv2_xlstm.env import InputError


def parse_settings(text: str, kinds: dict[str, type], variable: str, unit_interval: tuple[str, ...] = ()) -> dict:
    """``"name=value,..."`` -> ``{name: value}`` typed as ``kinds``; ``none`` gives None; the names in
    ``unit_interval`` must lie in [0, 1]. :class:`InputError` naming ``variable`` and the setting otherwise."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if name not in kinds:
            raise InputError(f"{variable}: unknown setting {name!r}; the settings are {', '.join(kinds)}")
        kind = kinds[name]
        try:
            if value.lower() == "none":
                out[name] = None
            elif kind is bool:
                if value.lower() not in ("0", "1", "true", "false"):
                    raise ValueError
                out[name] = value.lower() in ("1", "true")
            else:
                out[name] = kind(value)
                if kind is float and not out[name] == out[name]:  # nan
                    raise ValueError
        except ValueError:
            raise InputError(f"{variable}: {name}={value!r} is not a {kind.__name__}") from None
    for name in unit_interval:
        if out.get(name) is not None and not 0 <= out[name] <= 1:
            raise InputError(f"{variable}: {name}={out[name]} must lie in [0, 1]")
    return out
