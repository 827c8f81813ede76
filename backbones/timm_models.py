"""timm models by name: ``num_classes`` heads for an int, ``num_classes=0`` features + our heads for a dict.

Pretrained weights never hang on the network:

* ``pretrained=True``: if the model's default weights are in the Hugging Face cache they are loaded with the hub
  forced offline (no HEAD request); if not cached and ``HF_HUB_OFFLINE`` is set, or a 3-second connectivity probe
  to huggingface.co fails, :class:`WeightsUnavailableError` is raised at once with how to provide them; only when
  the hub answers does timm download them.
* ``pretrained="/path/w.pth|.safetensors"``: the file is read (plain state_dict or a checkpoint dict; a file saved
  from our :class:`MultiHeadModel` is unwrapped) and handed to timm's own loader through
  ``pretrained_cfg_overlay`` (``state_dict`` + the file's head size as ``num_classes``), so timm's checkpoint
  filters and input-channel adaptation apply and a head of another size is dropped and re-initialised.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Iterator
from typing import Any

import timm
import torch
from torch import nn

from .heads import (
    MLPHeadModel,
    MultiHeadModel,
    NumOutputs,
    check_num_outputs,
    head_names,
    is_head_param,
    mlp_spec,
)
from .weights import (
    HOW_TO,
    WeightsMismatchError,
    WeightsUnavailableError,
    env_offline,
    hub_reachable,
    read_state_dict,
)


def is_timm_model(name: str) -> bool:
    return timm.is_model(name)


def feature_dim(model: nn.Module) -> int:
    """Width of a timm model's pooled features (what its classifier takes)."""
    dim = getattr(model, "head_hidden_size", None) or getattr(model, "num_features", None)
    if not dim:
        raise ValueError(f"cannot tell the feature width of {type(model).__name__}")
    return int(dim)


# -- hub cache ---------------------------------------------------------------------------------------------------
def _hub_files(cfg: dict[str, Any]) -> list[str]:
    fn = cfg.get("hf_hub_filename")
    if fn:
        return [fn]
    return ["model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"]


def weights_cached(name: str) -> bool:
    """Whether ``name``'s default pretrained weights are already on disk (HF cache or torch hub cache)."""
    cfg = _pretrained_cfg(name)
    hub_id = cfg.get("hf_hub_id")
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, rev = hub_id.partition("@")
        for fn in _hub_files(cfg):
            hit = try_to_load_from_cache(repo, fn, revision=rev or None)
            if isinstance(hit, str):
                return True
    url = cfg.get("url")
    if url:
        from timm.models._hub import check_cached_file

        return bool(check_cached_file(url))
    return False


def _pretrained_cfg(name: str) -> dict[str, Any]:
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return cfg.to_dict() if cfg is not None else {}


@contextlib.contextmanager
def _hub_offline() -> Iterator[None]:
    """Force huggingface_hub offline for the duration (its flag is read at import time, so patch it)."""
    import huggingface_hub.constants as hc

    old = hc.HF_HUB_OFFLINE
    hc.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hc.HF_HUB_OFFLINE = old


# -- creation ----------------------------------------------------------------------------------------------------
_UNEXPECTED = re.compile(r"unexpected keyword argument '([^']+)'")


def _create(name: str, pretrained: bool, kwargs: dict[str, Any], user_kwargs: set[str]) -> nn.Module:
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except TypeError as e:
        m = _UNEXPECTED.search(str(e))
        if m and m.group(1) in user_kwargs:
            raise TypeError(
                f"create_backbone({name!r}): unknown keyword argument {m.group(1)!r} "
                f"(not an option of timm model {name!r})"
            ) from None
        raise


def create_timm_backbone(
    name: str,
    num_outputs: NumOutputs,
    pretrained: bool | str = False,
    in_chans: int = 3,
    drop_rate: float | None = None,
    **kwargs: Any,
) -> nn.Module:
    num_outputs = check_num_outputs(num_outputs)
    multi = isinstance(num_outputs, dict)
    kwargs = dict(kwargs)
    head_hidden, head_dropout = kwargs.pop("head_hidden", None), kwargs.pop("head_dropout", None)
    if head_dropout is not None and head_hidden is None:
        raise TypeError(f"create_backbone({name!r}): head_dropout needs head_hidden (the hidden widths)")
    mlp_head = mlp_spec(head_hidden, head_dropout) if head_hidden is not None else None
    user_kwargs = set(kwargs)
    kw: dict[str, Any] = dict(kwargs)
    kw["num_classes"] = 0 if (multi or mlp_head) else num_outputs
    kw["in_chans"] = in_chans
    if drop_rate is not None:
        kw["drop_rate"] = drop_rate

    if isinstance(pretrained, str):
        model = _create_from_file(name, pretrained, kw, user_kwargs)
    elif pretrained:
        model = _create_from_hub(name, kw, user_kwargs)
    else:
        model = _create(name, False, kw, user_kwargs)

    model.backbone_in_chans = in_chans  # type: ignore[assignment]
    if mlp_head is not None:  # the reports' FC stacks (per task its own branch) on the pooled features
        mh = MLPHeadModel(model, feature_dim(model), num_outputs, *mlp_head)
        mh.backbone_in_chans = in_chans  # type: ignore[assignment]
        return mh
    if multi:
        wrapped = MultiHeadModel(model, feature_dim(model), num_outputs)  # type: ignore[arg-type]
        wrapped.backbone_in_chans = in_chans  # type: ignore[assignment]
        return wrapped
    return model


def _create_from_hub(name: str, kw: dict[str, Any], user_kwargs: set[str]) -> nn.Module:
    cfg = _pretrained_cfg(name)
    if not (cfg.get("hf_hub_id") or cfg.get("url") or cfg.get("file")):
        raise WeightsUnavailableError(
            f"timm has no pretrained weights for {name!r}; use pretrained=False or pass pretrained: /path/file"
        )
    how = HOW_TO.format(name=name)
    if weights_cached(name):
        ctx: contextlib.AbstractContextManager[None] = _hub_offline()
    elif env_offline():
        raise WeightsUnavailableError(
            f"pretrained weights for {name!r} are not in the local cache and HF_HUB_OFFLINE is set. {how}"
        )
    elif not hub_reachable():
        raise WeightsUnavailableError(
            f"pretrained weights for {name!r} are not cached and huggingface.co cannot be reached. {how}"
        )
    else:
        ctx = contextlib.nullcontext()
    try:
        with ctx:
            return _create(name, True, kw, user_kwargs)
    except TypeError:
        raise
    except Exception as e:  # LocalEntryNotFoundError, HTTP errors, OSError...
        raise WeightsUnavailableError(
            f"could not load pretrained weights for {name!r} ({type(e).__name__}: {e}). {how}"
        ) from e


def _create_from_file(name: str, path: str, kw: dict[str, Any], user_kwargs: set[str]) -> nn.Module:
    sd = read_state_dict(path)
    if any(k.startswith("trunk.") for k in sd):  # saved from our MultiHeadModel
        sd = {k[len("trunk.") :]: v for k, v in sd.items() if k.startswith("trunk.")}
    # the file's own head size, so timm keeps a head of the same size and drops one of another size
    classifier = _pretrained_cfg(name).get("classifier") or ()
    file_classes = 0
    for h in [classifier] if isinstance(classifier, str) else list(classifier):
        w = sd.get(f"{h}.weight")
        if isinstance(w, torch.Tensor):
            file_classes = int(w.shape[0])
            break
    overlay = {"state_dict": sd, "num_classes": file_classes}
    try:
        model = _create(name, True, {**kw, "pretrained_cfg_overlay": overlay}, user_kwargs)
    except TypeError:
        raise
    except RuntimeError as e:
        raise WeightsMismatchError(
            f"weights file {path} does not fit timm model {name!r}: {str(e).splitlines()[0][:500]}"
        ) from e
    # timm loads non-strictly when the head is dropped: make sure the whole trunk came from the file
    heads = head_names(model)
    missing = [
        k
        for k in model.state_dict()
        if k not in sd and not is_head_param(k, heads) and not k.endswith("num_batches_tracked")
    ]
    if missing:
        raise WeightsMismatchError(
            f"weights file {path} does not fit timm model {name!r}: {len(missing)} trunk tensors missing "
            f"({', '.join(missing[:5])}). Files must hold timm-format keys (as timm's own weights do)."
        )
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict):  # don't keep the whole state_dict alive in the config
        cfg.pop("state_dict", None)
        cfg["file"] = str(path)
    return model


def close_matches(name: str, names: list[str], n: int = 5) -> list[str]:
    return difflib.get_close_matches(name, names, n=n, cutoff=0.6)
