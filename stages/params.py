"""Load params.yaml, apply the selected profile and validate the result against the schema."""

from __future__ import annotations

import argparse
import copy
import math
from pathlib import Path
from typing import Any

import jsonschema
import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SCHEMA_PATH = PROJECT_ROOT / "workflow" / "schemas" / "params.schema.yaml"
PROFILES_DIR = PROJECT_ROOT / "workflow" / "profiles"


class ParamsError(ValueError):
    """Invalid or missing pipeline parameters."""


def merge_overrides(base: dict, overrides: dict) -> dict:
    """Return a copy of ``base`` with ``overrides`` merged in, nested mappings key by key."""
    merged = copy.deepcopy(base)
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = merge_overrides(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def read_yaml(path: Path) -> Any:
    """Parse a YAML file, naming the file and line in the error when it is malformed."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ParamsError(f"{path}: file not found") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ParamsError(f"{path}: invalid YAML: {error}") from None


def apply_profile(params: dict, profile: str | None, profiles_dir: Path = PROFILES_DIR) -> dict:
    """Apply ``profiles_dir/<profile>.yaml`` to ``params``; ``profile`` None keeps params['profile']."""
    name = profile if profile is not None else params.get("profile", "default")
    path = profiles_dir / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in profiles_dir.glob("*.yaml"))
        raise ParamsError(f"profile {name!r}: {path} not found; known profiles: {', '.join(known)}")
    overrides = read_yaml(path) or {}
    if not isinstance(overrides, dict):
        raise ParamsError(f"{path}: expected a mapping of params.yaml sections, got {type(overrides).__name__}")
    merged = merge_overrides(params, overrides)
    merged["profile"] = name
    return merged


def _field_name(error: jsonschema.ValidationError) -> str:
    return ".".join(str(part) for part in error.absolute_path) or "(top level)"


def _is_strict_integer(checker, instance) -> bool:
    # JSON Schema counts 8.0 as an integer, but Python's range(), seeds and layer sizes reject it.
    return isinstance(instance, int) and not isinstance(instance, bool)


def _is_finite_number(checker, instance) -> bool:
    return isinstance(instance, (int, float)) and not isinstance(instance, bool) and math.isfinite(instance)


_TYPE_CHECKER = jsonschema.Draft202012Validator.TYPE_CHECKER.redefine_many(
    {"integer": _is_strict_integer, "number": _is_finite_number})
_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, type_checker=_TYPE_CHECKER)


def validate_params(params: dict, source: str = "params.yaml", schema_path: Path = SCHEMA_PATH) -> None:
    """Check ``params`` against the JSON Schema and the rules that link several keys.

    Integers must be written without a decimal point and numbers must be finite (no .nan or .inf).
    Raises ParamsError listing every invalid field with its value and what the schema expects.
    """
    schema = read_yaml(schema_path)
    validator = _Validator(schema)
    problems = []
    for error in sorted(validator.iter_errors(params), key=lambda e: list(map(str, e.absolute_path))):
        description = error.schema.get("description") if isinstance(error.schema, dict) else None
        hint = f" ({description})" if description else ""
        problems.append(f"{source}: {_field_name(error)}: {error.message}{hint}")
    if not problems:
        problems.extend(_check_combinations(params, source))
    if problems:
        raise ParamsError("invalid parameters:\n  " + "\n  ".join(problems))


def _check_combinations(params: dict, source: str) -> list[str]:
    detector = params["detector"]
    problems = []
    if detector["image_min_side"] > detector["image_max_side"]:
        problems.append(
            f"{source}: detector.image_min_side ({detector['image_min_side']}) must not exceed "
            f"detector.image_max_side ({detector['image_max_side']})"
        )
    augmentation = detector["augmentation"]
    if augmentation["min_scaling"] > augmentation["max_scaling"]:
        problems.append(
            f"{source}: detector.augmentation.min_scaling ({augmentation['min_scaling']}) must not exceed "
            f"max_scaling ({augmentation['max_scaling']})"
        )
    evaluate = params["evaluate"]
    if evaluate["iou_score_threshold"] < evaluate["ap_score_threshold"]:
        problems.append(
            f"{source}: evaluate.iou_score_threshold ({evaluate['iou_score_threshold']}) must not be below "
            f"evaluate.ap_score_threshold ({evaluate['ap_score_threshold']}): detections under the AP "
            "threshold are dropped before IoU is computed"
        )
    report = params["report"]
    if not report["paper_train_min_iou"] <= report["paper_train_mean_iou"] <= report["paper_train_max_iou"]:
        problems.append(
            f"{source}: report.paper_train_min_iou ({report['paper_train_min_iou']}), paper_train_mean_iou "
            f"({report['paper_train_mean_iou']}) and paper_train_max_iou ({report['paper_train_max_iou']}) "
            "must satisfy min <= mean <= max"
        )
    return problems


def load_params(path: Path | str = "params.yaml", profile: str | None = None) -> dict:
    """Read params.yaml, apply the profile (``profile`` or the file's own) and validate it."""
    path = Path(path)
    params = read_yaml(path)
    if not isinstance(params, dict):
        raise ParamsError(f"{path}: expected a mapping of stage sections, got {type(params).__name__}")
    params = apply_profile(params, profile)
    validate_params(params, source=f"{path} (profile {params['profile']})")
    return params


def add_params_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``--params`` and ``--profile`` options that every stage takes."""
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="parameter file (default: params.yaml)")
    parser.add_argument(
        "--profile",
        default=None,
        help="profile in workflow/profiles/ to apply (default: the 'profile' key of the parameter file)",
    )
