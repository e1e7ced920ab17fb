# Held-out and training metrics of every fold, off-the-shelf detector baselines, and the classifier.


rule evaluate_detector:
    input:
        COMMON_DEPS,
        "stages/evaluate_detector.py",
        "stages/metrics.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        SPLITS_DIR,
        DATASET["images"],
        DETECTOR_MODELS,
        DATA_SUMMARY,
    output:
        directory(DETECTOR_PREDICTIONS),
        DETECTOR_METRICS,
        PER_IMAGE_CSV,
        PR_CURVES_CSV,
    params:
        evaluate=config["evaluate"],
    log:
        f"logs/{DETECTOR_METRICS}.log",
    shell:
        f"python -m stages.evaluate_detector {PARAMS_ARGS} --splits {SPLITS_DIR} --models {DETECTOR_MODELS}"
        f" --predictions {DETECTOR_PREDICTIONS} --metrics {DETECTOR_METRICS} --per-image {PER_IMAGE_CSV}"
        f" --pr-curves {PR_CURVES_CSV} --data-summary {DATA_SUMMARY} 2>&1 | tee {{log}}"


rule evaluate_baselines:
    input:
        COMMON_DEPS,
        "stages/baselines.py",
        "stages/metrics.py",
        "stages/evaluate_detector.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        SPLITS_DIR,
        DATASET["images"],
        RAW_DIR,
    output:
        BASELINES_METRICS,
        BASELINES_PER_IMAGE_CSV,
    params:
        baselines=config["baselines"],
    log:
        f"logs/{BASELINES_METRICS}.log",
    shell:
        f"python -m stages.baselines {PARAMS_ARGS} --splits {SPLITS_DIR} --metrics {BASELINES_METRICS}"
        f" --per-image {BASELINES_PER_IMAGE_CSV} 2>&1 | tee {{log}}"


rule evaluate_classifier:
    input:
        COMMON_DEPS,
        "stages/evaluate_classifier.py",
        "stages/smile_baseline.py",
        "stages/classifier.py",
        "stages/metrics.py",
        "stages/evaluate_detector.py",
        "stages/detector.py",
        "stages/kerascompat.py",
        SMILES_SPLITS_DIR,
        SMILES_IMAGES.values(),
        CLASSIFIER_MODELS.values(),
    output:
        CLASSIFIER_METRICS,
        CLASSIFIER_PREDICTIONS,
    params:
        evaluate_classifier=config["evaluate_classifier"],
    log:
        f"logs/{CLASSIFIER_METRICS}.log",
    shell:
        f"python -m stages.evaluate_classifier {PARAMS_ARGS} --splits {SMILES_SPLITS_DIR}"
        f" --models {CLASSIFIER_MODELS_ROOT} --metrics {CLASSIFIER_METRICS} --predictions {CLASSIFIER_PREDICTIONS}"
        " 2>&1 | tee {log}"
