# Held-out and training metrics of every fold.


rule evaluate_detector:
    input:
        COMMON_DEPS,
        "stages/evaluate_detector.py",
        "stages/metrics.py",
        "stages/detector.py",
        SPLITS_DIR,
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
