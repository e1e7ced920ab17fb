# Dataset download, conversion of the dataset in params.yaml to keras-retinanet CSV, and folds
# grouped by person (or the dataset's own folds).


rule download:
    input:
        COMMON_DEPS,
        "stages/download.py",
    output:
        directory(RAW_DIR),
    params:
        download=config["download"],
        dataset_format=DATASET["format"],
    log:
        f"logs/{RAW_DIR}.log",
    shell:
        f"python -m stages.download {PARAMS_ARGS} --out {RAW_DIR} 2>&1 | tee {{log}}"


# Reads the dataset that config["dataset"] names; other formats than caltech need no download.
rule convert:
    input:
        COMMON_DEPS,
        "stages/convert.py",
        "stages/importers.py",
        "stages/split.py",
        PERSONS_CSV,
        DATASET["annotations"],
        DATASET["images"],
    output:
        ANNOTATIONS_CSV,
        CLASSES_CSV,
        GROUPS_CSV,
        DATA_SUMMARY,
    params:
        dataset=DATASET,
        convert=config["convert"],
    log:
        f"logs/{ANNOTATIONS_CSV}.log",
    shell:
        f"python -m stages.convert {PARAMS_ARGS} --persons {PERSONS_CSV} --out-csv {ANNOTATIONS_CSV}"
        f" --out-classes {CLASSES_CSV} --out-groups {GROUPS_CSV} --summary {DATA_SUMMARY} 2>&1 | tee {{log}}"


rule split:
    input:
        COMMON_DEPS,
        "stages/split.py",
        "stages/importers.py",
        ANNOTATIONS_CSV,
        GROUPS_CSV,
    output:
        directory(SPLITS_DIR),
    params:
        split=config["split"],
    log:
        f"logs/{SPLITS_DIR}.log",
    shell:
        f"python -m stages.split {PARAMS_ARGS} --annotations {ANNOTATIONS_CSV} --groups {GROUPS_CSV}"
        f" --out {SPLITS_DIR} 2>&1 | tee {{log}}"
