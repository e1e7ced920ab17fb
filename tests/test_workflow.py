"""Snakemake and DVC declare the same stages: names, command lines, inputs and outputs."""

from __future__ import annotations

import ast
import itertools
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.params import ParamsError, load_params

PROJECT_ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = [sys.executable, "-m", "snakemake"]
LOG_REDIRECT = re.compile(r"\s+2>&1 \| tee \S+$")
# The focal_sweep rule lists every setting's JSON file; dvc.yaml depends on their folder.
SWEEP_RESULT = re.compile(r"^reports/sweep/gamma[0-9.]+-alpha[0-9.]+\.json$")


def run_snakemake(*args: str, cwd: Path = PROJECT_ROOT) -> subprocess.CompletedProcess:
    return subprocess.run([*SNAKEMAKE, *args], cwd=cwd, capture_output=True, text=True, timeout=300)


def snakemake_jobs(profile: str = "default", cwd: Path = PROJECT_ROOT) -> dict[str, dict]:
    """Parse ``snakemake --dry-run --forceall --printshellcmds`` into {rule: inputs, outputs, command}."""
    result = run_snakemake("--dry-run", "--forceall", "--printshellcmds", "--config", f"profile={profile}", cwd=cwd)
    assert result.returncode == 0, result.stderr + result.stdout
    jobs = {}
    for block in re.split(r"\n(?=rule \w+:)", result.stdout):
        header = re.match(r"rule (\w+):", block)
        if not header or header.group(1) == "all":
            continue
        fields = dict(re.findall(r"^    (input|output|wildcards): (.*)$", block, flags=re.MULTILINE))
        command = re.search(r"^Shell command: (.*)$", block, flags=re.MULTILINE).group(1)
        name = header.group(1)
        if "wildcards" in fields:
            # Named like a DVC matrix stage: rule@value1-value2.
            name += "@" + "-".join(pair.split("=", 1)[1] for pair in fields["wildcards"].split(", "))
        inputs = set(fields.get("input", "").split(", ")) - {""}
        jobs[name] = {
            "inputs": {SWEEP_RESULT.sub("reports/sweep", path) for path in inputs},
            "outputs": set(fields["output"].split(", ")),
            "command": LOG_REDIRECT.sub("", command),
        }
    return jobs


def fill_params(text: str, params: dict) -> str:
    """Replace every ``${section.key}`` of dvc.yaml, except matrix items, by its params.yaml value."""

    def value(match: re.Match) -> str:
        node = params
        for part in match.group(1).split("."):
            node = node[part]
        return str(node)

    return re.sub(r"\$\{((?!item\.)[\w.]+)\}", value, text)


def dvc_stages(profile: str = "default", params: dict | None = None) -> dict[str, dict]:
    """Read dvc.yaml with ``${profile}`` and other params filled in, as {stage: inputs, outputs, command}."""
    params = params if params is not None else yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    text = fill_params((PROJECT_ROOT / "dvc.yaml").read_text(), {**params, "profile": profile})
    stages = {}
    for name, stage in yaml.safe_load(text)["stages"].items():
        for stage_name, expanded in expand_matrix(name, stage, params):
            outputs = set()
            for key in ("outs", "metrics", "plots"):
                for entry in expanded.get(key, []):
                    outputs.add(next(iter(entry)) if isinstance(entry, dict) else entry)
            stages[stage_name] = {
                "inputs": set(expanded["deps"]),
                "outputs": outputs,
                "command": " ".join(expanded["cmd"].split()),
            }
    return stages


def expand_matrix(name: str, stage: dict, params: dict) -> list[tuple[str, dict]]:
    """Expand a DVC ``matrix`` stage into one (name@values, stage) per combination, as DVC does."""
    if "matrix" not in stage:
        return [(name, stage)]
    axes = {}
    for axis, values in stage["matrix"].items():
        reference = re.fullmatch(r"\$\{(.+)\}", values) if isinstance(values, str) else None
        if reference:
            values = params
            for part in reference.group(1).split("."):
                values = values[part]
        axes[axis] = [str(value) for value in values]
    body = yaml.safe_dump({key: value for key, value in stage.items() if key != "matrix"})
    expanded = []
    for combination in itertools.product(*axes.values()):
        text = body
        for axis, value in zip(axes, combination):
            text = text.replace("${item.%s}" % axis, value)
        expanded.append((f"{name}@{'-'.join(combination)}", yaml.safe_load(text)))
    return expanded


@pytest.fixture(scope="module")
def declared():
    return snakemake_jobs(), dvc_stages()


def test_same_stage_names(declared):
    snakemake, dvc = declared
    # Snakemake lists jobs in its own scheduling order, so compare the names only.
    assert sorted(snakemake) == sorted(dvc)


@pytest.mark.parametrize("field", ["command", "outputs", "inputs"])
def test_same_stage_field(declared, field):
    snakemake, dvc = declared
    for name in dvc:
        assert snakemake[name][field] == dvc[name][field], f"stage {name}: {field} differ"


def test_profile_reaches_every_command():
    for name, job in snakemake_jobs("smoke").items():
        assert "--profile smoke" in job["command"], name


def test_dvc_params_name_existing_keys():
    params = load_params(PROJECT_ROOT / "params.yaml", "default")
    for name, stage in yaml.safe_load((PROJECT_ROOT / "dvc.yaml").read_text())["stages"].items():
        for key in stage["params"]:
            node = params
            for part in key.split("."):
                assert part in node, f"stage {name}: params key {key} not in params.yaml"
                node = node[part]


# Every rule runs in the project's own virtual environment (pyproject.toml and constraints.txt),
# so the lint that requests a conda environment or container per rule does not apply.
ACCEPTED_LINTS = {"Specify a conda environment or container for each rule.:"}


def test_snakemake_lint_finds_nothing_else():
    result = run_snakemake("--lint")
    lints = re.findall(r"^\s+\* (.*)$", result.stdout + result.stderr, flags=re.MULTILINE)
    assert lints, "expected snakemake --lint to print its lints"
    assert set(lints) <= ACCEPTED_LINTS, result.stdout + result.stderr


def test_snakefile_rejects_invalid_params(tmp_path):
    bad = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    bad["detector"]["batch_size"] = "eight"
    bad_path = tmp_path / "params.yaml"
    bad_path.write_text(yaml.safe_dump(bad))
    result = run_snakemake("--dry-run", "--configfile", str(bad_path))
    assert result.returncode != 0
    assert "detector.batch_size: 'eight' is not of type 'integer'" in result.stdout + result.stderr


def test_unknown_profile_lists_known_ones():
    with pytest.raises(ParamsError, match="known profiles: default, paper, smoke"):
        load_params(PROJECT_ROOT / "params.yaml", "fast")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        (("split", "folds"), 2.0, "2.0 is not of type 'integer'"),
        (("detector", "epochs"), 3.0, "3.0 is not of type 'integer'"),
        (("detector", "learning_rate"), float("nan"), "nan is not of type 'number'"),
        (("split", "seed"), 2**40, "is greater than the maximum"),
    ],
)
def test_schema_rejects_floats_nan_and_huge_seeds(key, value, message):
    from stages.params import validate_params

    params = load_params(PROJECT_ROOT / "params.yaml", "default")
    section, name = key
    params[section][name] = value
    with pytest.raises(ParamsError, match=re.escape(message)):
        validate_params(params)


@pytest.mark.parametrize("profile_file", sorted((PROJECT_ROOT / "workflow" / "profiles").glob("*.yaml")), ids=str)
def test_profiles_leave_the_sweep_grid_to_params_yaml(profile_file):
    # dvc.yaml's matrix reads the grid from params.yaml; a profile's grid would reach Snakemake only.
    overrides = yaml.safe_load(profile_file.read_text()) or {}
    assert not {"gammas", "alphas"} & set(overrides.get("focal_sweep", {}))


@pytest.mark.parametrize("profile_file", sorted((PROJECT_ROOT / "workflow" / "profiles").glob("*.yaml")), ids=str)
def test_profiles_leave_the_dataset_to_params_yaml(profile_file):
    # dvc.yaml takes the convert stage's dependencies from params.yaml, which profiles do not change.
    overrides = yaml.safe_load(profile_file.read_text()) or {}
    assert "dataset" not in overrides


def test_user_dataset_reaches_both_orchestrators(tmp_path):
    # A copy of the project whose params.yaml selects a csv dataset at data/user/.
    for entry in ("stages", "workflow"):
        shutil.copytree(PROJECT_ROOT / entry, tmp_path / entry, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(PROJECT_ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    params = yaml.safe_load((PROJECT_ROOT / "params.yaml").read_text())
    params["dataset"].update(format="csv", annotations="data/user/annotations.csv", images="data/user")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (tmp_path / "data" / "user").mkdir(parents=True)
    (tmp_path / "data" / "user" / "annotations.csv").write_text("a.jpg,1,2,3,4,face\n")

    snakemake = snakemake_jobs(cwd=tmp_path)
    dvc = dvc_stages(params=params)

    assert {"data/user/annotations.csv", "data/user"} <= dvc["convert"]["inputs"]
    assert "data/raw/caltech-faces-1999" not in dvc["convert"]["inputs"]
    for name in ("download", "convert", "split"):
        for field in ("command", "outputs", "inputs"):
            assert snakemake[name][field] == dvc[name][field], f"stage {name}: {field} differ"


def project_modules(module: str, found: set[str] | None = None) -> set[str]:
    """Every ``stages`` module that ``module`` imports, directly or through another one, itself included."""
    found = set() if found is None else found
    path = PROJECT_ROOT / "stages" / f"{module}.py"
    if module in found or not path.exists():
        return found
    found.add(module)
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module == "stages":
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("stages."):
            names = [node.module.split(".")[1]]
        elif isinstance(node, ast.Import):
            names = [alias.name.split(".")[1] for alias in node.names if alias.name.startswith("stages.")]
        else:
            names = []
        for name in names:
            project_modules(name, found)
    return found


def test_stage_inputs_list_every_module_the_command_imports(declared):
    # A module left out of a stage's inputs can change without the stage rerunning.
    _, dvc = declared
    for name, stage in dvc.items():
        module = re.search(r"python -m stages\.(\w+)", stage["command"]).group(1)
        listed = {Path(path).stem for path in stage["inputs"] if re.fullmatch(r"stages/\w+\.py", path)}
        assert project_modules(module) <= listed, f"stage {name}: inputs lack {sorted(project_modules(module) - listed)}"
