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
# The dataset the convert stage reads: the download stage's RAW_DIR for format caltech.
DATASET = config["dataset"]
ANNOTATIONS_CSV = "data/interim/annotations.csv"
CLASSES_CSV = "data/interim/classes.csv"
GROUPS_CSV = "data/interim/groups.csv"
DATA_SUMMARY = "reports/metrics/data.json"
PERSONS_CSV = "stages/resources/caltech_persons.csv"
SPLITS_DIR = "data/splits"
DETECTOR_MODELS = "data/models/detector"
DETECTOR_CURVES = "reports/training/detector"
DETECTOR_PREDICTIONS = "data/predictions/detector"
DETECTOR_METRICS = "reports/metrics/detector.json"
PER_IMAGE_CSV = "reports/detector/per_image.csv"
PR_CURVES_CSV = "reports/detector/pr_curves.csv"
BASELINES_METRICS = "reports/metrics/baselines.json"
BASELINES_PER_IMAGE_CSV = "reports/detector/baselines_per_image.csv"
FIGURES_DIR = "reports/figures"
REPORT_PDF = "reports/emotivelens-report.pdf"

# The final models that `emotivelens predict` and `emotivelens stream` load by default.
FINAL_DETECTOR = "data/models/final/detector"
FINAL_DETECTOR_CURVES = "reports/training/final-detector"
FINAL_CLASSIFIER = "data/models/final/classifier"
FINAL_CLASSIFIER_CURVES = "reports/training/classifier/final"

SMILE_DATASETS = ("genki4k", "smilesmiled")
SMILES_RAW = {dataset: f"data/raw/{dataset}" for dataset in SMILE_DATASETS}
GENKI_CROPS_DIR = "data/smiles/genki4k-crops"
SMILES_SPLITS_DIR = "data/smiles/splits"
SMILES_SUMMARY = "reports/metrics/smiles_data.json"
# Where each dataset's images live: samples.csv paths point into these folders.
SMILES_IMAGES = {"genki4k": GENKI_CROPS_DIR, "smilesmiled": SMILES_RAW["smilesmiled"]}
CLASSIFIER_MODELS_ROOT = "data/models/classifier"
CLASSIFIER_MODELS = {dataset: f"{CLASSIFIER_MODELS_ROOT}/{dataset}" for dataset in SMILE_DATASETS}
CLASSIFIER_CURVES_ROOT = "reports/training/classifier"
CLASSIFIER_CURVES = {dataset: f"{CLASSIFIER_CURVES_ROOT}/{dataset}" for dataset in SMILE_DATASETS}
CLASSIFIER_METRICS = "reports/metrics/classifier.json"
CLASSIFIER_PREDICTIONS = "reports/classifier/predictions.csv"
CLASSIFIER_FIGURES_DIR = "reports/classifier/figures"


def samples_csv(dataset):
    return f"{SMILES_SPLITS_DIR}/{dataset}/samples.csv"

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
