# Profile overrides and parameter validation, shared by every rule file.
import sys

sys.path.insert(0, str(Path(workflow.basedir).parent))

from stages.params import apply_profile, validate_params  # noqa: E402

# --config profile=NAME on the command line wins over the profile key of params.yaml.
config.update(apply_profile(config, config.get("profile")))
validate_params(config, source=f"params.yaml (profile {config['profile']})")

PROFILE = config["profile"]
PARAMS_ARGS = f"--params params.yaml --profile {PROFILE}"

RAW_DIR = "data/raw/caltech-faces-1999"
ANNOTATIONS_CSV = "data/interim/annotations.csv"
CLASSES_CSV = "data/interim/classes.csv"
DATA_SUMMARY = "reports/metrics/data.json"
PERSONS_CSV = "stages/resources/caltech_persons.csv"
SPLITS_DIR = "data/splits"
DETECTOR_MODELS = "data/models/detector"
DETECTOR_CURVES = "reports/training/detector"
DETECTOR_PREDICTIONS = "data/predictions/detector"
DETECTOR_METRICS = "reports/metrics/detector.json"
PER_IMAGE_CSV = "reports/detector/per_image.csv"
PR_CURVES_CSV = "reports/detector/pr_curves.csv"
FIGURES_DIR = "reports/figures"
REPORT_PDF = "reports/emotivelens-report.pdf"

# Every stage reads the schema and the profile file through stages.params and shares the
# command-line, error and atomic-write helpers.
COMMON_DEPS = [
    "stages/params.py",
    "stages/cli.py",
    "stages/errors.py",
    "stages/atomic.py",
    "workflow/schemas/params.schema.yaml",
    f"workflow/profiles/{PROFILE}.yaml",
]
