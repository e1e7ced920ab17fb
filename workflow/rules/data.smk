# Dataset download, conversion to keras-retinanet CSV and person-grouped folds.


rule download:
    input:
        COMMON_DEPS,
        "stages/download.py",
    output:
        directory(RAW_DIR),
    params:
        download=config["download"],
    log:
        f"logs/{RAW_DIR}.log",
    shell:
        f"python -m stages.download {PARAMS_ARGS} --out {RAW_DIR} 2>&1 | tee {{log}}"


rule convert:
    input:
        COMMON_DEPS,
        "stages/convert.py",
        RAW_DIR,
    output:
        ANNOTATIONS_CSV,
        CLASSES_CSV,
        DATA_SUMMARY,
    params:
        convert=config["convert"],
    log:
        f"logs/{ANNOTATIONS_CSV}.log",
    shell:
        f"python -m stages.convert {PARAMS_ARGS} --raw {RAW_DIR} --out-csv {ANNOTATIONS_CSV}"
        f" --out-classes {CLASSES_CSV} --summary {DATA_SUMMARY} 2>&1 | tee {{log}}"


rule split:
    input:
        COMMON_DEPS,
        "stages/split.py",
        PERSONS_CSV,
        ANNOTATIONS_CSV,
    output:
        directory(SPLITS_DIR),
    params:
        split=config["split"],
    log:
        f"logs/{SPLITS_DIR}.log",
    shell:
        f"python -m stages.split {PARAMS_ARGS} --annotations {ANNOTATIONS_CSV} --persons {PERSONS_CSV}"
        f" --out {SPLITS_DIR} 2>&1 | tee {{log}}"
